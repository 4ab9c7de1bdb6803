"""Writing result files: checked before any work is asked for, written without clobbering."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..protocol.errors import UsageError


def check_writable(path: Path, overwrite: bool) -> None:
    """``UsageError`` now if ``path`` exists (and may not be overwritten) or its folder cannot
    take a new file: finding out after a node spent minutes on the image would lose it."""
    if path.exists() and not overwrite:
        raise UsageError(f"{path} exists (use --force to overwrite)")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"cannot write {path}: folder {folder} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".pointillist-", suffix=".tmp"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_new(path: Path, data: bytes, overwrite: bool) -> None:
    """Write ``data`` to ``path`` atomically; never replace a file that appeared meanwhile unless
    ``overwrite``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path appeared meanwhile: never clobber a file
            tmp.unlink()
    except FileExistsError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"{path} exists (use --force to overwrite)") from exc
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {exc.strerror}") from exc
