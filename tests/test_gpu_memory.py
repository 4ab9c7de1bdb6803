"""GPU memory (issue 8, item 4): the fit estimate (node/memory_fit.py), the admission refusal of a
job that would not fit, the record's ``maxSide`` and refreshed free VRAM, and a node process
whose pipeline runs out of memory: the job fails with ``out-of-memory``, the node keeps serving."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import pytest
import trio

from pointillist.node.admission import Admission
from pointillist.node.advertise import Advertiser
from pointillist.node.memory_fit import (
    FAMILY_BYTES_PER_PIXEL,
    FAMILY_WEIGHT_BYTES,
    MARGIN,
    MemoryFit,
    estimate_for,
    measure_fit,
)
from pointillist.node.limits import NodeLimits
from pointillist.node.policy import Policy
from pointillist.node.service import ServedModels
from pointillist.protocol.capacity import Device, Speed
from pointillist.protocol.errors import ErrorCode, JobRejected
from pointillist.protocol.identity import Identity
from pointillist.protocol.jobs import new_job_request, sign_job
from support import REPO, NodeHandle, run_cli

GIB = 2**30
NOW = 1_763_780_000


def fit_for(max_pixels: int) -> MemoryFit:
    """A fit whose room is exactly ``max_pixels`` pixels."""
    return MemoryFit(budget=GIB + int(max_pixels * 100 * MARGIN) + 1, weights=GIB, per_pixel=100, source="test")


def test_the_fit_is_linear_in_pixels_with_a_margin_and_a_square_side_of_eight():
    fit = MemoryFit(budget=10 * GIB, weights=2 * GIB, per_pixel=2000.0, source="test")
    assert fit.max_pixels() == int(8 * GIB / (2000 * MARGIN))  # 3.4 Mpx
    side = fit.max_side()
    assert side % 8 == 0 and side * side <= fit.max_pixels() < (side + 8) ** 2
    assert fit.fits(side, side) and not fit.fits(side + 8, side + 8)
    assert fit.fits(2 * side, side // 2)  # pixels decide, not the longer side
    with pytest.raises(JobRejected) as e:
        fit.check(side + 8, side + 8, "sd-1.5")
    assert e.value.code is ErrorCode.INVALID_PARAMS
    assert "would not fit this GPU's memory" in e.value.message and "sd-1.5" in e.value.message
    assert MemoryFit(budget=GIB, weights=2 * GIB, per_pixel=1.0, source="t").max_pixels() == 0


def test_the_h100_figures_put_sd15_and_sdxl_where_they_were_measured():
    # docs/benchmarks.md: SD-1.5 at 512² peaked 676 MiB above its weights, SDXL at 1024² 5,136 MiB.
    assert FAMILY_BYTES_PER_PIXEL["sd15"] * 512 * 512 == pytest.approx(676 * 2**20)
    assert FAMILY_BYTES_PER_PIXEL["sdxl"] * 1024 * 1024 == pytest.approx(5136 * 2**20)
    # The small card of that section: SD-1.5 under a 6 GiB cap fitted 1536² once and never 2048²;
    # the estimate (linear, with margin) stays below both.
    card = MemoryFit(budget=6 * GIB, weights=2191 * 2**20, per_pixel=FAMILY_BYTES_PER_PIXEL["sd15"], source="t")
    assert 512 <= card.max_side() < 1536


def test_a_model_not_loaded_yet_is_estimated_from_its_family_calibrated_by_the_measured_one():
    measured = MemoryFit(budget=24 * GIB, weights=2 * GIB, per_pixel=FAMILY_BYTES_PER_PIXEL["sd15"] * 1.5,
                         source="measured")
    sdxl = estimate_for("sdxl", measured, "sd15")
    assert sdxl.per_pixel == pytest.approx(FAMILY_BYTES_PER_PIXEL["sdxl"] * 1.5)
    assert sdxl.weights == FAMILY_WEIGHT_BYTES["sdxl"] and sdxl.budget == measured.budget
    assert estimate_for("sdxl", measured, "sd15", dtype_bytes=4).weights == 2 * FAMILY_WEIGHT_BYTES["sdxl"]
    unknown = estimate_for(None, measured, "sd15")
    assert (unknown.per_pixel, unknown.weights) == (measured.per_pixel, measured.weights)
    uncalibrated = estimate_for("sdxl", measured, None)  # the measured model's family is unknown
    assert uncalibrated.per_pixel == pytest.approx(FAMILY_BYTES_PER_PIXEL["sdxl"])


def test_there_is_no_estimate_off_cuda():
    pytest.importorskip("torch")
    assert measure_fit(SimpleNamespace(device="cpu", name="tiny"), dict) is None
    assert measure_fit(SimpleNamespace(device="mps", name="tiny"), dict) is None


def test_admission_refuses_a_job_that_would_not_fit_and_admits_one_that_does():
    node, requester = Identity.generate(), Identity.generate()
    model = SimpleNamespace(name="tiny-sd", digest="cd" * 32, memory_fit=fit_for(512 * 512))
    admission = Admission(node.peer_id, ServedModels([model]), Policy(limits=NodeLimits()))

    def signed(width: int, height: int):
        return sign_job(requester, new_job_request(node=node.peer_id, model="tiny-sd", prompt="a fox", seed=1,
                                                   steps=4, guidance=7.5, width=width, height=height, now=NOW))

    with pytest.raises(JobRejected) as e:
        admission.admit(signed(512, 520), now=NOW, queue_depth=0, shutting_down=False)
    assert e.value.code is ErrorCode.INVALID_PARAMS
    assert "512x520 would not fit this GPU's memory with model tiny-sd" in e.value.message
    assert admission.admit(signed(512, 512), now=NOW, queue_depth=0, shutting_down=False)
    assert admission.admit(signed(1024, 256), now=NOW, queue_depth=0, shutting_down=False)


def advertiser(models, device_now=None) -> Advertiser:
    network = SimpleNamespace(peer_id=Identity.generate().peer_id, clock=lambda: float(NOW))
    service = SimpleNamespace(limits=NodeLimits(), queue_depth=0, shutting_down=False)
    ad = Advertiser(network, service, models, Device(kind="cuda", name="GPU", vramTotal=80 * GIB, vramFree=70 * GIB),
                    Speed(stepsPerS=10.0, refWidth=256, refHeight=256), max_side=2048,
                    pipeline_names={}, device_now=device_now)
    ad._addrs = lambda: []
    return ad


def test_the_record_advertises_each_models_max_side_under_the_operators():
    models = [SimpleNamespace(name="small", digest="aa" * 32, family="sd15", warm=True, memory_fit=fit_for(800 * 800)),
              SimpleNamespace(name="roomy", digest="bb" * 32, family="sd15", warm=True, memory_fit=fit_for(4096 ** 2)),
              SimpleNamespace(name="cpu-ish", digest="cc" * 32, family=None, warm=True)]
    record = advertiser(models).build()
    assert [m.max_side for m in record.models] == [800, 2048, 2048]


def test_free_vram_is_read_again_off_the_trio_loop_before_each_publication():
    import threading

    readings = iter([40, 30])
    threads = []

    def device_now() -> Device:
        threads.append(threading.current_thread())
        return Device(kind="cuda", name="GPU", vramTotal=80 * GIB, vramFree=next(readings) * GIB)

    ad = advertiser([SimpleNamespace(name="m", digest="aa" * 32, family=None, warm=True)], device_now)
    assert ad.build().device.vram_free == 70 * GIB  # as measured at start

    async def refresh_twice() -> list[int]:
        seen = []
        for _ in range(2):
            await ad.refresh_device()
            seen.append(ad.build().device.vram_free)
        await ad.refresh_device()  # the reading fails (exhausted): the last one stays
        seen.append(ad.build().device.vram_free)
        return seen

    assert trio.run(refresh_twice) == [40 * GIB, 30 * GIB, 30 * GIB]
    assert threading.main_thread() not in threads


# --- a node process whose pipeline runs out of memory ---------------------------------------------

def oom_node(home, extra_args: list[str]) -> NodeHandle:
    """A node started through tests/oom_node.py instead of ``python -m pointillist.cli``."""
    return NodeHandle(home, extra_args, launcher=[sys.executable, str(REPO / "tests" / "oom_node.py")])


@pytest.mark.integration
def test_a_job_that_runs_out_of_memory_fails_with_out_of_memory_and_the_node_serves_the_next(tmp_path):
    node = oom_node(tmp_path / "node", [])
    try:
        node.wait_ready()
        requester = tmp_path / "requester"
        failed = run_cli(["submit", "--peer", node.addr, "please oom now", "--steps", "2", "--size", "64x64",
                          "--out", str(tmp_path / "oom.png")], requester)
        assert failed.returncode != 0
        error_lines = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
        assert len(error_lines) == 1 and "out-of-memory" in error_lines[0], failed.stderr
        assert "64x64" in error_lines[0] and "ran out of device memory" in error_lines[0], failed.stderr
        assert not (tmp_path / "oom.png").exists()
        assert node.alive()

        deadline = time.monotonic() + 30  # the job's end reaches the status a moment after the error
        while (status := node.status())["jobs"]["failedByCode"].get("out-of-memory") != 1:
            assert time.monotonic() < deadline, status["jobs"]
            time.sleep(0.2)
        assert status["jobs"]["failed"] == 1 and status["current"] is None
        assert any(e["code"] == "out-of-memory" for e in status["recentErrors"])

        out = tmp_path / "next.png"
        done = run_cli(["submit", "--peer", node.addr, "a harbour at dawn", "--steps", "2", "--size", "64x64",
                        "--out", str(out)], requester)
        assert done.returncode == 0 and "verified" in done.stderr, done.stderr
        assert run_cli(["verify", str(out)], requester).returncode == 0
        assert node.status()["jobs"]["served"] == 1
        assert node.alive() and "Traceback" not in node.log()
    finally:
        node.stop()


class FakeCuda:
    """torch.cuda's memory readings, scripted: 24 GiB card, 2 GiB of weights, a probe peaking at
    ``peak`` (or raising ``torch.OutOfMemoryError`` when ``peak`` is None)."""

    def __init__(self, peak: int | None) -> None:
        self.peak, self.calls = peak, []

    def install(self, monkeypatch, torch) -> None:
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "synchronize", lambda device=None: None)
        monkeypatch.setattr(cuda, "empty_cache", lambda: self.calls.append("empty_cache"))
        monkeypatch.setattr(cuda, "memory_allocated", lambda device=None: 2 * GIB)
        monkeypatch.setattr(cuda, "memory_reserved", lambda device=None: 2 * GIB + 100)
        monkeypatch.setattr(cuda, "mem_get_info", lambda device=None: (21 * GIB, 24 * GIB))
        monkeypatch.setattr(cuda, "reset_peak_memory_stats", lambda device=None: self.calls.append("reset"))
        monkeypatch.setattr(cuda, "max_memory_allocated", lambda device=None: self.peak)

    def model(self, torch, family="sd15", native_side=512):
        def generate(params, on_step=None):
            self.calls.append(("generate", params["width"], params["height"], params["steps"]))
            if self.peak is None:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return SimpleNamespace(device="cuda:0", name="sd", family=family, native_side=native_side, generate=generate)


def test_the_measurement_is_one_step_at_the_native_side_minus_the_weights(monkeypatch):
    torch = pytest.importorskip("torch")
    cuda = FakeCuda(peak=2 * GIB + 512 * 512 * 3000)
    cuda.install(monkeypatch, torch)
    fit = measure_fit(cuda.model(torch), dict)
    assert cuda.calls[:3] == ["empty_cache", "reset", ("generate", 512, 512, 1)]
    assert (fit.budget, fit.weights, fit.per_pixel) == (23 * GIB + 100, 2 * GIB, 3000)
    assert fit.source == "measured at 512²" and fit.max_side() >= 1024


def test_a_probe_that_runs_out_of_memory_falls_back_to_the_family_table(monkeypatch):
    torch = pytest.importorskip("torch")
    cuda = FakeCuda(peak=None)
    cuda.install(monkeypatch, torch)
    fit = measure_fit(cuda.model(torch, family="sdxl", native_side=1024), dict)
    assert ("generate", 1024, 1024, 1) in cuda.calls and cuda.calls[-1] == "empty_cache"
    assert fit.per_pixel == FAMILY_BYTES_PER_PIXEL["sdxl"] and "probe failed" in fit.source
