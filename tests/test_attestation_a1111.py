"""The A1111 ``parameters`` text reads back, in A1111's own reader, as exactly the signed values;
where it could not, none is written (docs/attestation.md, section 6)."""

from __future__ import annotations

import dataclasses
import json
import re
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointillist.attestation import a1111_parameters, embed_provenance, extract_provenance, verify_image
from pointillist.attestation.a1111 import WHITESPACE, cfg_scale, prompt_is_representable, quote
from pointillist.attestation.sign import attest
from pointillist.protocol.jobs import sign_job
from support import load_vector_generator

V = load_vector_generator()

# AUTOMATIC1111's reader (modules/infotext_utils.py, parse_generation_parameters), restated:
# the text is stripped and split at LF; the last line holds the settings if it has 3 or more
# "key: value" pairs; every other line is stripped, and the first starting "Negative prompt:"
# starts the negative prompt; a value in double quotes is read as a JSON string.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def read_like_a1111(text: str) -> tuple[str, str, dict[str, str]]:
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[16:].strip()
        if in_negative:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    values = {}
    for key, value in _PARAM.findall(last):
        if value[:1] == '"' and value[-1:] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass
        values[key] = value
    return prompt, negative, values


def record(prompt: str = "a cat", negative: str = "blurry", model_name: str = V.MODEL_NAME, **settings):
    request = V.job_request("00112233445566778899aabbccddeeff", prompt, negative=negative)
    base = V.record_for(sign_job(V.REQUESTER, request), request, model_name=model_name)
    return dataclasses.replace(base, settings=dataclasses.replace(base.settings, **settings))


def naive_text(prompt: str, negative: str) -> str:
    """What a writer following A1111 without our rule would write."""
    return f"{prompt}\nNegative prompt: {negative}\nSteps: 20, Sampler: S, CFG scale: 7, Seed: 1, Size: 8x8"


# Texts built from the pieces that matter to the reader.
_pieces = st.sampled_from(["a", "cat", " ", "\n", ",", ":", '"', "\\", "Negative prompt:", "Steps: 1", "\t",
                           "\u3000", "\r", "灯", "\U0001F30A", "x: y, z: w, u: v"])
texts = st.lists(_pieces, max_size=12).map("".join)


@settings(max_examples=400, deadline=None)
@given(prompt=texts, negative=texts, model=texts.filter(bool),
       guidance=st.floats(0, 100, allow_nan=False) | st.sampled_from([1e-05, 1.5e-07, 0.0001, 7.0, 100.0]),
       seed=st.integers(0, 2**64 - 1))
def test_a1111_reads_back_the_signed_values_or_no_text_is_written(prompt, negative, model, guidance, seed) -> None:
    rec = record(prompt, negative, model_name=model, guidance=guidance, seed=seed)
    text = a1111_parameters(rec)
    if text is None:
        assert not (prompt_is_representable(prompt) and prompt_is_representable(negative))
        # The rule is no stricter than it must be: A1111 would misread these prompts. Two
        # exceptions on purpose: U+0000 (PNG text cannot hold it) and a negative prompt whose
        # first line starts "Negative prompt:", which A1111 happens to read back, refused so
        # that one rule covers both prompts.
        if "\0" not in prompt + negative and not negative.startswith("Negative prompt:"):
            assert read_like_a1111(naive_text(prompt, negative))[:2] != (prompt, negative)
        return
    read_prompt, read_negative, values = read_like_a1111(text)
    assert (read_prompt, read_negative) == (prompt, negative)
    assert values["Model"] == model and values["Sampler"] == rec.scheduler
    assert float(values["CFG scale"]) == guidance and values["Seed"] == str(seed)
    assert values["Steps"] == "20" and values["Size"] == "16x16"
    assert values["Model hash"] == V.MODEL_DIGEST[:10]


@pytest.mark.parametrize("prompt,ok", [
    ("a cat\nNegative prompt: a dog", False),
    ("Negative prompt: a dog", False),
    ("\na cat", False),
    ("a cat ", False),
    (" a cat", False),
    ("a cat\r\nmore", False),
    ("a\u3000", False),
    ("a\0b", False),
    ("", True),
    ("a cat\n\nmore\n", True),
    ("a cat, b: c \"d\"", True),
    ("a\rb", True),
])
def test_prompt_is_representable(prompt: str, ok: bool) -> None:
    assert prompt_is_representable(prompt) is ok


def test_whitespace_list_is_what_a1111s_strip_removes() -> None:
    assert WHITESPACE == {chr(c) for c in range(0x110000) if chr(c).isspace()}


@pytest.mark.parametrize("value,written", [
    ("tiny-sd", "tiny-sd"),
    ("sd, v1", '"sd, v1"'),
    ("sd:v1", '"sd:v1"'),
    ('"tiny"', '"\\"tiny\\""'),
    ("tiny ", '"tiny "'),
    ("", '""'),
    ("灯台", "灯台"),
])
def test_quote(value: str, written: str) -> None:
    assert quote(value) == written


@pytest.mark.parametrize("value,written", [
    (7.0, "7"), (7, "7"), (0.0, "0"), (-0.0, "0"), (100.0, "100"), (7.5, "7.5"), (0.1, "0.1"),
    (1 / 3, "0.3333333333333333"), (0.0001, "0.0001"), (1e-05, "0.00001"), (1.5e-07, "0.00000015"),
    (5e-324, "0." + "0" * 323 + "5"),
])
def test_cfg_scale(value: float, written: str) -> None:
    assert cfg_scale(value) == written


@settings(max_examples=500)
@given(st.floats(0, 100, allow_nan=False) | st.floats(0, 1e-3, allow_nan=False))
def test_cfg_scale_is_the_shortest_round_trip_decimal(value: float) -> None:
    text = cfg_scale(value)
    assert float(text) == value and "e" not in text.lower()
    assert Decimal(text) == Decimal(repr(value))  # repr: shortest digits, closest of the shortest
    if value.is_integer():
        assert "." not in text
    else:
        assert not text.endswith("0")


def test_node_writes_no_parameters_for_a_prompt_a1111_would_misread() -> None:
    prompt = "a lighthouse\nNegative prompt: a burning lighthouse"
    request = V.job_request("00112233445566778899aabbccddeeff", prompt)
    job = sign_job(V.REQUESTER, request)
    image = V.gradient()
    png = embed_provenance(image, attest(V.NODE, V.record_for(job, request), image), job)
    assert extract_provenance(png).parameters is None
    report = verify_image(png)
    assert report.ok and report.check("parameters").ok is None
