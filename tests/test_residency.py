"""Which served model is on the device, in RAM or on disk: ``node/residency.py`` against a
scripted loader and scripted moves, so each swap decision is checked alone."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest

from pointillist.node.residency import ModelFacts, Residency, ServedSlot


class FakePipe:
    def __init__(self, digest: str, size: int) -> None:
        self.digest, self.size, self.place = digest, size, "device"

    def generate(self, params, on_step=None):
        assert self.place == "device", "generated off the device"
        return (self.digest, params)


def facts(digest: str) -> ModelFacts:
    return ModelFacts(name=f"m-{digest}", digest=digest, path=Path(f"/models/{digest}"), family="sd15")


class Script:
    """Records what residency asks for; ``sizes`` are the pipelines' RAM bytes."""

    def __init__(self, sizes: dict[str, int], fail: set[str] = frozenset()) -> None:
        self.sizes, self.fail, self.calls, self.changes = sizes, set(fail), [], 0

    def residency(self, **kw) -> Residency:
        def load(f: ModelFacts) -> FakePipe:
            self.calls.append(("load", f.digest))
            if f.digest in self.fail:
                raise RuntimeError(f"cannot load {f.digest}")
            return FakePipe(f.digest, self.sizes[f.digest])

        def to_ram(p: FakePipe) -> None:
            self.calls.append(("to_ram", p.digest))
            p.place = "ram"

        def to_device(p: FakePipe) -> None:
            self.calls.append(("to_device", p.digest))
            p.place = "device"

        def changed() -> None:
            self.changes += 1

        return Residency(load=load, to_ram=to_ram, to_device=to_device, size_of=lambda p: p.size,
                         release=lambda: self.calls.append(("release", None)), on_change=changed, **kw)


def slots(res: Residency, *digests: str) -> dict[str, ServedSlot]:
    return {d: ServedSlot(facts(d), res) for d in digests}


def test_the_adopted_model_is_warm_and_runs_without_moves():
    script = Script({"a": 10})
    res = script.residency(max_on_device=1, ram_budget=100)
    res.adopt(facts("a"), FakePipe("a", 10))
    a = ServedSlot(facts("a"), res)
    assert a.warm and a.generate("p") == ("a", "p")
    assert script.calls == [] and script.changes == 0


def test_a_cold_model_pushes_the_warm_one_to_ram_and_comes_back_from_ram_later():
    script = Script({"a": 10, "b": 10})
    res = script.residency(max_on_device=1, ram_budget=100)
    res.adopt(facts("a"), FakePipe("a", 10))
    s = slots(res, "a", "b")
    assert s["b"].generate("p") == ("b", "p")
    assert script.calls == [("to_ram", "a"), ("release", None), ("load", "b")]
    assert (s["a"].warm, s["b"].warm, res.where("a")) == (False, True, "ram")
    script.calls.clear()
    assert s["a"].generate("q") == ("a", "q")
    assert script.calls == [("to_ram", "b"), ("release", None), ("to_device", "a")]  # no disk load
    assert [src for _, src, _ in res.swaps] == ["disk", "ram"] and script.changes == 2


def test_without_ram_room_the_evicted_model_is_dropped_and_reloaded_from_disk():
    script = Script({"a": 50, "b": 50})
    res = script.residency(max_on_device=1, ram_budget=40)
    res.adopt(facts("a"), FakePipe("a", 50))
    s = slots(res, "a", "b")
    s["b"].generate("p")
    assert res.where("a") == "disk"
    s["a"].generate("p")
    assert ("load", "a") in script.calls and ("to_ram", "a") not in script.calls


def test_ram_keeps_the_most_recent_within_its_budget():
    script = Script({d: 40 for d in "abcd"})
    res = script.residency(max_on_device=1, ram_budget=80)
    res.adopt(facts("a"), FakePipe("a", 40))
    s = slots(res, *"abcd")
    for d in "bcd":
        s[d].generate("p")
    # device: d; RAM (80 bytes): b and c, the two most recent; a, the oldest, was dropped.
    assert [res.where(d) for d in "abcd"] == ["disk", "ram", "ram", "device"]


def test_two_on_the_device_evicts_the_least_recently_used():
    script = Script({d: 10 for d in "abc"})
    res = script.residency(max_on_device=2, ram_budget=0)
    res.adopt(facts("a"), FakePipe("a", 10))
    s = slots(res, *"abc")
    s["b"].generate("p")
    s["a"].generate("p")  # a is now the most recent
    s["c"].generate("p")
    assert [res.where(d) for d in "abc"] == ["device", "disk", "device"]


def test_a_failed_load_raises_to_the_job_and_leaves_the_node_able_to_serve():
    script = Script({"a": 10, "b": 10}, fail={"b"})
    res = script.residency(max_on_device=1, ram_budget=100)
    res.adopt(facts("a"), FakePipe("a", 10))
    s = slots(res, "a", "b")
    with pytest.raises(RuntimeError, match="cannot load b"):
        s["b"].generate("p")
    assert not s["b"].warm and res.where("a") == "ram"
    assert s["a"].generate("p") == ("a", "p")  # the next job for a works


# --- out of device memory: the job fails with `out-of-memory`, memory is released, the next runs ---

class OutOfMemoryError(RuntimeError):
    """Stands in for ``torch.OutOfMemoryError`` (same name and module), so no torch is needed."""


OutOfMemoryError.__module__ = "torch"


class OomPipe(FakePipe):
    def __init__(self, digest: str, error: BaseException) -> None:
        super().__init__(digest, 10)
        self.error, self.held = error, None

    def generate(self, params, on_step=None):
        if params == "big":
            activations = Tensor()  # what the failed call's frame holds, like the job's tensors
            self.held = weakref.ref(activations)
            raise type(self.error)(*self.error.args)  # a fresh one, as torch raises
        return super().generate(params, on_step)


class Tensor:
    pass


@pytest.mark.parametrize("error", [
    OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB)"),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10737418240 bytes"),
], ids=["cuda", "mps", "cpu"])
def test_out_of_memory_becomes_a_one_line_out_of_memory_refusal_after_releasing(error):
    from types import SimpleNamespace

    from pointillist.protocol.errors import ErrorCode, JobRejected

    script = Script({"a": 10})
    res = script.residency(max_on_device=1, ram_budget=100, memory=lambda: (3 * 2**30, 8 * 2**30))
    pipe = OomPipe("a", error)
    res.adopt(facts("a"), pipe)
    freed_before_release = []
    res.release = lambda: (freed_before_release.append(pipe.held() is None), script.calls.append(("release", None)))
    a = ServedSlot(facts("a"), res)
    params = SimpleNamespace(width=2048, height=1536)
    with pytest.raises(JobRejected) as e:
        _generate_big(a, params)
    assert e.value.code is ErrorCode.OUT_OF_MEMORY and e.value.__cause__ is None
    assert "\n" not in e.value.message
    assert "2048x1536" in e.value.message and "m-a" in e.value.message
    assert "3.0 of 8.0 GiB free" in e.value.message
    assert script.calls == [("release", None)]
    assert freed_before_release == [True]  # the failed call's frames were gone when memory was released
    assert a.warm and a.generate("p") == ("a", "p")  # the model stayed; the next job runs


def _generate_big(slot: ServedSlot, params) -> None:
    pipe = slot.residency.get(slot.facts)
    original = pipe.generate
    pipe.generate = lambda p, on_step=None: original("big" if p is params else p, on_step)
    try:
        slot.generate(params)
    finally:
        pipe.generate = original


def test_other_errors_pass_through_unchanged_and_release_nothing():
    script = Script({"a": 10})
    res = script.residency(max_on_device=1, ram_budget=100)
    res.adopt(facts("a"), OomPipe("a", ValueError("out of memory, but not torch's: a ValueError")))
    with pytest.raises(ValueError):
        _generate_big(ServedSlot(facts("a"), res), object())
    assert script.calls == []


def test_without_a_device_reading_the_message_still_names_size_and_model():
    from pointillist.protocol.errors import ErrorCode, JobRejected
    from types import SimpleNamespace

    script = Script({"a": 10})
    res = script.residency(max_on_device=1, ram_budget=100)
    res.adopt(facts("a"), OomPipe("a", OutOfMemoryError("Tried to allocate 1.12 GiB")))
    with pytest.raises(JobRejected) as e:
        _generate_big(ServedSlot(facts("a"), res), SimpleNamespace(width=64, height=64))
    assert e.value.code is ErrorCode.OUT_OF_MEMORY
    assert e.value.message.startswith("64x64 with model m-a ran out of device memory (memory released)")


def test_the_real_torch_error_is_recognised():
    torch = pytest.importorskip("torch")
    from pointillist.node.residency import is_out_of_memory

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert not is_out_of_memory(RuntimeError("expected all tensors to be on the same device"))
