"""``pointillist audit IMAGE --model PATH``: check that the node that signed IMAGE ran the
generation it attests, by recomputing a few of its committed steps (issue 11, docs/audit.md).

The image must verify and carry step commitments (predicate generation/v3). Once the node has
committed (the root is signed), the steps to challenge are drawn at random: step 1 always (it
binds the seed to the model's first output), ``--steps`` more, and the last latent against the
image's pixels through the VAE. The node opens those leaves over ``/pointillist/audit/1.0.0``
with their Merkle proofs (requester/audit_client.py); node/audit_check.py recomputes them with the
model. Verdict: pass (exit 0), fail (exit 1, with the step and the figure), unauditable (exit 3:
why). Within the challenge window a node that does not open its leaves fails. A failure writes an
evidence file that anyone with the model re-checks: ``pointillist audit --evidence FILE --model
PATH``; either outcome goes into this requester's reputation of the node (``pointillist
reputation``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

EVIDENCE_FORMAT = "pointillist-audit-evidence-v1"
EXIT_UNAUDITABLE = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", type=Path, nargs="?", help="PNG written by pointillist (attestation version 3)")
    p.add_argument("--model", type=Path, metavar="PATH",
                   help="recompute here with the attested model: a diffusers folder or a single-file checkpoint "
                        "(without it, another node serving the model recomputes: --auditor, or one found "
                        "through --bootstrap / config.toml)")
    p.add_argument("--auditor", metavar="MULTIADDR",
                   help="the node to recompute the steps, instead of --model (default: a node found through "
                        "the bootstrap peers that serves the attested model, not the one that signed)")
    p.add_argument("--bootstrap", action="append", default=[], metavar="MULTIADDR",
                   help="peers to find an auditor through (repeatable; default: bootstrap in config.toml)")
    p.add_argument("--model-config", type=Path, metavar="DIR|FAMILY", help="config for a single-file checkpoint")
    p.add_argument("--peer", metavar="MULTIADDR", help="the node's address (default: from your journal of jobs)")
    p.add_argument("--steps", type=int, default=2, metavar="K",
                   help="steps to challenge besides step 1, drawn at random (default 2)")
    p.add_argument("--evidence", type=Path, metavar="FILE", help="re-check an evidence file instead of an image")
    p.add_argument("--evidence-out", type=Path, metavar="FILE",
                   help="where a failed audit writes its evidence (default: IMAGE.audit-evidence.json)")
    p.add_argument("--device", default="cpu", help="where to recompute (default cpu)")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")


def run(args: argparse.Namespace) -> int:
    from ..protocol.errors import UsageError

    if (args.image is None) == (args.evidence is None):
        raise UsageError("give an IMAGE to audit, or --evidence FILE to re-check")
    if not 0 <= args.steps <= 62:
        raise UsageError("--steps takes 0 to 62")
    if args.model is not None and args.auditor is not None:
        raise UsageError("give --model PATH to recompute here, or --auditor MULTIADDR for another node to; not both")
    if args.evidence is not None:
        if args.model is None:
            raise UsageError("re-checking evidence needs --model PATH: the point is to recompute it yourself")
        return _recheck(args)
    return _audit(args)


# ---- the audit ------------------------------------------------------------------------------


def _verified(png: bytes, source: str):
    """The verified statement, its envelope and the image's pixels; ``UsageError`` if it does not
    verify."""
    from ..attestation.verify import verified_generation
    from ..protocol.errors import UsageError, VerificationError

    try:
        return verified_generation(png)
    except VerificationError as exc:
        raise UsageError(f"{source} does not verify ({exc}); run `pointillist verify`") from None


def _audit(args: argparse.Namespace) -> int:
    from .config import load_config

    verdict, evidence = audit_image(args.image, args.model, peer=args.peer, steps=args.steps,
                                    evidence_out=args.evidence_out, device=args.device,
                                    model_config=args.model_config, auditor=args.auditor,
                                    bootstrap=args.bootstrap or load_config().bootstrap)
    return _report(args, verdict, evidence)


def audit_image(image_path: Path, model: Path | None, *, peer: str | None = None, steps: int = 2,
                evidence_out: Path | None = None, device: str = "cpu", model_config: Path | None = None,
                auditor: str | None = None, bootstrap: list[str] = ()):
    """Audit the image at ``image_path`` (see the module docstring): ``(verdict, evidence file or
    None)``. With ``model`` the steps are recomputed here; without, by ``auditor`` or by a node
    found through ``bootstrap`` that serves the attested model (a remote audit: its signed
    verdict). Records the outcome in the reputation; ``UsageError`` for what the user must fix.
    Also called by ``submit --audit-share``."""
    from ..node.audit_plan import AuditError, choose_steps, leaves_needed
    from ..protocol.errors import UsageError

    try:
        png = image_path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {image_path}: {exc.strerror}") from None
    statement, envelope, image = _verified(png, str(image_path))
    record = statement.record
    if record.trajectory is None:
        return _unauditable("the attestation has no step commitments (made before version 3)"), None
    if model is not None:
        model_problem = _model_problem(model, record)
        if model_problem:
            return _unauditable(model_problem), None
    elif auditor is None and not bootstrap:
        raise UsageError("give --model PATH to recompute the steps here, or --auditor MULTIADDR (or bootstrap "
                         "peers: --bootstrap / config.toml) for a node serving the model to recompute them")
    address = peer or _journal_address(record.job_id)
    if address is None:
        raise UsageError(f"job {record.job_id} is not in your journal of jobs: give --peer <the node's address>")
    from ..network.host import parse_peer_addr

    if str(parse_peer_addr(address).peer_id) != record.node:  # only the signer's silence counts against it
        raise UsageError(f"{address} is not the node that signed the image ({record.node})")

    challenged = choose_steps(record.trajectory.steps, steps)  # after the commitment: unpredictable
    try:
        indices = leaves_needed(record, challenged)
    except AuditError as exc:
        return _unauditable(str(exc)), None
    remote = None
    if model is None:
        from ..requester.audit_job_client import Audited

        audited = Audited(png, hashlib.sha256(envelope.payload).hexdigest(), statement.subject.sha256,
                          record.trajectory.root, record.model_digest, record.node)
        opened, unanswered, remote = _open(address, record, indices, audited, challenged, auditor, bootstrap)
    else:
        opened, unanswered, _ = _open(address, record, indices)
    if unanswered is not None:
        age = time.time() - _unix(record.created_at)
        from ..protocol.audit import MIN_CHALLENGE_WINDOW_S

        if age > MIN_CHALLENGE_WINDOW_S:
            return _unauditable(f"{unanswered} (the image is {age / 3600:.1f} h old, past the "
                                f"{MIN_CHALLENGE_WINDOW_S // 3600} h challenge window)"), None
        verdict = _no_answer(unanswered, challenged)
    elif remote is not None:
        from ..node.audit_result import AuditVerdict

        verdict = AuditVerdict.from_signed(remote.record, remote.envelope)
    else:
        verdict = _recompute(model, device, model_config, record, image,
                             {i: (o.leaf, o.proof) for i, o in opened.items()}, challenged)
    if verdict.ok is False:
        evidence = evidence_out or image_path.with_name(image_path.name + ".audit-evidence.json")
        _write_evidence(evidence, png, record, challenged, opened, verdict, unanswered,
                        remote.envelope if remote is not None else None)
        _remember(record.node, False, verdict.detail, evidence)
        return verdict, evidence
    if verdict.ok:
        _remember(record.node, True)
    return verdict, None


def _model_problem(model: Path, record) -> str | None:
    from ..node.model_digest import model_digest
    from ..protocol.errors import ModelError

    try:
        digest = model_digest(model)
    except ModelError as exc:
        return f"cannot read the model: {exc}"
    if digest != record.model_digest:
        return f"the model at {model} has digest {digest}, the image was attested with {record.model_digest}"
    return None


def _journal_address(job_id: str) -> str | None:
    from ..protocol.keyfile import data_dir
    from ..requester.journal import Journal

    entry = Journal(data_dir() / "jobs.jsonl").find(job_id)
    return entry.addr if entry is not None else None


def _open(address: str, record, indices: list[int], audited=None, challenged: list[int] = (),
          auditor: str | None = None, bootstrap: list[str] = ()):
    """Ask the signing node for the leaves: ``(opened, None, remote)`` or ``(None, why it did not
    answer, None)``. With ``audited`` (a remote audit), then hand them to an auditor (``auditor``,
    or up to three found through ``bootstrap``): ``remote`` is its checked, signed verdict."""
    from ..protocol.errors import TransportError, UsageError
    from ..requester.audit_client import Unanswered, open_leaves
    from .interrupt import run_trio

    async def ask(host, auditors):
        try:
            opened = (await open_leaves(host, address, record.job_id, record.trajectory, indices)).leaves
        except Unanswered as exc:
            return None, str(exc), None
        if audited is None:
            return opened, None, None
        return opened, None, await _remote_verdict(host, await auditors(), audited, challenged, opened)

    async def run():  # errors are returned, not raised: the host's nursery would wrap them in a group
        try:
            if audited is None or auditor is not None:
                from ..network.host import running_host

                async def given():
                    return [auditor] if auditor else []

                async with running_host(_identity()) as host:
                    return await ask(host, given)
            from ..network.host import DEFAULT_LISTEN
            from ..network.overlay import open_network
            from ..requester.discovery import Discovery

            async with open_network(_identity(), [DEFAULT_LISTEN], serve_dht=False) as net:
                discovery = Discovery(net, list(bootstrap))
                return await ask(net.host, lambda: _find_auditors(discovery, record, len(challenged)))
        except (TransportError, UsageError) as exc:
            return exc, None, None

    outcome = run_trio(run, interrupted=lambda: "audit interrupted")
    if isinstance(outcome[0], UsageError):
        raise outcome[0]
    if isinstance(outcome[0], TransportError):
        # Unreachable is not a refusal: a home GPU may be off. Try again later.
        raise UsageError(f"cannot reach the node at {address}: {outcome[0]}; try again while it is online")
    return outcome


def _identity():
    from ..protocol.keyfile import default_key_path, load_or_create_identity

    return load_or_create_identity(default_key_path())[0]  # audit jobs are signed as the requester's


async def _find_auditors(discovery, record, steps: int) -> list[str]:
    """Up to three nodes serving the attested model, not the signer, not distrusted, best first."""
    from ..protocol.keyfile import data_dir
    from ..requester.reputation import Reputation

    await discovery.join(30.0)
    await discovery.wait_for_model(record.model_digest)
    distrusted = Reputation.load(data_dir()).distrusted()
    ranked = await discovery.candidates(record.model_digest, steps, record.settings.width, record.settings.height,
                                        distrusted=distrusted)
    return [c.address.addr for c in ranked if c.peer_id != record.node and c.address is not None][:3]


async def _remote_verdict(host, auditors: list[str], audited, challenged: list[int], opened: dict):
    """The first valid verdict of ``auditors``; ``UsageError`` listing why none gave one."""
    from ..protocol.errors import UsageError
    from ..requester.audit_job_client import AuditorFailed, remote_audit

    if not auditors:
        raise UsageError(f"no node other than the signer serves model {audited.model_digest[:12]}: "
                         f"audit with --model PATH, or name one with --auditor")
    problems = []
    for addr in auditors:
        try:
            return await remote_audit(host, _identity(), addr, audited, list(challenged),
                                      [opened[i] for i in sorted(opened)])
        except AuditorFailed as exc:
            problems.append(f"{addr}: {exc}")
    raise UsageError("no auditor gave a verdict: " + "; ".join(problems))


_loaded: dict[tuple, Any] = {}  # (path, device, dtype, config) -> LoadedModel: submit audits several images


def _recompute(model_path: Path, device: str, model_config: Path | None, record, image, opened: dict,
               steps: list[int]):
    import torch

    from ..node.audit_check import audit
    from ..node.loading import load_model
    from ..node.reproduce import run_dtype, run_threads
    from ..protocol.errors import ModelError

    torch.set_num_threads(run_threads(record.torch_threads))  # as the node, where this machine can
    key = (str(model_path), device, run_dtype(record.dtype, device), model_config)
    try:
        if key not in _loaded:
            _loaded[key] = load_model(model_path, device=device, dtype=key[2], config=model_config)
    except ModelError as exc:
        return _unauditable(f"cannot load the model: {exc}")
    return audit(_loaded[key], record, image, opened, steps)


def _unauditable(why: str):
    from ..node.audit_result import UNAUDITABLE, AuditVerdict

    return AuditVerdict(UNAUDITABLE, f"unauditable: {why}", ())


def _no_answer(why: str, steps: list[int]):
    from ..node.audit_result import FAIL, AuditVerdict, Check

    return AuditVerdict(FAIL, f"fail: the node did not open the challenged leaves: {why}",
                        (Check("answer", FAIL, why),), tuple(steps))


def _unix(created_at: str) -> float:
    import calendar

    return calendar.timegm(time.strptime(created_at, "%Y-%m-%dT%H:%M:%SZ"))


# ---- evidence --------------------------------------------------------------------------------


def _write_evidence(path: Path, png: bytes, record, steps, opened, verdict, unanswered: str | None,
                    auditor_verdict=None) -> None:
    from ..protocol.errors import UsageError

    b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
    doc = {
        "format": EVIDENCE_FORMAT,
        "node": record.node,
        "jobId": record.job_id,
        "root": record.trajectory.root,
        "image": b64(png),  # the attestation and the job travel inside it
        "challengedSteps": list(steps),
        "leaves": {str(i): {"leaf": b64(o.leaf), "proof": [b64(h) for h in o.proof]}
                   for i, o in sorted((opened or {}).items())},
        "unanswered": unanswered,
        "verdict": verdict.to_json_dict(),
        # A remote audit: the auditor's signed verdict (DSSE, predicate audit/v1), as it came.
        "auditorVerdict": auditor_verdict.to_json_dict() if auditor_verdict is not None else None,
        "auditedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        path.write_text(json.dumps(doc, indent=1))
    except OSError as exc:
        raise UsageError(f"cannot write the evidence file {path}: {exc.strerror}") from None


def _recheck(args: argparse.Namespace) -> int:
    """Re-run the recomputation an evidence file records, with our own model, and say whether the
    node fails it. Leaves are accepted only with proofs to the node's signed root."""
    from ..attestation.trajectory import leaf_hash, verify_inclusion
    from ..protocol.errors import UsageError

    try:
        doc = json.loads(args.evidence.read_text())
        if doc.get("format") != EVIDENCE_FORMAT:
            raise ValueError(f"not a {EVIDENCE_FORMAT} file")
        png = base64.b64decode(doc["image"], validate=True)
        steps = [int(k) for k in doc["challengedSteps"]]
        leaves = {int(i): (base64.b64decode(v["leaf"], validate=True),
                           tuple(base64.b64decode(h, validate=True) for h in v["proof"]))
                  for i, v in doc["leaves"].items()}
        claimed = doc["verdict"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"cannot read the evidence file {args.evidence}: {exc}") from None
    statement, _, image = _verified(png, f"the image in {args.evidence}")
    record = statement.record
    if doc.get("auditorVerdict"):
        print(_auditor_line(doc["auditorVerdict"], statement), file=sys.stderr)
    if record.trajectory is None:
        raise UsageError(f"the image in {args.evidence} has no step commitments")
    if doc.get("unanswered"):
        return _report(args, _unauditable(f"the evidence records that the node did not answer "
                                          f"({doc['unanswered']}): that cannot be re-checked offline"))
    root = bytes.fromhex(record.trajectory.root)
    for i, (leaf, proof) in leaves.items():
        if not verify_inclusion(i, record.trajectory.leaves, leaf_hash(leaf), proof, root):
            print(f"the evidence does not hold: leaf {i} is not the node's (its proof does not lead to the "
                  f"signed root)", file=sys.stderr)
            return 0
    model_problem = _model_problem(args.model, record)
    if model_problem:
        return _report(args, _unauditable(model_problem))
    verdict = _recompute(args.model, args.device, args.model_config, record, image, leaves, steps)
    if verdict.ok is False:
        if claimed.get("verdict") != "fail":
            print("note: the file itself did not claim a failure", file=sys.stderr)
        print(f"the evidence holds: node {record.node} fails the re-check", file=sys.stderr)
        return _report(args, verdict)
    print(f"the evidence does not hold: re-computed here, node {record.node} "
          f"{'passes' if verdict.ok else 'cannot be judged'} (the file claims: {claimed.get('detail')})",
          file=sys.stderr)
    return _report(args, verdict)


def _auditor_line(verdict_json: Any, statement) -> str:
    """What the evidence's remote auditor signed, once its signature and subject are checked."""
    from ..attestation.audit_verdict import open_verdict
    from ..protocol.dsse import Envelope
    from ..protocol.errors import VerificationError

    try:
        record = open_verdict(Envelope.from_json_dict(verdict_json))
    except VerificationError as exc:
        return f"the evidence's auditor verdict does not verify ({exc}); ignored"
    if record.subject.sha256 != statement.subject.sha256:
        return "the evidence's auditor verdict is about other pixels; ignored"
    return f"node {record.auditor} signed this verdict at {record.created_at}: {record.detail}"


# ---- output ----------------------------------------------------------------------------------


def _remember(node: str, passed: bool, reason: str = "", evidence: Path | None = None) -> None:
    from ..protocol.keyfile import data_dir
    from ..requester.reputation import Outcome, record_outcomes

    outcome = Outcome(node, passed, "audit", reason, str(evidence.resolve()) if evidence else None)
    warning = record_outcomes(data_dir(), [outcome], time.time())
    if warning:
        print(warning, file=sys.stderr)


def _report(args: argparse.Namespace, verdict, evidence: Path | None = None) -> int:
    if args.json:
        out: dict[str, Any] = verdict.to_json_dict()
        if evidence is not None:
            out["evidence"] = str(evidence)
        print(json.dumps(out, indent=2))
    else:
        print(verdict.describe())
        if evidence is not None:
            print(f"evidence: {evidence} (re-check: pointillist audit --evidence {evidence} --model PATH)")
    return {True: 0, False: 1, None: EXIT_UNAUDITABLE}[verdict.ok]
