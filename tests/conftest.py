"""Shared fixtures. ``node_process`` starts real nodes as separate processes on 127.0.0.1."""

from __future__ import annotations

import pytest

from support import NodeHandle


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: pixel comparisons that must be bit for bit. The thread
    count changes the order of float sums; on CI's 2 cores a default-threads comparison once
    differed by one level in one pixel (tests/test_single_file.py, sd2-768-v)."""
    import torch  # here, not at the top: most tests never load torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory):
    """One node (embedded model) shared by a test module, stopped at its end."""
    handle = NodeHandle(tmp_path_factory.mktemp("shared-node"), []).wait_ready()
    yield handle
    handle.stop()


@pytest.fixture
def node_process(tmp_path):
    """Factory: ``node_process(*args)`` starts a node (embedded model unless --model is given)."""
    started: list[NodeHandle] = []

    def start(*extra_args: str, name: str | None = None) -> NodeHandle:
        handle = NodeHandle(tmp_path / (name or f"node{len(started)}"), list(extra_args))
        started.append(handle)
        return handle.wait_ready()

    yield start
    for handle in started:
        handle.stop()
