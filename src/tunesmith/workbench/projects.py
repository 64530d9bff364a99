"""A project: an uploaded research repository (.zip of the folder format) or dataset file, turned
into the files the CLI's stages read, all under PROJECTS_DIR/projects/<id>/.

    source/    the upload, unpacked (a zip) or as sent (a dataset file)
    data/      config.yaml, and for a repository what `tunesmith import` writes (train/heldout JSONL, …)
    check.json `tunesmith check`'s result (written by a check job)
    jobs/<n>/  one directory per job: job.json, log.txt, rc
    runs/<n>/  a training run (train.output_dir), with compare/ and export-*/ inside

A zip is read entry by entry before anything is written: an absolute path, a `..`, a symlink, too
many entries, or sizes that mark a zip bomb refuse the whole upload, and nothing is left behind.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import time
import uuid
import zipfile
from pathlib import Path, PurePosixPath

from tunesmith import UserError

# Limits on an unpacked upload. A research repository is text: megabytes, not gigabytes.
ZIP_LIMITS = {"entries": 20_000, "total_bytes": 512 * 2**20, "ratio": 200, "ratio_min_bytes": 2**20}
DATASET_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


def projects_root(projects_dir: Path) -> Path:
    return Path(projects_dir) / "projects"


def project_dir(projects_dir: Path, pid: str) -> Path:
    if not re.fullmatch(r"[a-z0-9-]{1,80}", pid):  # ids become paths: nothing but our own slugs
        raise UserError(f"no project '{pid}'.")
    return projects_root(projects_dir) / pid


def slug(name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "project"
    return f"{base}-{uuid.uuid4().hex[:6]}"


# ------------------------------------------------------------------------------------ zip safety


def check_zip(zf: zipfile.ZipFile, where: str) -> list[zipfile.ZipInfo]:
    """The entries to unpack, or a UserError naming the first entry that must not be written."""
    infos = zf.infolist()
    if len(infos) > ZIP_LIMITS["entries"]:
        raise UserError(
            f"{where}: {len(infos)} entries; at most {ZIP_LIMITS['entries']} are accepted. "
            f"fix: zip only the repository folder."
        )
    total = 0
    for info in infos:
        name = info.filename
        path = PurePosixPath(name.replace("\\", "/"))
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
            raise UserError(
                f"{where}: entry '{name}' has an absolute path; refused (it would be written outside "
                f"the project). fix: zip the folder with relative paths."
            )
        if ".." in path.parts:
            raise UserError(
                f"{where}: entry '{name}' climbs out of the folder with '..'; refused. "
                f"fix: zip the folder itself, with relative paths."
            )
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UserError(
                f"{where}: entry '{name}' is a symbolic link; refused (links can point outside the "
                f"project). fix: replace the link with the file it points to."
            )
        total += info.file_size
        if total > ZIP_LIMITS["total_bytes"]:
            raise UserError(
                f"{where}: unpacks to more than {ZIP_LIMITS['total_bytes'] // 2**20} MiB; refused as a "
                f"possible zip bomb. fix: leave media and exports out of the repository zip."
            )
        if info.file_size > ZIP_LIMITS["ratio_min_bytes"] and info.file_size > ZIP_LIMITS["ratio"] * max(
            info.compress_size, 1
        ):
            raise UserError(
                f"{where}: entry '{name}' expands {info.file_size / max(info.compress_size, 1):.0f}x "
                f"(to {info.file_size:,} bytes); refused as a possible zip bomb."
            )
    return infos


def safe_unzip(archive: Path, dest: Path, where: str = "") -> None:
    """Unpack `archive` into `dest` (which must not exist) or raise UserError with nothing written;
    `where` names the upload in messages. Sizes are enforced while reading too: declared sizes can lie."""
    where = where or archive.name
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise UserError(
            f"{where}: not a zip file. fix: upload the repository folder as a .zip, or a dataset "
            f"file ({', '.join(DATASET_SUFFIXES)})."
        ) from None
    tmp = dest.with_name(f".{dest.name}.unpacking")
    try:
        with zf:
            infos = check_zip(zf, where)
            tmp.mkdir(parents=True)
            written = 0
            for info in infos:
                target = tmp.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 16):
                        written += len(chunk)
                        if written > ZIP_LIMITS["total_bytes"]:
                            raise UserError(f"{where}: unpacks to more than its declared size; refused as a zip bomb.")
                        out.write(chunk)
        tmp.rename(dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError) as exc:
        raise UserError(f"{where}: cannot be unpacked ({exc}). fix: make the zip again with a standard tool.") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def repository_root(folder: Path) -> Path:
    """A zip of a folder holds the folder: descend through single-folder levels (skipping __MACOSX)."""
    while True:
        children = [c for c in folder.iterdir() if c.name not in ("__MACOSX", ".DS_Store")]
        if len(children) == 1 and children[0].is_dir():
            folder = children[0]
        else:
            return folder


# ------------------------------------------------------------------------------------ create


def create_project(
    projects_dir: Path, name: str, upload: Path, filename: str, model: str, max_records: int = 200_000
) -> dict:
    """Unpack or place the upload, import a repository, write data/config.yaml; returns the row to store.
    More than max_records examples are refused. On any error the project directory is removed again."""
    from tunesmith.config import Config, save_config

    pid = slug(name or Path(filename).stem)
    folder = project_dir(projects_dir, pid)
    folder.mkdir(parents=True)
    try:
        suffix = Path(filename).suffix.lower()
        if suffix == ".zip":
            kind = "repository"
            safe_unzip(upload, folder / "source", where=filename)
            from tunesmith.data.repository import import_repository

            summary = import_repository([repository_root(folder / "source")], folder / "data")
            summary.pop("out", None)
            cfg_path = folder / "data" / "config.yaml"
            text = cfg_path.read_text(encoding="utf-8")
            cfg_path.write_text(
                re.sub(r"(?m)^  name: .*$", f"  name: {json.dumps(model)}", text, count=1), encoding="utf-8"
            )
        elif suffix in DATASET_SUFFIXES:
            kind = "dataset"
            (folder / "source").mkdir()
            data_file = folder / "source" / ("dataset" + suffix)
            shutil.move(str(upload), data_file)
            cfg = Config()
            cfg.model.name, cfg.data.train = model, str(data_file)
            (folder / "data").mkdir()
            save_config(cfg, folder / "data" / "config.yaml")
            summary = {"file": filename}
        else:
            raise UserError(
                f"{filename}: not a repository .zip or a dataset file. fix: upload a .zip of the "
                f"repository folder, or one of {', '.join(DATASET_SUFFIXES)}."
            )
        for data in sorted((folder / "data").glob("*.jsonl")) + sorted((folder / "source").glob("dataset.*")):
            count_records(data, filename, max_records)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    for sub in ("jobs", "runs"):
        (folder / sub).mkdir()
    return {
        "id": pid,
        "name": name or Path(filename).stem,
        "kind": kind,
        "source": filename,
        "model": model,
        "created": time.time(),
        "summary": json.dumps(summary),
    }


def config_path(projects_dir: Path, pid: str) -> Path:
    return project_dir(projects_dir, pid) / "data" / "config.yaml"


def count_records(path: Path, upload: str, limit: int) -> int:
    """Lines of a dataset (a record each in JSONL, CSV, TSV), refused past `limit` before any job reads it."""
    n = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
            if n > limit:
                raise UserError(
                    f"{upload}: more than {limit:,} records; the workbench takes at most that many per project. "
                    f"fix: upload a sample (or split the data), or run the CLI on the whole of it."
                )
    return n


def private_tree(folder: Path) -> None:
    """Files 0600 and directories 0700 under `folder`: a project is its owner's alone."""
    folder.chmod(0o700)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o700 if path.is_dir() else 0o600)
