"""The step audit (issue 11, item 3): check chosen steps of an attested generation against the
node's step commitments, in process. docs/audit.md explains each check and its threshold.

A version 3 attestation commits to every denoising step with one Merkle root
(``record.trajectory``; docs/attestation.md, section 10). The auditor picks steps at random
(``choose_steps``: step 1 always, which binds the seed), asks the node for the leaves it needs
(``leaves_needed``) with inclusion proofs, and calls ``audit``:

1. the model's digest must be the attested one, the pipeline one this module knows
   (``StableDiffusionPipeline``), the scheduler rebuildable: else ``unauditable``;
2. every opened leaf must be in the committed tree (its RFC 9162 proof against the root) and
   decode as the leaf of its index: else ``fail`` naming the leaf;
3. ``step-count``: the commitment's step count is the attested scheduler's for the attested
   ``steps``; every opened tensor has the attested dtype and latent shape
   (1, C, height/8, width/8); each committed timestep is the schedule's;
4. ``seed-binding``: leaf 0 is, bit for bit, the initial latent the attested seed gives (the
   seeded CPU generator's draw, times the scheduler's ``init_noise_sigma``, as ``prepare_latents``);
5. for each challenged step k: ``unet`` recomputes eps_k from leaf k-1's latent, t_k, the prompts
   and guidance (classifier-free guidance as the pipeline runs it) and measures
   ``||eps' - eps|| / ||eps||``; ``scheduler`` replays the scheduler's arithmetic on committed values
   (for multistep schedulers from earlier committed leaves) and measures
   ``||x_k' - x_k|| / ||x_k - x_{k-1}||``; stochastic samplers' scheduler part is unauditable
   (their noise is not committed);
6. ``vae``: the last latent decoded as the pipeline decodes it gives the image's RGB8 pixels
   (the re-run tolerance of ``node/reproduce.py``).

The verdict is ``fail`` at the first failing check, ``unauditable`` when a precondition is missing
(the model, a needed leaf) or a figure beyond its threshold was measured outside the conditions
the thresholds were calibrated on (cpu/float32 on both sides: ``CALIBRATED_CONDITIONS``), else
``pass`` (with the parts that could not be checked listed under ``unchecked``). Every check carries its measured figure, so the verdict prints (``describe``)
and serialises (``to_json_dict``).

Imports torch: only audit code imports this module, never ``verify``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..attestation.pixels import to_rgb8
from ..attestation.statement import GenerationRecord
from ..attestation.trajectory import StepLeaf, Trajectory, decode_leaf, leaf_hash, verify_inclusion
from ..protocol.errors import VerificationError, one_line
from . import samplers
from .audit_result import (  # noqa: F401  (re-exported: the audit's result types and thresholds)
    CALIBRATED_CONDITIONS, FAIL, MAX_EPS_REL_ERROR, MAX_STEP_REL_ERROR, PASS, UNAUDITABLE, AuditVerdict, Check,
    thresholds_json,
)
from .audit_plan import (  # noqa: F401  (re-exported: what an audit asks for)
    _HISTORY, SINGLE_STEP_SCHEDULERS, STOCHASTIC_SCHEDULERS, AuditError, choose_steps, history_start,
    is_stochastic as _stochastic, leaves_needed,
)
from .reproduce import MAX_ABS_DIFF, MAX_MEAN_ABS_DIFF, compare_pixels, within_tolerance
from .step_commitments import tensor_bytes, to_tensor

#: Schedulers whose ``step`` keeps no state between calls (no step index): any step starts a replay.
_STATELESS_SCHEDULERS = frozenset({"DDIMScheduler"})
#: Pipelines whose denoising loop this module mirrors.
SUPPORTED_PIPELINES = frozenset({"StableDiffusionPipeline"})


@dataclass(frozen=True)
class OpenedLeaf:
    """A leaf as a node opens it: its bytes and its RFC 9162 inclusion proof."""

    data: bytes
    proof: tuple[bytes, ...]


# --- what to ask for ---------------------------------------------------------------------------------


def open_leaves(trajectory: Trajectory, indices: Sequence[int]) -> dict[int, OpenedLeaf]:
    """What an honest node answers: each leaf with its inclusion proof."""
    return {i: OpenedLeaf(trajectory.leaves[i], tuple(trajectory.proof(i))) for i in indices}


# --- the audit -----------------------------------------------------------------------------------------


def _rel(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> float:
    """``||a - b|| / ||scale||`` in float64; inf when the scale is 0 and a != b, 0 when a == b."""
    diff = float(torch.linalg.vector_norm((a.double() - b.double()).reshape(-1)))
    norm = float(torch.linalg.vector_norm(scale.double().reshape(-1)))
    if diff == 0:
        return 0.0
    return math.inf if norm == 0 or not math.isfinite(norm) else (diff / norm if math.isfinite(diff) else math.inf)


def _device_type(device: str) -> str:
    return str(device).split(":")[0]


class _Audit:
    def __init__(self, model: Any, record: GenerationRecord, image: Image.Image,
                 opened: Mapping[int, OpenedLeaf | tuple[bytes, Sequence[bytes]]], steps: Sequence[int] | None) -> None:
        self.model, self.record, self.image = model, record, image
        self.raw = {int(i): (v if isinstance(v, OpenedLeaf) else OpenedLeaf(bytes(v[0]), tuple(v[1])))
                    for i, v in opened.items()}
        self.requested = steps
        self.checks: list[Check] = []
        self._scheduler: Any = None
        self.leaves: dict[int, StepLeaf] = {}
        self.pipe = model.pipe
        self.device = model.device
        # The thresholds were calibrated on CPU float32 only (docs/audit.md); a figure beyond them
        # fails a node only when it and this audit both ran there. Elsewhere (another device type
        # or dtype on either side, a GPU's float16 floor) it accuses no one, as ``reproduce.judge``.
        self.same_conditions = (_device_type(record.device) == _device_type(model.device)
                                and record.dtype == model.dtype
                                and (_device_type(model.device), model.dtype) in CALIBRATED_CONDITIONS)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def beyond(self, name: str, step: int | None, measure: str, value: float, threshold: float, detail: str,
               **figures: Any) -> Check:
        """A figure beyond its threshold: fail on the attested conditions, else unauditable."""
        if self.same_conditions:
            return self.add(Check(name, FAIL, detail, step, measure, value, threshold, figures))
        why = (f"{detail}; but the node ran on {self.record.device}/{self.record.dtype} and this audit on "
               f"{self.model.device}/{self.model.dtype}: the threshold is calibrated for cpu/float32 runs on both "
               f"sides only")
        return self.add(Check(name, UNAUDITABLE, why, step, measure, value, threshold, figures))

    def verdict(self, steps: Sequence[int]) -> AuditVerdict:
        failed = next((c for c in self.checks if c.status == FAIL), None)
        if failed is not None:
            where = f" step {failed.step}" if failed.step is not None else ""
            return AuditVerdict(FAIL, f"fail: {failed.name}{where}: {failed.detail}", tuple(self.checks), tuple(steps))
        # Unauditable as a whole: no model, a leaf not opened, or a figure beyond its threshold
        # measured under conditions other than the attested ones (``beyond``).
        blocking = [c for c in self.checks
                    if c.status == UNAUDITABLE and (c.name in ("model", "leaves") or c.value is not None)]
        if blocking:
            return AuditVerdict(UNAUDITABLE, f"unauditable: {blocking[0].detail}", tuple(self.checks), tuple(steps))
        unchecked = [c for c in self.checks if c.status == UNAUDITABLE]
        passed = sum(c.status == PASS for c in self.checks)
        detail = f"pass: {passed} checks passed (steps {', '.join(map(str, steps)) or 'none'})"
        if unchecked:
            detail += "; not checked: " + "; ".join(
                f"{c.name}{' step ' + str(c.step) if c.step is not None else ''} ({c.detail})" for c in unchecked)
        return AuditVerdict(PASS, detail, tuple(self.checks), tuple(steps))

    # -- preconditions

    def check_model(self) -> bool:
        r, pipe = self.record, self.pipe
        if r.trajectory is None:
            self.add(Check("model", UNAUDITABLE, "the attestation has no step commitments (predicate before v3)"))
            return False
        if r.model_digest != self.model.digest:
            self.add(Check("model", UNAUDITABLE, f"the model given has digest {self.model.digest[:16]}…, "
                                                 f"the image was attested with {r.model_digest[:16]}…"))
            return False
        if r.pipeline != type(pipe).__name__ or r.pipeline not in SUPPORTED_PIPELINES:
            self.add(Check("model", UNAUDITABLE, f"pipeline {r.pipeline} (model loads {type(pipe).__name__}); "
                                                 f"the audit mirrors {', '.join(sorted(SUPPORTED_PIPELINES))} only"))
            return False
        if r.scheduler_config is None:
            self.add(Check("model", UNAUDITABLE, "no scheduler config attested"))
            return False
        try:
            self.new_scheduler()
        except Exception as exc:  # noqa: BLE001 - any failure to rebuild makes it unauditable
            why = f"cannot rebuild {r.scheduler}: {type(exc).__name__}: {one_line(exc)}"
            self.add(Check("model", UNAUDITABLE, why))
            return False
        self.add(Check("model", PASS, f"digest {r.model_digest[:16]}…, {r.pipeline}, {r.scheduler} rebuilt"))
        return True

    def new_scheduler(self) -> Any:
        """The attested scheduler after ``set_timesteps``, as the run's was before its first step:
        built once (``from_config`` costs as much as a tiny UNet call), a fresh copy each time."""
        if self._scheduler is None:
            scheduler = samplers.rebuild_scheduler(self.record.scheduler, self.record.scheduler_config)
            scheduler.set_timesteps(self.record.settings.steps, device=self.device)
            self._scheduler = scheduler
        return copy.deepcopy(self._scheduler)

    def check_proofs(self) -> bool:
        t = self.record.trajectory
        root = bytes.fromhex(t.root)
        ok = True
        for i in sorted(self.raw):
            leaf = self.raw[i]
            if not verify_inclusion(i, t.leaves, leaf_hash(leaf.data), list(leaf.proof), root):
                self.add(Check("proof", FAIL, f"leaf {i}'s inclusion proof does not lead to the committed root "
                                              f"{t.root[:16]}…", i))
                ok = False
                continue
            try:
                self.leaves[i] = decode_leaf(leaf.data, i)
            except VerificationError as exc:
                self.add(Check("proof", FAIL, f"leaf {i} is in the tree but does not decode: {one_line(exc)}", i))
                ok = False
        if ok:
            self.add(Check("proof", PASS, f"{len(self.raw)} leaves ({', '.join(map(str, sorted(self.raw)))}) "
                                          f"proven against root {t.root[:16]}…"))
        return ok

    def check_shapes(self, scheduler: Any) -> bool:
        r = self.record
        s = r.settings
        n = r.trajectory.steps
        expected_n = len(scheduler.timesteps)
        if n != expected_n:
            self.add(Check("step-count", FAIL, f"the commitment has {n} steps; {r.scheduler} runs {expected_n} for "
                                               f"the attested {s.steps} steps", None, "steps", float(n),
                                               float(expected_n)))
            return False
        if (s.width, s.height) != self.image.size:
            self.add(Check("step-count", FAIL, f"the image is {self.image.width}x{self.image.height}, attested "
                                               f"{s.width}x{s.height}"))
            return False
        factor = getattr(self.pipe, "vae_scale_factor", 8)
        shape = (1, self.pipe.unet.config.in_channels, s.height // factor, s.width // factor)
        timesteps = scheduler.timesteps.cpu()
        for i, leaf in sorted(self.leaves.items()):
            tensors = [("latent", leaf.latent)] + ([("model output", leaf.model_output)] if i else [])
            for what, tb in tensors:
                if tb.shape != shape or tb.dtype != r.dtype:
                    self.add(Check("step-count", FAIL, f"leaf {i}'s {what} is {tb.dtype} {list(tb.shape)}, "
                                                       f"the attested run gives {r.dtype} {list(shape)}", i))
                    return False
            if i:
                t = to_tensor(leaf.timestep)
                if t.numel() != 1 or float(t) != float(timesteps[i - 1]):
                    self.add(Check("step-count", FAIL, f"leaf {i}'s timestep is {t.tolist()}, the attested schedule's "
                                                       f"step {i} is {timesteps[i - 1].item()}", i))
                    return False
        self.add(Check("step-count", PASS, f"{n} steps as {r.scheduler} runs {s.steps}; tensors {r.dtype} "
                                           f"{list(shape)}; committed timesteps are the schedule's"))
        return True

    # -- the checks

    def check_seed(self, scheduler: Any) -> None:
        from diffusers.utils.torch_utils import randn_tensor

        leaf = self.leaves.get(0)
        if leaf is None:
            self.add(Check("leaves", UNAUDITABLE, "leaf 0 (x_T) was not opened", 0))
            return
        committed = to_tensor(leaf.latent)
        generator = torch.Generator(device="cpu").manual_seed(self.record.settings.seed)
        # prepare_latents: randn_tensor (drawn on the CPU generator) on the pipeline's device and
        # dtype, times init_noise_sigma of the scheduler after set_timesteps.
        drawn = randn_tensor(tuple(committed.shape), generator=generator, device=torch.device(self.device),
                             dtype=committed.dtype)
        expected = (drawn * scheduler.init_noise_sigma).cpu()
        differing = int((expected != committed).sum())
        if tensor_bytes(expected) == leaf.latent:
            self.add(Check("seed-binding", PASS, f"leaf 0 is bit for bit the initial latent of seed "
                                                 f"{self.record.settings.seed}", 0, "differing elements", 0.0, 0.0))
        else:
            max_abs = float((expected.double() - committed.double()).abs().max())
            self.add(Check("seed-binding", FAIL, f"leaf 0 is not the initial latent of seed "
                                                 f"{self.record.settings.seed}: {differing} of {committed.numel()} "
                                                 f"elements differ (max {max_abs:.3g})", 0, "differing elements",
                           float(differing), 0.0, {"maxAbsDiff": max_abs}))

    def prompt_embeds(self) -> tuple[torch.Tensor, bool]:
        s, pipe = self.record.settings, self.pipe
        cfg = float(s.guidance) > 1 and pipe.unet.config.time_cond_proj_dim is None
        positive, negative = pipe.encode_prompt(s.prompt, torch.device(self.device), 1, cfg, s.negative_prompt)
        return (torch.cat([negative, positive]) if cfg else positive), cfg

    def check_unet(self, k: int, embeds: torch.Tensor, cfg: bool) -> None:
        before, leaf = self.leaves.get(k - 1), self.leaves.get(k)
        if before is None or leaf is None:
            missing = k - 1 if before is None else k
            self.add(Check("leaves", UNAUDITABLE, f"leaf {missing} was not opened, needed for step {k}", k))
            return
        pipe, guidance = self.pipe, float(self.record.settings.guidance)
        dtype = pipe.unet.dtype
        scheduler = self.new_scheduler()
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(k - 1)  # scale_model_input at step index k - 1, as in the run
        latents = to_tensor(before.latent, self.device).to(dtype)
        t = to_tensor(leaf.timestep, self.device)
        latent_model_input = torch.cat([latents] * 2) if cfg else latents
        latent_model_input = scheduler.scale_model_input(latent_model_input, t)
        noise_pred = pipe.unet(latent_model_input, t, encoder_hidden_states=embeds, timestep_cond=None,
                               return_dict=False)[0]
        if cfg:
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + guidance * (noise_pred_text - noise_pred_uncond)
        committed = to_tensor(leaf.model_output)
        recomputed = noise_pred.cpu()
        value = _rel(recomputed, committed, committed)
        exact = tensor_bytes(recomputed) == leaf.model_output
        figures = {"bitExact": exact, "epsNorm": float(torch.linalg.vector_norm(committed.double().reshape(-1)))}
        if value <= MAX_EPS_REL_ERROR:
            how = "bit for bit" if exact else f"relative error {value:.3g}"
            self.add(Check("unet", PASS, f"eps recomputed {how} (threshold {MAX_EPS_REL_ERROR:g})", k,
                           "eps relative error", value, MAX_EPS_REL_ERROR, figures))
        else:
            self.beyond("unet", k, "eps relative error", value, MAX_EPS_REL_ERROR,
                        f"the committed eps is not the model's: relative error {value:.3g} > {MAX_EPS_REL_ERROR:g}",
                        **figures)

    def check_scheduler(self, k: int) -> None:
        r = self.record
        config = r.scheduler_config or {}
        if _stochastic(r.scheduler, config):
            self.add(Check("scheduler", UNAUDITABLE, f"{r.scheduler} adds noise inside step, which is not committed",
                           k))
            return
        start = history_start(r.scheduler, config, k)
        if start is None:
            self.add(Check("scheduler", UNAUDITABLE, f"no audit rule for {r.scheduler}'s step", k))
            return
        missing = [i for i in range(start - 1, k + 1) if i not in self.leaves]
        if missing:
            self.add(Check("scheduler", UNAUDITABLE, f"{r.scheduler}'s step {k} needs leaves {start - 1}..{k}; "
                                                     f"not opened: {', '.join(map(str, missing))}", k))
            return
        scheduler = self.new_scheduler()
        if start > 1:
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(start - 1)  # its step index, as after steps 1..start-1
            elif r.scheduler not in _STATELESS_SCHEDULERS:
                self.add(Check("scheduler", UNAUDITABLE, f"{r.scheduler} cannot start a replay at step {start}", k))
                return
        out = None
        for i in range(start, k + 1):
            leaf = self.leaves[i]
            sample = to_tensor(self.leaves[i - 1].latent, self.device)
            out = scheduler.step(to_tensor(leaf.model_output, self.device), to_tensor(leaf.timestep, self.device),
                                 sample, return_dict=False)[0]
        committed, before = to_tensor(self.leaves[k].latent), to_tensor(self.leaves[k - 1].latent)
        recomputed = out.cpu()
        value = _rel(recomputed, committed, committed.double() - before.double())
        exact = tensor_bytes(recomputed) == self.leaves[k].latent
        figures = {"bitExact": exact, "replayedFrom": start}
        if value <= MAX_STEP_REL_ERROR:
            how = "bit for bit" if exact else f"relative error {value:.3g}"
            self.add(Check("scheduler", PASS, f"x_{k} recomputed {how} from committed values"
                                              + (f" (replayed from step {start})" if start < k else ""), k,
                           "step relative error", value, MAX_STEP_REL_ERROR, figures))
        else:
            self.add(Check("scheduler", FAIL, f"the committed latent is not {r.scheduler}'s step from the committed "
                                              f"eps: relative error {value:.3g} > {MAX_STEP_REL_ERROR:g}", k,
                           "step relative error", value, MAX_STEP_REL_ERROR, figures))

    def check_vae(self) -> None:
        n = self.record.trajectory.steps
        leaf = self.leaves.get(n)
        if leaf is None:
            self.add(Check("leaves", UNAUDITABLE, f"leaf {n} (the last latent) was not opened", n))
            return
        pipe = self.pipe
        latents = to_tensor(leaf.latent, self.device).to(pipe.vae.dtype)
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        pil = pipe.image_processor.postprocess(decoded, output_type="pil", do_denormalize=[True])[0].convert("RGB")
        difference = compare_pixels(pil, self.image)
        figures = difference.to_json_dict()
        if within_tolerance(difference):
            self.add(Check("vae", PASS, f"leaf {n} decodes to the image: {difference.describe()}", n,
                           "mean abs level difference", difference.mean_abs, MAX_MEAN_ABS_DIFF, figures))
        else:
            self.beyond("vae", n, "mean abs level difference", difference.mean_abs, MAX_MEAN_ABS_DIFF,
                        f"leaf {n} does not decode to the image: {difference.describe()} (tolerance mean <= "
                        f"{MAX_MEAN_ABS_DIFF}, max <= {MAX_ABS_DIFF} levels)", **figures)

    def run(self) -> AuditVerdict:
        if not self.check_model():
            return self.verdict(())
        n = self.record.trajectory.steps
        if self.requested is None:
            steps = sorted(k for k in self.raw if k >= 1 and k - 1 in self.raw)
        else:
            steps = sorted(set(int(k) for k in self.requested))
            bad = [k for k in steps if not 1 <= k <= n]
            if bad:
                raise AuditError(f"steps {bad} are not in 1..{n}")
        if not self.check_proofs():
            return self.verdict(steps)
        with torch.inference_mode():
            scheduler = self.new_scheduler()
            if not self.check_shapes(scheduler):
                return self.verdict(steps)
            self.check_seed(scheduler)
            if self.checks[-1].status == FAIL:
                return self.verdict(steps)
            if steps:
                embeds, cfg = self.prompt_embeds()
            for k in steps:
                self.check_unet(k, embeds, cfg)
                if self.checks[-1].status == FAIL:
                    return self.verdict(steps)
                self.check_scheduler(k)
                if self.checks[-1].status == FAIL:
                    return self.verdict(steps)
            self.check_vae()
        return self.verdict(steps)


def audit(model: Any, record: GenerationRecord, image: Image.Image,
          opened: Mapping[int, OpenedLeaf | tuple[bytes, Sequence[bytes]]],
          steps: Sequence[int] | None = None) -> AuditVerdict:
    """Audit ``steps`` (default: every k whose leaves k and k-1 were opened) of the generation
    ``record`` describes, with ``model`` (a ``LoadedModel``), against ``image`` (the PNG's pixels)
    and the ``opened`` leaves (index -> ``OpenedLeaf`` or ``(bytes, proof)``). Stops at the first
    failing check. Runs the model under its generation lock, so it never overlaps a ``generate``."""
    rgb = to_rgb8(image)
    runner = _Audit(model, record, rgb, opened, steps)
    lock = getattr(model, "_lock", None)
    if lock is None:
        return runner.run()
    with lock:
        return runner.run()
