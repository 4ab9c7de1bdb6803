"""Verifying an attested image: the steps of docs/attestation.md, section "Verification".

Two entry points:

* ``verify_attestation(envelope, image)`` returns the ``Statement`` or raises
  ``VerificationError``: for code that only needs a yes or no.
* ``verify_image(png_bytes, ...)`` never raises for bad input; it returns a
  ``VerificationReport`` with one ``Check`` per line the CLI prints, in the order of
  ``CHECK_NAMES``. A check whose premise failed is skipped (``ok is None``) with the reason.

Pure code: bytes and values in, values out; no clock is needed (freshness is the node's
business when it accepts a job, not a property of the finished image).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from PIL import Image

from pointillist.protocol.dsse import Envelope
from pointillist.protocol.errors import RemoteError, UsageError, VerificationError
from pointillist.protocol.jobs import JobRequest, open_job

from .pixels import PixelSubject, pixel_subject
from .a1111 import a1111_parameters
from .png import PngContents, _envelope_or_none, read_png
from .statement import (
    ATTESTATION_PAYLOAD_TYPE,
    MODEL_DIGEST_ALGORITHM,
    GenerationRecord,
    Statement,
    parse_statement,
)

CHECK_NAMES = ("attestation", "signature", "pixels", "model", "node", "job binding", "parameters")
#: Shortest hex prefix of a model digest accepted by ``expect_model`` (A1111's "Model hash" length).
MIN_DIGEST_PREFIX = 10


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: skipped, not applicable or its premise failed
    detail: str  # one line, control characters escaped


@dataclass(frozen=True)
class VerificationReport:
    """The checks in ``CHECK_NAMES`` order.

    ``statement`` is set only when the signature check passed, ``job`` only when the job
    binding check passed: whatever is exposed here has been verified.
    """

    checks: tuple[Check, ...]
    statement: Statement | None
    job: JobRequest | None

    @property
    def ok(self) -> bool:
        """True when the signature holds and no check failed (skipped checks do not count)."""
        return self.check("signature").ok is True and all(c.ok is not False for c in self.checks)

    def check(self, name: str) -> Check:
        for check in self.checks:
            if check.name == name:
                return check
        raise UsageError(f"no check named {name!r}; checks are {', '.join(CHECK_NAMES)}")

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "statement": self.statement.to_json_dict() if self.statement is not None else None,
            "job": self.job.to_json_dict() if self.job is not None else None,
        }


def verify_attestation(envelope: Envelope, image: Image.Image) -> Statement:
    """The statement of ``envelope`` if it is a valid attestation of ``image``'s pixels.

    Checks, in order: payload type, Ed25519 signature over the PAE by ``keyid``, statement
    schema, signer == ``predicate.node``, subject size and pixel sha256. Raises
    ``VerificationError`` (``SignatureError`` for the signature) naming the first failure.
    The job binding needs the job envelope: use ``verify_image`` for the whole check.
    """
    if not isinstance(envelope, Envelope) or not isinstance(image, Image.Image):
        raise UsageError("verify_attestation takes an Envelope and a PIL image")
    payload = envelope.verify(ATTESTATION_PAYLOAD_TYPE)
    statement = parse_statement(payload)
    if envelope.keyid != statement.record.node:
        raise VerificationError(_wrong_signer(envelope.keyid, statement.record.node))
    problem = _pixel_mismatch(statement.subject, pixel_subject(image))
    if problem:
        raise VerificationError(problem)
    return statement


def verify_image(
    png_bytes: bytes, *, expect_node: str | None = None, expect_model: str | None = None
) -> VerificationReport:
    """Run every check on a PNG; never raises for bad input (only ``UsageError`` for bad arguments).

    ``expect_node``: the peer ID that must have signed. ``expect_model``: a model name, or its
    ``pointillist-model-v1`` digest in full or as a prefix of at least 10 hex digits.
    """
    if not isinstance(png_bytes, (bytes, bytearray, memoryview)):
        raise UsageError(f"verify_image takes bytes, not {type(png_bytes).__name__}")
    for what, value in (("expect_node", expect_node), ("expect_model", expect_model)):
        if value is not None and not isinstance(value, str):
            raise UsageError(f"{what} must be a string")

    checks: list[Check] = []

    def finish(reason: str, statement: Statement | None = None) -> VerificationReport:
        checks.extend(_check(name, None, reason) for name in CHECK_NAMES[len(checks):])
        return VerificationReport(tuple(checks), statement, None)

    # 1. attestation: present, a DSSE envelope of our type, carrying a valid statement.
    try:
        contents = read_png(png_bytes)
    except VerificationError as exc:
        checks.append(_check("attestation", False, str(exc)))
        return finish("needs a readable PNG")
    check, envelope, statement = _attestation_check(contents)
    checks.append(check)
    if envelope is None or statement is None:
        return finish("needs a readable attestation")

    # 2. signature: valid over the PAE by keyid, and keyid is the node the statement names.
    check = _signature_check(envelope, statement)
    checks.append(check)
    if not check.ok:
        return finish("needs a valid signature")
    record, signer = statement.record, envelope.keyid

    checks.append(_pixels_check(contents, statement.subject))  # 3.
    checks.append(_model_check(record, expect_model))  # 4.
    checks.append(_node_check(signer, expect_node))  # 5.
    check, job = _job_check(contents.job, record, signer)  # 6.
    checks.append(check)
    checks.append(_parameters_check(contents.parameters, record))  # 7.
    return VerificationReport(tuple(checks), statement, job)


# --- the checks ----------------------------------------------------------------------------------


def _attestation_check(contents: PngContents) -> tuple[Check, Envelope | None, Statement | None]:
    if contents.attestation is None:
        reason = "no attestation in this PNG (not from Pointillist, or re-encoded without its text chunks)"
        return _check("attestation", False, reason), None, None
    try:
        envelope = _envelope_or_none(contents.attestation, "attestation")
        assert envelope is not None
        if envelope.payload_type != ATTESTATION_PAYLOAD_TYPE:
            raise VerificationError(
                f"payload type is {envelope.payload_type!r}, expected {ATTESTATION_PAYLOAD_TYPE!r}"
            )
        statement = parse_statement(envelope.payload)
    except VerificationError as exc:
        return _check("attestation", False, str(exc)), None, None
    detail = f"in-toto statement, predicate {statement.record.predicate_type}"
    trajectory = statement.record.trajectory
    if trajectory is not None:  # v3: the root is checked only by an audit (issue 11), not here
        detail += f", {trajectory.steps} denoising steps committed (root {trajectory.root[:16]}...)"
    return _check("attestation", True, detail), envelope, statement


def _signature_check(envelope: Envelope, statement: Statement) -> Check:
    try:
        envelope.verify(ATTESTATION_PAYLOAD_TYPE)
    except VerificationError as exc:
        return _check("signature", False, str(exc))
    if envelope.keyid != statement.record.node:
        return _check("signature", False, _wrong_signer(envelope.keyid, statement.record.node))
    return _check("signature", True, f"Ed25519 signature by node {envelope.keyid}")


def _pixels_check(contents: PngContents, signed: PixelSubject) -> Check:
    if contents.image is None:
        return _check("pixels", False, contents.pixel_error or "no pixels")
    actual = pixel_subject(contents.image)  # cannot fail: read_png already made it RGB8
    problem = _pixel_mismatch(signed, actual)
    if problem:
        return _check("pixels", False, problem)
    return _check("pixels", True, f"{actual.name} sha256 {actual.sha256}")


def _model_check(record: GenerationRecord, expect_model: str | None) -> Check:
    described = f"{record.model_name} ({MODEL_DIGEST_ALGORITHM}:{record.model_digest})"
    if expect_model is None:
        return _check("model", True, described)
    if expect_model == record.model_name or _digest_matches(expect_model, record.model_digest):
        return _check("model", True, f"{described}, as expected")
    return _check("model", False, f"{described}, expected {expect_model}")


def _node_check(signer: str, expect_node: str | None) -> Check:
    if expect_node is None:
        return _check("node", None, "no expected node given")
    if signer != expect_node:
        return _check("node", False, f"signed by {signer}, expected {expect_node}")
    return _check("node", True, f"signed by the expected node {signer}")


def _job_check(job_text: str | None, record: GenerationRecord, signer: str) -> tuple[Check, JobRequest | None]:
    if job_text is None:
        # Our nodes always embed the job; without it nothing shows that a requester asked for this.
        return _check("job binding", False, "no job embedded (Pointillist nodes always embed the signed job)"), None
    try:
        envelope = _envelope_or_none(job_text, "job")
        assert envelope is not None
        signed = open_job(envelope)
    except (VerificationError, RemoteError) as exc:
        return _check("job binding", False, f"job envelope: {exc}"), None
    job = signed.request
    differ = []
    if signed.requester != record.requester:
        differ.append("requester")
    if hashlib.sha256(envelope.payload).hexdigest() != record.request_sha256:
        differ.append("requestSha256")
    if job.job_id != record.job_id:
        differ.append("id")
    if job.node != signer:
        differ.append("node")
    if job.model not in (record.model_name, record.model_digest, f"{MODEL_DIGEST_ALGORITHM}:{record.model_digest}"):
        differ.append("model")
    if job.settings != record.settings:  # as a whole: a setting added later is compared too
        differ.extend(job.settings.differing(record.settings))
    if differ:
        detail = f"the job signed by {signed.requester} differs from the attestation in {', '.join(differ)}"
        return _check("job binding", False, detail), None
    return _check("job binding", True, f"job {job.job_id} signed by requester {signed.requester}"), job


def _parameters_check(parameters: str | None, record: GenerationRecord) -> Check:
    if parameters is None:
        return _check("parameters", None, "no A1111 parameters text")
    expected = a1111_parameters(record)
    if expected is None:
        detail = "A1111 parameters text present, but A1111 readers would misread the signed prompt; nodes write none"
        return _check("parameters", False, detail)
    if parameters != expected:
        return _check("parameters", False, "A1111 parameters text was edited: it differs from the signed statement")
    return _check("parameters", True, "A1111 parameters text matches the signed statement")


# --- helpers -------------------------------------------------------------------------------------


def _pixel_mismatch(signed: PixelSubject, actual: PixelSubject) -> str | None:
    if (signed.width, signed.height) != (actual.width, actual.height):
        return f"image is {actual.width}x{actual.height}, the attestation is for {signed.name}"
    if signed.sha256 != actual.sha256:
        return f"pixel sha256 {actual.sha256} differs from the signed {signed.sha256}"
    return None


def _wrong_signer(keyid: str, node: str) -> str:
    return f"signed by {keyid}, but the statement names node {node}"


def _digest_matches(expected: str, digest: str) -> bool:
    text = expected.strip().lower()
    prefix = MODEL_DIGEST_ALGORITHM + ":"
    if text.startswith(prefix):
        text = text[len(prefix):]
    return len(text) >= MIN_DIGEST_PREFIX and all(c in "0123456789abcdef" for c in text) and digest.startswith(text)


def _check(name: str, ok: bool | None, detail: str) -> Check:
    # Details quote attacker-controlled text (model names, keyids): no newlines, no escape codes.
    safe = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in detail)
    return Check(name, ok, safe)


def verified_generation(png_bytes: bytes) -> tuple[Statement, Envelope, Image.Image]:
    """The statement, its envelope and the RGB8 pixels of a PNG that verifies, for code that acts
    on an image (audits); ``VerificationError`` naming the first failed check otherwise."""
    report = verify_image(png_bytes)
    if not report.ok or report.statement is None:
        failed = next((c for c in report.checks if c.ok is False), None)
        raise VerificationError(f"{failed.name}: {failed.detail}" if failed else "the image does not verify")
    contents = read_png(png_bytes)
    assert contents.attestation is not None and contents.image is not None  # the checks above passed
    return report.statement, Envelope.from_json(contents.attestation), contents.image
