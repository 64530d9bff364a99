"""Files written whole or not at all, and a full disk reported as what it is."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tunesmith import UserError

# Libraries report a full disk in their own words: safetensors (Rust) as "StorageFull" / "No space
# left on device", torch's zip writer as "file write failed" with no errno at all.
_FULL_WORDS = ("no space left on device", "storagefull", "disk quota exceeded")
# Below this much free space after a failed write, the failure is taken to be the full disk.
_NEARLY_FULL = 1 << 20


@contextmanager
def atomic_dir(target: Path, need: int = 0, what: str = ""):
    """Yield a temp directory beside `target`; if the block succeeds it replaces `target` in one
    rename, if it fails it is removed and `target` is left as it was.

    `need` (bytes, an estimate) is checked against the free space first; a disk that fills up anyway
    is a UserError naming `target` and the space needed, not a library's traceback.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    what = what or str(target)
    if need:
        check_space(target.parent, need, what)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        try:
            yield tmp
        except Exception as exc:
            if not is_disk_full(exc, target.parent):
                raise
            written = _tree_bytes(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            raise disk_full_error(target.parent, max(need, written), what) from exc
        if target.is_symlink():
            target.unlink()  # the link is replaced, never what it points to
        elif target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_space(folder: Path, need: int, what: str, hint: str = "") -> None:
    """UserError before writing `need` bytes into `folder` when its filesystem has less free."""
    free = shutil.disk_usage(_existing(folder)).free
    if free < need:
        raise disk_full_error(folder, need, what, hint, free)


def is_disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a failed write (anywhere in the exception's chain) was the disk filling up."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen).lower()
        if "file write failed" in text:  # torch says no more than this: believe it when the disk is full
            return shutil.disk_usage(_existing(folder)).free < _NEARLY_FULL
        if any(w in text for w in _FULL_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def disk_full_error(folder: Path, need: int, what: str, hint: str = "", free: int | None = None) -> UserError:
    free = shutil.disk_usage(_existing(folder)).free if free is None else free
    return UserError(
        f"{folder}: not enough disk space for {what}: it needs about {_size(need)}, the filesystem has "
        f"{_size(free)} free. Nothing partial was kept. fix: free at least {_size(max(need - free, 1))} "
        f"there, or write to another disk.{' ' + hint if hint else ''}"
    )


def _existing(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _tree_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) if Path(folder).is_dir() else 0


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
