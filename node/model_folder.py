"""``--models-dir``: every model in a folder like A1111's ``models/Stable-diffusion/``.

A model is a single-file checkpoint (``.safetensors``; ``.ckpt`` too, which loading handles) or a
diffusers folder (one holding ``model_index.json``), directly inside the folder; anything else
(previews, YAMLs, VAEs in subfolders without a model index) is skipped. Names are the file stem
or folder name, made unique with the suffix when a file and a folder share a stem. Pure file
listing: no torch, so the CLI checks the folder before loading anything.
"""

from __future__ import annotations

from pathlib import Path

from ..protocol.errors import UsageError

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


def find_models(folder: Path) -> list[Path]:
    """The models in ``folder``, sorted by name; ``UsageError`` when it is missing or has none."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UsageError(f"models folder {folder} does not exist or is not a folder")
    found = [
        p for p in sorted(folder.iterdir(), key=lambda p: p.name)
        if (p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES and not p.name.startswith("."))
        or (p.is_dir() and (p / "model_index.json").is_file())
    ]
    if not found:
        raise UsageError(f"no models in {folder} (expected .safetensors/.ckpt files or diffusers folders)")
    return found


def model_names(paths: list[Path]) -> list[str]:
    """A name per model, unique: the stem, or the whole file name where stems collide."""
    stems = [p.stem if p.is_file() else p.name for p in paths]
    return [p.name if stems.count(stem) > 1 else stem for p, stem in zip(paths, stems)]
