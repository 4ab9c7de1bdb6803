"""Deterministic model digests ("pointillist-model-v1"); the full specification is docs/model-digest.md.

* A diffusers folder: one sha256 per counted file (weights, configs, tokenizer files), JSON
  configs hashed in a canonical form without save-time metadata, and a root sha256 over the sorted
  ``"<file hex>  <relative path>\\n"`` lines. Re-saving the same model with another diffusers or
  transformers version keeps the digest; changing any weight, config value, tokenizer file or file
  name changes it.
* A single checkpoint file: the sha256 of its bytes, so ``digest[:10]`` is AUTOMATIC1111's
  "AutoV2" model hash.

This module is cheap to import (standard library only; platformdirs lazily) and never touches
torch. Hashing is streamed in 1 MiB chunks. ``model_digest`` caches results keyed by absolute path
and invalidated by any counted file's (relative path, size, mtime_ns).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pointillist.protocol.errors import ModelError, one_line

__all__ = [
    "ALGORITHM",
    "COUNTED_SUFFIXES",
    "SINGLE_FILE_SUFFIXES",
    "a1111_model_hash",
    "compute_model_digest",
    "default_cache_dir",
    "model_digest",
]

ALGORITHM = "pointillist-model-v1"

#: File suffixes (compared lower-cased) that belong to a model inside a folder.
COUNTED_SUFFIXES = frozenset({".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".json", ".txt", ".model"})

#: Suffixes accepted when the path is a single checkpoint file.
SINGLE_FILE_SUFFIXES = frozenset({".safetensors", ".ckpt", ".pt", ".pth", ".bin"})

#: JSON keys dropped everywhere before hashing a .json file, besides "_"-prefixed ones.
METADATA_KEYS = frozenset({"transformers_version"})
#: "_"-prefixed keys that are kept: they select the class to load, so they change the model.
KEPT_UNDERSCORE_KEYS = frozenset({"_class_name"})

CACHE_FILE_NAME = "model-digests.json"
CHUNK_SIZE = 1 << 20

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Entry:
    rel: str  # relative POSIX path ("" parts joined by "/"); the file name for a single file
    path: Path
    size: int
    mtime_ns: int


# ---------------------------------------------------------------------------------------------
# scanning


def _scan(path: Path) -> tuple[bool, list[_Entry]]:
    """Return (is_folder, counted files sorted by relative path bytes)."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise ModelError(f"model not found: {path}") from exc
    except OSError as exc:
        raise ModelError(f"cannot read model {path}: {one_line(exc)}") from exc

    if stat.S_ISREG(st.st_mode):
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            wanted = ", ".join(sorted(SINGLE_FILE_SUFFIXES))
            raise ModelError(f"not a model file: {path} (expected a folder or one of {wanted})")
        return False, [_Entry(path.name, path, st.st_size, st.st_mtime_ns)]
    if not stat.S_ISDIR(st.st_mode):
        raise ModelError(f"not a model file or folder: {path}")

    entries: list[_Entry] = []
    seen_dirs: set[tuple[int, int]] = set()

    def onerror(exc: OSError) -> None:
        raise ModelError(f"cannot read model folder {exc.filename or path}: {one_line(exc)}") from exc

    for dirpath, dirnames, filenames in os.walk(path, onerror=onerror, followlinks=True):
        here = Path(dirpath)
        try:
            dst = here.stat()
        except OSError as exc:
            raise ModelError(f"cannot read model folder {here}: {one_line(exc)}") from exc
        key = (dst.st_dev, dst.st_ino)
        if key in seen_dirs:  # a symlink loop or a second link to a folder already walked
            dirnames[:] = []
            continue
        seen_dirs.add(key)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = here.relative_to(path).as_posix()
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in COUNTED_SUFFIXES:
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if "\n" in rel or "\r" in rel:
                raise ModelError(f"model file name contains a line break: {rel!r}")
            file_path = here / name
            try:
                fst = file_path.stat()  # follows symlinks: a linked file counts with its target
            except OSError as exc:
                raise ModelError(f"cannot read model file {file_path}: {one_line(exc)}") from exc
            if stat.S_ISREG(fst.st_mode):  # skip fifos, sockets, devices
                entries.append(_Entry(rel, file_path, fst.st_size, fst.st_mtime_ns))

    if not entries:
        wanted = ", ".join(sorted(COUNTED_SUFFIXES))
        raise ModelError(f"no model files in folder {path} (looked for {wanted})")
    entries.sort(key=lambda e: _path_bytes(e.rel))
    return True, entries


def _path_bytes(rel: str) -> bytes:
    return rel.encode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------------------------------
# hashing


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK_SIZE):
                digest.update(chunk)
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {one_line(exc)}") from exc
    return digest.hexdigest()


def _strip_metadata(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip_metadata(v)
            for k, v in value.items()
            if not ((k.startswith("_") and k not in KEPT_UNDERSCORE_KEYS) or k in METADATA_KEYS)
        }
    if isinstance(value, list):
        return [_strip_metadata(v) for v in value]
    return value


def canonical_json_bytes(data: bytes) -> bytes | None:
    """The canonical form hashed for a .json file, or None when it is not UTF-8 JSON."""
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    try:
        text = json.dumps(_strip_metadata(parsed), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, RecursionError):  # pragma: no cover - parsed JSON always re-serialises
        return None
    return text.encode("utf-8", "surrogatepass")


def _file_digest(entry: _Entry) -> str:
    if entry.path.suffix.lower() == ".json":
        try:
            data = entry.path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read model file {entry.path}: {one_line(exc)}") from exc
        canonical = canonical_json_bytes(data)
        return hashlib.sha256(data if canonical is None else canonical).hexdigest()
    return _sha256_file(entry.path)


def _digest_entries(is_folder: bool, entries: list[_Entry]) -> str:
    if not is_folder:
        return _sha256_file(entries[0].path)
    root = hashlib.sha256()
    for entry in entries:
        root.update(f"{_file_digest(entry)}  ".encode("ascii") + _path_bytes(entry.rel) + b"\n")
    return root.hexdigest()


def compute_model_digest(path: Path) -> str:
    """The pointillist-model-v1 digest of a diffusers folder or single checkpoint, uncached.

    Returns 64 lowercase hex characters. Raises ModelError when the path does not exist, is not a
    folder or checkpoint file, holds no counted files, or cannot be read.
    """
    is_folder, entries = _scan(Path(path))
    return _digest_entries(is_folder, entries)


def a1111_model_hash(digest: str) -> str:
    """AUTOMATIC1111's short "Model hash" (AutoV2): the first 10 hex characters.

    It matches A1111 only for a single-file checkpoint, whose digest is the file's sha256.
    """
    return digest[:10]


# ---------------------------------------------------------------------------------------------
# cache


def default_cache_dir() -> Path:
    """``$POINTILLIST_HOME/cache`` when POINTILLIST_HOME is set, else the user cache directory."""
    home = os.environ.get("POINTILLIST_HOME")
    if home:
        return Path(home) / "cache"
    import platformdirs

    return Path(platformdirs.user_cache_dir("pointillist"))


def _fingerprint(entries: list[_Entry]) -> list[list[Any]]:
    return [[e.rel, e.size, e.mtime_ns] for e in entries]


def _read_cache(cache_file: Path) -> dict[str, Any]:
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        log.debug("ignoring unreadable digest cache %s: %s", cache_file, one_line(exc))
        return {}
    if not isinstance(data, dict) or data.get("algorithm") != ALGORITHM:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _write_cache(cache_file: Path, entries: dict[str, Any]) -> None:
    """Atomically replace the cache file; failures are logged and otherwise ignored."""
    tmp_name = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{cache_file.name}.", suffix=".tmp", dir=cache_file.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"algorithm": ALGORITHM, "entries": entries}, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, cache_file)
        tmp_name = None
    except OSError as exc:
        log.debug("cannot write digest cache %s: %s", cache_file, one_line(exc))
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


def model_digest(path: Path, *, cache_dir: Path | None = None) -> str:
    """The pointillist-model-v1 digest of ``path``, served from a cache when nothing changed.

    The cache is ``model-digests.json`` in ``cache_dir`` (default: :func:`default_cache_dir`),
    keyed by the resolved absolute path. An entry is used only while every counted file's
    (relative path, size, mtime_ns) is unchanged and no file was added or removed. A corrupt or
    unreadable cache is ignored; it is rewritten atomically (temporary file + ``os.replace``).
    Content edits that keep both size and mtime_ns are not detected by the cache; use
    :func:`compute_model_digest` to bypass it.
    """
    path = Path(path)
    try:
        key = str(path.resolve(strict=True))
    except FileNotFoundError as exc:
        raise ModelError(f"model not found: {path}") from exc
    except (OSError, RuntimeError) as exc:
        raise ModelError(f"cannot read model {path}: {one_line(exc)}") from exc

    is_folder, entries = _scan(path)  # the path as given: a symlinked file keeps its suffix
    fingerprint = _fingerprint(entries)
    cache_file = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / CACHE_FILE_NAME

    cached = _read_cache(cache_file).get(key)
    if (
        isinstance(cached, dict)
        and cached.get("files") == fingerprint
        and isinstance(cached.get("digest"), str)
        and len(cached["digest"]) == 64
    ):
        return cached["digest"]

    digest = _digest_entries(is_folder, entries)

    # Files that changed while being hashed must not leave a cache entry behind.
    try:
        unchanged = _fingerprint(_scan(path)[1]) == fingerprint
    except ModelError:
        unchanged = False
    if unchanged:
        current = _read_cache(cache_file)  # re-read: another process may have added entries
        current = {k: v for k, v in current.items() if os.path.exists(k)}
        current[key] = {"digest": digest, "files": fingerprint}
        _write_cache(cache_file, current)
    return digest
