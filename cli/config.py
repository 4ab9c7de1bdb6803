"""``config.toml`` in the config directory: defaults that command-line options override.

    bootstrap = ["/ip4/192.0.2.7/tcp/4001/p2p/12D3KooW..."]   # peers to join through

    [node]
    listen = ["/ip4/0.0.0.0/tcp/4001"]
    models = ["/models/stable-diffusion-v1-5"]
    model_config = "/models/stable-diffusion-v1-5"   # for single-file checkpoints
    device = "cuda"
    dtype = "float16"

Unknown keys are an error (a typo should not be silently ignored).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..protocol.errors import UsageError
from ..protocol.keyfile import config_dir

_TOP = {"bootstrap", "node"}
_NODE = {"listen", "models", "model_config", "device", "dtype"}


@dataclass(frozen=True)
class Config:
    bootstrap: list[str] = field(default_factory=list)
    listen: list[str] = field(default_factory=list)
    models: list[Path] = field(default_factory=list)
    model_config: Path | None = None
    device: str | None = None
    dtype: str | None = None


def config_path() -> Path:
    return config_dir() / "config.toml"


def load_config(path: Path | None = None) -> Config:
    path = path or config_path()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Config()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: {exc}") from exc
    unknown = set(raw) - _TOP
    node = raw.get("node", {})
    if not isinstance(node, dict):
        raise UsageError(f"{path}: [node] must be a table")
    unknown |= {f"node.{k}" for k in set(node) - _NODE}
    if unknown:
        raise UsageError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
    for key in ("model_config", "device", "dtype"):
        if key in node and not isinstance(node[key], str):
            raise UsageError(f"{path}: node.{key} must be a string")
    return Config(
        bootstrap=_strings(raw.get("bootstrap", []), "bootstrap", path),
        listen=_strings(node.get("listen", []), "node.listen", path),
        models=[Path(m).expanduser() for m in _strings(node.get("models", []), "node.models", path)],
        model_config=Path(node["model_config"]).expanduser() if "model_config" in node else None,
        device=node.get("device"),
        dtype=node.get("dtype"),
    )


def _strings(value: object, name: str, path: Path) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{path}: {name} must be a list of strings")
    return list(value)
