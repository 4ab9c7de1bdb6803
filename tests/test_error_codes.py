"""Error codes: one enum, the wire schema, and the retry rule exactly as docs/protocol.md states it."""

from __future__ import annotations

import re

import pytest

from pointillist.protocol.errors import ErrorCode, FrameError, FrameTooLarge, JobRejected, Retry
from pointillist.protocol.framing import encode_frame, parse_header
from pointillist.protocol.messages import parse_reply
from support import REPO

_DOC_RULE = {"later": Retry.LATER, "elsewhere": Retry.ELSEWHERE, "elsewhere and avoid": Retry.ELSEWHERE_AND_AVOID}


def documented_rules() -> dict[str, Retry]:
    text = (REPO / "docs" / "protocol.md").read_text()
    section = text.split("### Which refusals the requester retries", 1)[1]
    rows = re.findall(r"^\| `([a-z-]+)` \| [^|]+ \| ([a-z ]+) \|$", section, flags=re.M)
    return {code: _DOC_RULE[rule.strip()] for code, rule in rows}


def test_the_documented_table_lists_every_code_once_with_the_rule_the_code_follows():
    documented = documented_rules()
    assert sorted(documented) == sorted(c.value for c in ErrorCode)
    assert {c.value: c.retry for c in ErrorCode} == documented


def test_only_busy_and_rate_limited_are_retried_later():
    assert {c for c in ErrorCode if c.retry is Retry.LATER} == {ErrorCode.BUSY, ErrorCode.RATE_LIMITED}


@pytest.mark.parametrize("code", list(ErrorCode))
def test_each_code_round_trips_through_the_wire_message(code):
    message = parse_reply({"t": "error", "code": code.value, "message": "m"})
    assert message.code is code
    assert JobRejected(message.code, "m").code is code


def test_a_code_outside_the_enum_is_an_invalid_message_not_a_new_code():
    with pytest.raises(FrameError, match="code"):
        parse_reply({"t": "error", "code": "please-retry", "message": "m"})
    with pytest.raises(ValueError):
        JobRejected("please-retry", "m")  # a typo in our own code fails loudly


def test_oversized_frames_have_their_own_error_type():
    with pytest.raises(FrameTooLarge):
        parse_header((10**6).to_bytes(4, "big"), 1000)
    with pytest.raises(FrameTooLarge):
        encode_frame({"blob": b"x" * 2000}, max_size=1000)
    with pytest.raises(FrameError) as e:
        parse_header((0).to_bytes(4, "big"), 1000)
    assert not isinstance(e.value, FrameTooLarge)
