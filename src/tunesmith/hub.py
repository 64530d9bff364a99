"""A hub model: from the local Hugging Face cache, or downloaded on first use.

    tunesmith generate Qwen/Qwen2.5-0.5B-Instruct --prompt "Hi"          # downloads once, then cached
    tunesmith train config.yaml model.name=ORG/NAME model.revision=v1.0
    tunesmith chat ORG/NAME-GGUF --quant Q4_K_M                           # one file of a GGUF repository

The cache comes first: a revision the cache already holds whole is used with no request at all. Else,
unless offline mode is on (`HF_HUB_OFFLINE=1`, which `--offline` sets), the repository's file list is
read, the files a model needs are chosen (`HUB_FILES`: safetensors, config, tokenizer, chat template —
never the `.bin` pickles; in a GGUF repository the one file of the asked quantization), the disk is
checked for their size, and `huggingface_hub.snapshot_download` fetches them into the standard cache
(`HF_HUB_CACHE`), with a progress bar; a connection that drops mid-file continues from the byte it
reached (an HTTP Range request), and files finished before an interruption are not fetched again.
`HF_TOKEN` is sent for gated and private models. Every failure the user can fix — a 401/403 on a gated
model, a 404, an unknown revision, no network, a full disk — becomes a UserError naming the fix.

The endpoint is `HF_ENDPOINT` as it is when a model is resolved (tests point it at a local server).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from tunesmith import UserError

# What a model needs from its hub repository. Top level only: subfolders hold other formats (onnx/,
# original/) and other quantizations.
HUB_FILES = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
TOP_LEVEL_ONLY = ["*/*"]


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def cache_root() -> Path:
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def offline() -> bool:
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return constants.HF_HUB_OFFLINE if value is None else value.strip().lower() in ("1", "on", "yes", "true")


def fetch(repo_id: str, revision: str = "", gguf_file: str = "", tried: list[str] | None = None):
    """(kind, path, commit) of a hub id at a revision, from the cache, else downloaded (unless offline):
    ("hub", the snapshot directory, commit) or ("gguf", the chosen .gguf file, commit)."""
    revision = revision or "main"
    patterns = [_any_case(gguf_file) if gguf_file.endswith(".gguf") else f"*{_any_case(gguf_file)}*.gguf"]
    allow = patterns if gguf_file else list(HUB_FILES)
    folder = _cached(repo_id, revision, allow, "*.gguf" if gguf_file else "config.json")
    if folder is None and not gguf_file:  # a GGUF repository with one file needs no quantization named
        folder = _cached(repo_id, revision, ["*.gguf"], "*.gguf")
    if folder is None:
        if offline():
            where = "; ".join([*(tried or []), f"the local Hugging Face cache ({cache_root()})"])
            raise UserError(
                f"model '{repo_id}' (revision {revision}) is not in the local Hugging Face cache, and offline "
                f"mode is on (HF_HUB_OFFLINE=1 or --offline).\n  tried: {where}\n"
                f"  fix: run once without --offline (unset HF_HUB_OFFLINE) on a machine with network, or "
                f"`hf download {repo_id}` there, or pass a model directory: --model /path/to/{repo_id.split('/')[-1]}"
            )
        folder = _download(repo_id, revision, gguf_file)
    commit = folder.name  # snapshots/<commit>
    ggufs = sorted(folder.glob("*.gguf"))
    if (folder / "config.json").exists():
        return "hub", folder, commit
    if ggufs:
        chosen = _choose_gguf(repo_id, [g.name for g in ggufs], gguf_file)
        return "gguf", folder / chosen, commit
    raise UserError(f"{repo_id}: the downloaded files hold no config.json and no .gguf file ({folder}).")


def _cached(repo_id: str, revision: str, allow: list[str], must: str) -> Path | None:
    """The cache's snapshot of a revision when it holds every wanted file (and one matching `must`);
    no request is made. huggingface_hub checks the snapshot against the file list it cached."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=allow,
                ignore_patterns=TOP_LEVEL_ONLY,
                cache_dir=cache_root(),
                local_files_only=True,
            )
        )
    except Exception:  # not cached, or cached in part (LocalEntryNotFoundError and friends)
        return None
    return path if any(path.glob(must)) else None


def _download(repo_id: str, revision: str, gguf_file: str) -> Path:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint())
    with _hub_errors(repo_id, revision):
        files = {f.path: f.size for f in api.list_repo_tree(repo_id, revision=revision) if isinstance(f, RepoFile)}
    wanted = _wanted(repo_id, files, gguf_file)
    need = sum(files[f] for f in wanted)
    cache = cache_root()
    _check_space(cache, need, repo_id)
    size = f"{need / 1e6:,.1f} MB" if need < 1e9 else f"{need / 1e9:,.2f} GB"
    print(f"tunesmith: downloading {repo_id} ({revision}): {len(wanted)} files, {size} into {cache}", flush=True)
    from tqdm.auto import tqdm

    try:
        with _hub_errors(repo_id, revision):
            return Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    allow_patterns=wanted,
                    ignore_patterns=TOP_LEVEL_ONLY,
                    cache_dir=cache,
                    endpoint=endpoint(),
                    tqdm_class=tqdm,  # plain tqdm: a bar even where the CLI turned the library's own off
                )
            )
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            from tunesmith.fsutil import disk_full_error

            raise disk_full_error(cache, need, f"{repo_id}", _SPACE_HINT) from None
        raise


def _wanted(repo_id: str, files: dict[str, int], gguf_file: str) -> list[str]:
    """The files to fetch: the model's own (safetensors ...) or one GGUF file."""
    from fnmatch import fnmatchcase

    top = [f for f in files if "/" not in f]
    ggufs = [f for f in top if f.endswith(".gguf")]
    if gguf_file or ("config.json" not in top and ggufs):
        return [_choose_gguf(repo_id, ggufs, gguf_file)]
    if "config.json" not in top:
        raise UserError(f"{repo_id}: the repository has no config.json and no .gguf file: it is not a model.")
    if not any(f.endswith(".safetensors") for f in top):
        pickles = [f for f in top if f.endswith(".bin")]
        raise UserError(
            f"{repo_id}: publishes its weights only as {', '.join(pickles) or 'pickles'}; tunesmith loads "
            f"safetensors only (a pickle can run code). fix: use a repository that has *.safetensors (often the "
            f"same model under another name), or convert it yourself with code you trust and pass the directory."
        )
    return sorted(f for f in top if any(fnmatchcase(f, p) for p in HUB_FILES))


def _choose_gguf(repo_id: str, names: list[str], asked: str) -> str:
    """One .gguf file: the one named, the one whose name carries the asked quantization, or the only one."""
    if not names:
        raise UserError(f"{repo_id}: model.gguf_file={asked!r} is set, but the repository has no .gguf file.")
    if asked.endswith(".gguf"):
        hits = [n for n in names if n.lower() == asked.lower()]
    elif asked:
        hits = [n for n in names if asked.lower() in n.lower()]
    else:
        hits = names if len(names) == 1 else []
    if len(hits) == 1:
        return hits[0]
    what = f"{len(hits)} files match {asked!r}" if asked else f"it holds {len(names)} .gguf files"
    raise UserError(
        f"{repo_id}: {what}: {', '.join(sorted(hits or names))}.\n"
        f"  fix: name one with model.gguf_file=FILE (or its quantization, e.g. model.gguf_file=Q4_K_M; "
        f"--quant Q4_K_M for chat and generate)."
    )


def _any_case(text: str) -> str:
    """A glob matching `text` in any letter case (the hub's file names mix Q4_K_M and q4_k_m)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in text)


_SPACE_HINT = "free space there, or move the Hugging Face cache with HF_HUB_CACHE=/a/bigger/disk"


def _check_space(cache: Path, need: int, repo_id: str) -> None:
    from tunesmith.fsutil import check_space

    check_space(cache, need + (64 << 20), f"{repo_id}'s files", _SPACE_HINT)


@contextlib.contextmanager
def _hub_errors(repo_id: str, revision: str):
    """huggingface_hub's errors → a UserError that names the model page, the id or the fix."""
    import httpx2
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    page, token = f"{endpoint()}/{repo_id}", os.environ.get("HF_TOKEN")
    try:
        yield
    except GatedRepoError as exc:
        status = exc.response.status_code
        if status == 403 or token:
            raise UserError(
                f"{repo_id} is a gated model and the account of your HF_TOKEN has no access to it (HTTP {status}). "
                f"fix: open {page}, accept its terms with that account, and run again."
            ) from None
        raise UserError(
            f"{repo_id} is a gated model: the hub wants to know who asks (HTTP {status}). fix: accept its terms at "
            f"{page}, create a read token at {endpoint()}/settings/tokens, and set HF_TOKEN=hf_... to run again."
        ) from None
    except RevisionNotFoundError as exc:
        raise UserError(
            f"{repo_id} has no revision '{revision}' (HTTP {exc.response.status_code}). fix: set model.revision to a "
            f"branch, tag or commit listed at {page}/tree/main, or leave it empty for main."
        ) from None
    except RepositoryNotFoundError as exc:
        private = "" if token else "; if it is private, set HF_TOKEN to a token that can read it"
        raise UserError(
            f"no model '{repo_id}' on {endpoint()} (HTTP {exc.response.status_code}). fix: check the id — "
            f"organisation/name, as on its page {page}{private}."
        ) from None
    except HfHubHTTPError as exc:
        if exc.response.status_code >= 500:
            raise UserError(
                f"{endpoint()} failed while sending {repo_id} (HTTP {exc.response.status_code}). fix: run again "
                f"later; the files finished so far are kept in {cache_root()} and are not fetched again."
            ) from None
        if exc.response.status_code not in (401, 403):
            raise
        raise UserError(
            f"{endpoint()} refused the token in HF_TOKEN for {repo_id} (HTTP {exc.response.status_code}). fix: "
            f"create a new read token at {endpoint()}/settings/tokens and set HF_TOKEN to it."
        ) from None
    except (httpx2.ConnectError, httpx2.TimeoutException) as exc:
        raise UserError(
            f"could not reach {endpoint()} to download {repo_id} ({type(exc).__name__}: {exc}). fix: check the "
            f"network (or HF_ENDPOINT), or download the model elsewhere and pass its directory."
        ) from None
