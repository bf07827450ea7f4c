"""Write files so that a crash never leaves a half-written output behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; outputs get the usual permissions instead.
FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name ends with the real name, so format-by-extension writers still work.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-", suffix=f"-{path.name}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(out):
    """Yield a temporary folder beside `out`; it replaces `out` only if the block succeeds."""
    out = Path(out)
    tmp = out.parent / f".part-{out.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    old = out.parent / f".old-{out.name}"
    try:
        yield tmp
        # Two renames: `out` is missing only between them, never while the old copy is deleted.
        if out.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        if old.exists():
            shutil.rmtree(old)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_table(df, path, **kwargs) -> None:
    """Write a pandas table as TSV (or CSV for a .csv name) atomically."""
    sep = "," if str(path).endswith(".csv") else "\t"
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep=sep, index=False, **kwargs)
