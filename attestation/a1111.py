"""The ``parameters`` text: the settings as AUTOMATIC1111's web UI writes them, so that other
Stable Diffusion tools show them (docs/attestation.md, section 6).

The text is unsigned; a verifier recomputes it from the verified statement and compares. The
rules below are written so that A1111's own reader (``parse_generation_parameters``) reads back
exactly the signed values, or, where the format cannot carry a prompt faithfully, so that no
text is written at all rather than one that reads as another prompt. Pure code.
"""

from __future__ import annotations

import json

from .statement import GenerationRecord

#: Characters A1111's reader strips from the ends of the text and of each line (Python's
#: ``str.isspace``), listed so that other implementations need not guess.
WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
NEGATIVE_PREFIX = "Negative prompt:"
#: Characters that make a settings value JSON-quoted: A1111 quotes , : and newlines; a quote
#: must be too, or a value that starts and ends with one would be unquoted by readers.
_QUOTE_TRIGGERS = frozenset(',:"\n')


def a1111_parameters(record: GenerationRecord) -> str | None:
    """The A1111 settings text of this generation, or ``None`` when A1111's format cannot carry
    its prompts faithfully (see ``prompt_is_representable``); nodes then write no text.

    ``<prompt>\\nNegative prompt: <neg>\\nSteps: N, Sampler: S, CFG scale: G, Seed: N, Size: WxH,
    Model hash: <10 hex>, Model: <name>``; the negative line is left out when empty. ``Sampler``
    is the A1111 sampler name when the statement has one (version 2; version 3 with a sampler),
    else the scheduler class (version 1; version 3 with ``"sampler": null``).
    "Model hash" is the first 10 hex digits of the ``pointillist-model-v1`` digest: for a single-file
    checkpoint that digest is the file's sha256, so this is exactly A1111's and Civitai's AutoV2
    hash; for a diffusers folder it is ours only (A1111 has no hash of a folder).
    """
    s = record.settings
    if not (prompt_is_representable(s.prompt) and prompt_is_representable(s.negative_prompt)):
        return None
    lines = [s.prompt]
    if s.negative_prompt:
        lines.append(f"{NEGATIVE_PREFIX} {s.negative_prompt}")
    settings = (
        ("Steps", str(s.steps)),
        # v2: the A1111 sampler name the job asked for; v1: the scheduler class, as always written.
        ("Sampler", quote(record.scheduler if s.sampler is None else s.sampler)),
        ("CFG scale", cfg_scale(s.guidance)),
        ("Seed", str(s.seed)),
        ("Size", f"{s.width}x{s.height}"),
        ("Model hash", record.model_digest[:10]),
        ("Model", quote(record.model_name)),
    )
    lines.append(", ".join(f"{key}: {value}" for key, value in settings))
    return "\n".join(lines)


def prompt_is_representable(text: str) -> bool:
    """Whether A1111's reader gets ``text`` back unchanged as a prompt or negative prompt.

    The reader splits the text at LF, strips each line and the whole text, and starts the
    negative prompt at the first line beginning ``Negative prompt:``; prompt lines cannot be
    quoted. So a prompt is refused if it starts with LF, if any line (split at LF) begins or ends
    with a ``WHITESPACE`` character or begins with ``Negative prompt:``, or if it holds U+0000
    (PNG text cannot carry it).
    """
    if text.startswith("\n") or "\0" in text:
        return False
    for line in text.split("\n"):
        if line and (line[0] in WHITESPACE or line[-1] in WHITESPACE or line.startswith(NEGATIVE_PREFIX)):
            return False
    return True


def quote(value: str) -> str:
    """A settings value as written: JSON-quoted (UTF-8, not ``\\u`` escapes) if it is empty,
    holds ``,`` ``:`` ``"`` or LF, or begins or ends with whitespace; otherwise as it is."""
    if value and value[0] not in WHITESPACE and value[-1] not in WHITESPACE and not _QUOTE_TRIGGERS & set(value):
        return value
    return json.dumps(value, ensure_ascii=False)


def cfg_scale(value: float) -> str:
    """The guidance scale as a decimal in positional notation, never an exponent.

    An integral value is written without a point (7.0 -> ``7``, -0.0 -> ``0``). Any other value
    is the shortest digit string that reads back as the same IEEE 754 double, the one closest to
    it where several are as short (Python's ``repr``, ECMAScript's ``Number::toString``), with
    ``repr``'s exponent form for values below 1e-4 spelled out (1e-05 -> ``0.00001``).
    """
    value = float(value)
    if value.is_integer():
        return str(int(value))
    text = repr(value)
    if "e" not in text:
        return text
    # Only small values get here: a double of 1e16 or more is integral.
    sign = "-" if text.startswith("-") else ""
    mantissa, exponent = text.lstrip("-").split("e")
    return f"{sign}0.{'0' * (-int(exponent) - 1)}{mantissa.replace('.', '')}"
