"""Small parts of issue 7, each pinned: the journal, rate-limited refusal logs, size and dash
arguments, the version read from package metadata."""

from __future__ import annotations

import argparse
import logging
from importlib.metadata import version

import pytest

from pointillist.cli.main import attach_dashed_values, main
from pointillist.cli.options import image_size
from pointillist.node.quiet_log import RateLimitedLog
from pointillist.requester.journal import MAX_ENTRIES, Journal, JournalEntry


def test_the_journal_finds_the_last_entry_for_a_job_and_survives_a_torn_line(tmp_path):
    journal = Journal(tmp_path / "jobs.jsonl")
    journal.record(JournalEntry("a" * 32, "12D3KooWone", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWone", 1))
    journal.record(JournalEntry("a" * 32, "12D3KooWone", "/ip4/127.0.0.1/tcp/2/p2p/12D3KooWone", 2))
    with open(journal.path, "a") as f:
        f.write('{"job_id": "b')  # a crash mid-write
    assert journal.find("a" * 32).addr.endswith("tcp/2/p2p/12D3KooWone")
    assert journal.find("c" * 32) is None


def test_the_journal_stays_bounded(tmp_path):
    journal = Journal(tmp_path / "jobs.jsonl")
    for i in range(3 * MAX_ENTRIES):
        journal.record(JournalEntry(f"{i:032x}", "12D3KooWx", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWx", i))
    assert len(journal.path.read_text().splitlines()) <= 2 * MAX_ENTRIES
    assert journal.find(f"{3 * MAX_ENTRIES - 1:032x}") is not None
    assert journal.find(f"{0:032x}") is None


def test_refusal_logs_are_rate_limited_per_key_and_the_rest_is_counted(caplog):
    now = [0.0]
    quiet = RateLimitedLog(logging.getLogger("test.quiet"), burst=3, window_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.quiet"):
        logged = [quiet.log(logging.INFO, "bad-frame", "refused %d", i) for i in range(1000)]
        quiet.log(logging.INFO, "busy", "busy once")
        now[0] = 61.0
        quiet.log(logging.INFO, "bad-frame", "refused again")
    assert sum(logged) == 3
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:4] == ["refused 0", "refused 1", "refused 2", "busy once"]
    assert "997 more bad-frame line(s) held back" in messages[4] and messages[5] == "refused again"


@pytest.mark.parametrize("text,message", [
    ("100000x100000", "8 to 8192 pixels"), ("-64x64", "8 to 8192 pixels"), ("0", "8 to 8192 pixels"),
    ("63x64", "multiple of 8"), ("big", "expected WIDTHxHEIGHT"),
])
def test_bad_sizes_say_what_is_wrong(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        image_size(text)


def test_a_negative_value_reaches_its_option_check(capsys):
    assert attach_dashed_values(["submit", "x", "--size", "-64x64", "--seed", "-1", "-n", "2"]) == \
        ["submit", "x", "--size=-64x64", "--seed=-1", "-n", "2"]
    with pytest.raises(SystemExit) as e:
        main(["submit", "x", "--size", "-64x64"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "8 to 8192 pixels" in err and "expected one argument" not in err


def test_the_advertised_version_is_the_installed_package_version():
    from pointillist.node.version import POINTILLIST_VERSION

    assert POINTILLIST_VERSION == version("pointillist")


def test_importing_the_requester_package_loads_neither_libp2p_nor_torch():
    import subprocess
    import sys

    code = ("import sys, pointillist.requester; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'libp2p', 'torch', 'diffusers'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
