"""This installation's version, from the installed package's metadata (pyproject.toml), so the
capacity record and the attestation never state a number that was typed twice and drifted."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def pointillist_version() -> str:
    try:
        return version("pointillist")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


POINTILLIST_VERSION = pointillist_version()
