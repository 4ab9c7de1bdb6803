"""The seven settings that decide an image, declared once.

A job asks for them (``JobRequest.settings``), the pipeline runs them (``LoadedModel.generate``),
the attestation states them (``GenerationRecord.settings``) and the verifier compares the job's
with the statement's as a whole (``job.settings == record.settings``). A setting added here is
therefore carried, stated and checked everywhere, or some test fails.

``SETTINGS_MEMBERS`` is their JSON schema, the same in the job and in the predicate (format
version 1); ``SETTINGS_MEMBERS_V2`` adds ``sampler`` (job v2, predicate generation/v2). The
pipeline keeps its own checks before spending GPU time. Pure code: no pydantic, no torch.

Samplers are named as AUTOMATIC1111 names them (``SAMPLERS``); ``node/samplers.py`` maps each
name to a diffusers scheduler. ``sampler`` is ``None`` in a version 1 job: the model's own
scheduler, as before samplers existed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from . import schema


def _json(name: str) -> Any:
    # The JSON member name, the same in the signed job and in the attestation's predicate.
    return field(metadata={"json": name})


@dataclass(frozen=True)
class GenerationSettings:
    """What a requester asks for and a node states it ran; Python names, Python types.

    ``seed`` is an int here and a decimal string in JSON (JSON numbers lose precision past 2**53
    in many parsers). ``guidance`` is the classifier-free guidance scale.
    """

    prompt: str = _json("prompt")
    negative_prompt: str = _json("negativePrompt")
    seed: int = _json("seed")
    steps: int = _json("steps")
    guidance: float = _json("guidance")
    width: int = _json("width")
    height: int = _json("height")
    #: The A1111 sampler name (``SAMPLERS``), or ``None``: the model's own scheduler (format v1).
    sampler: str | None = field(default=None, metadata={"json": "sampler"})

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON members as both the job and the predicate write them."""
        out = {json_name(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.sampler is None:  # format v1 has no such member
            del out["sampler"]
        out["seed"] = str(self.seed)
        out["guidance"] = float(self.guidance)
        return out

    def differing(self, other: GenerationSettings) -> list[str]:
        """JSON names of the settings whose values differ, in declaration order."""
        return [json_name(f.name) for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name)]


#: Python names of the settings, in declaration order.
SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GenerationSettings))


def json_name(name: str) -> str:
    """The JSON member name of the setting ``name`` (``negative_prompt`` -> ``negativePrompt``)."""
    return GenerationSettings.__dataclass_fields__[name].metadata["json"]


#: The JSON members of the settings and their rules, by JSON name; the job and the predicate
#: both include exactly these.
SETTINGS_MEMBERS: dict[str, schema.Check] = {
    "prompt": schema.string(max_length=4000),
    "negativePrompt": schema.string(max_length=4000),
    "seed": schema.seed,
    "steps": schema.integer(1, 1000),
    "guidance": schema.number(0.0, 100.0),
    "width": schema.integer(8, 8192),
    "height": schema.integer(8, 8192),
}

#: Format version 2 (job v2, predicate generation/v2): the same plus the sampler's A1111 name.
#: Any name of 1-100 characters parses; whether a node can run it is the node's business
#: (admission refuses an unknown one with ``invalid-params``), so a verifier needs no list.
SETTINGS_MEMBERS_V2: dict[str, schema.Check] = {
    **SETTINGS_MEMBERS,
    "sampler": schema.string(1, 100),
}

#: The sampler names a job may give, as AUTOMATIC1111's web UI writes them in ``Sampler:``.
SAMPLERS: tuple[str, ...] = (
    "Euler",
    "Euler a",
    "Heun",
    "DPM++ 2M",
    "DPM++ 2M Karras",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Karras",
    "DPM++ SDE Karras",
    "LMS",
    "LMS Karras",
    "DDIM",
    "PLMS",
    "UniPC",
    "LCM",
)


def sampler_problem(name: object) -> str | None:
    """A one-line reason why ``name`` is no sampler of ``SAMPLERS``, or ``None`` if it is one.
    Names are exact (A1111's spelling, case and spaces)."""
    if name in SAMPLERS:
        return None
    return f"unknown sampler {name!r}; samplers are: {', '.join(SAMPLERS)}"


def settings_from_json(values: dict[str, Any]) -> GenerationSettings:
    """The settings among members already checked against ``SETTINGS_MEMBERS`` (``sampler``
    ``None``) or ``SETTINGS_MEMBERS_V2``."""
    fields = {name: values.get(json_name(name)) for name in SETTING_NAMES}  # sampler: v2 only
    return GenerationSettings(**{**fields, "seed": int(fields["seed"])})
