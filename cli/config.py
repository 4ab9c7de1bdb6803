"""``config.toml`` in the config directory: defaults that command-line options override.

    bootstrap = ["/ip4/192.0.2.7/tcp/4001/p2p/12D3KooW..."]   # peers to join through

    [node]
    listen = ["/ip4/0.0.0.0/tcp/4001"]
    models = ["/models/stable-diffusion-v1-5"]
    model_config = "/models/stable-diffusion-v1-5"   # for single-file checkpoints
    models_dir = "~/stable-diffusion-webui/models/Stable-diffusion"   # serve every model in it
    models_on_device = 1           # models kept on the GPU at once
    models_ram_mb = 16384          # RAM for models moved off the GPU (default: half the free RAM)
    device = "cuda"
    dtype = "float16"
    metrics = "127.0.0.1:9464"     # Prometheus metrics endpoint (off when absent)
    log_format = "json"            # event lines without a terminal: "text" (default) or "json"

    [audit]                        # what submit spot-checks (docs/audit.md)
    share = 0.1                    # audit this share of the images submit writes (default 0)
    model = "/models/stable-diffusion-v1-5"   # the model to recompute with

Unknown keys are an error (a typo should not be silently ignored).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..protocol.errors import UsageError
from ..protocol.keyfile import config_dir

_TOP = {"bootstrap", "node", "audit"}
_AUDIT = {"share", "model"}
_NODE = {"listen", "relays", "mdns", "models", "model_config", "models_dir", "models_on_device", "models_ram_mb", "device",
         "dtype", "metrics", "log_format"}
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class Config:
    bootstrap: list[str] = field(default_factory=list)
    listen: list[str] = field(default_factory=list)
    relays: list[str] = field(default_factory=list)
    mdns: bool = False
    models: list[Path] = field(default_factory=list)
    model_config: Path | None = None
    models_dir: Path | None = None
    models_on_device: int | None = None
    models_ram_mb: int | None = None
    device: str | None = None
    dtype: str | None = None
    metrics: str | None = None
    log_format: str | None = None
    audit_share: float = 0.0
    audit_model: Path | None = None


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
    audit = raw.get("audit", {})
    if not isinstance(audit, dict):
        raise UsageError(f"{path}: [audit] must be a table")
    unknown |= {f"audit.{k}" for k in set(audit) - _AUDIT}
    if unknown:
        raise UsageError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
    for key in ("models_on_device", "models_ram_mb"):
        value = node.get(key)
        if value is not None and (type(value) is not int or value < (1 if key == "models_on_device" else 0)):
            raise UsageError(f"{path}: node.{key} must be a whole number"
                             + (" of at least 1" if key == "models_on_device" else " (MiB)"))
    for key in ("model_config", "models_dir", "device", "dtype", "metrics", "log_format"):
        if key in node and not isinstance(node[key], str):
            raise UsageError(f"{path}: node.{key} must be a string")
    share = audit.get("share", 0.0)
    if type(share) not in (int, float) or not 0 <= share <= 1:
        raise UsageError(f"{path}: audit.share must be a number from 0 to 1")
    if "model" in audit and not isinstance(audit["model"], str):
        raise UsageError(f"{path}: audit.model must be a string")
    if node.get("log_format", "text") not in LOG_FORMATS:
        raise UsageError(f"{path}: node.log_format must be one of {', '.join(LOG_FORMATS)}")
    return Config(
        bootstrap=_strings(raw.get("bootstrap", []), "bootstrap", path),
        listen=_strings(node.get("listen", []), "node.listen", path),
        relays=_strings(node.get("relays", []), "node.relays", path),
        mdns=_bool(node.get("mdns", False), "node.mdns", path),
        models=[Path(m).expanduser() for m in _strings(node.get("models", []), "node.models", path)],
        model_config=Path(node["model_config"]).expanduser() if "model_config" in node else None,
        models_dir=Path(node["models_dir"]).expanduser() if "models_dir" in node else None,
        models_on_device=node.get("models_on_device"),
        models_ram_mb=node.get("models_ram_mb"),
        device=node.get("device"),
        dtype=node.get("dtype"),
        metrics=node.get("metrics"),
        log_format=node.get("log_format"),
        audit_share=float(share),
        audit_model=Path(audit["model"]).expanduser() if "model" in audit else None,
    )


def _bool(value: object, name: str, path: Path) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{path}: {name} must be true or false")
    return value


def _strings(value: object, name: str, path: Path) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{path}: {name} must be a list of strings")
    return list(value)
