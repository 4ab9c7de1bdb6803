"""Signed provenance for generated images: statement, signing, PNG embedding, verification.

Specification: docs/attestation.md. Importing this package never imports torch, diffusers,
transformers, libp2p or trio, so ``pointillist verify`` starts fast.
"""

from .a1111 import a1111_parameters
from .pixels import PixelSubject, pixel_subject, rgb8_bytes, to_rgb8
from .png import (
    ATTESTATION_KEYWORD,
    JOB_KEYWORD,
    PARAMETERS_KEYWORD,
    PngContents,
    Provenance,
    embed_provenance,
    extract_provenance,
    read_png,
)
from .sign import attest
from .statement import (
    ATTESTATION_PAYLOAD_TYPE,
    LIBRARY_NAMES,
    MODEL_DIGEST_ALGORITHM,
    PREDICATE_TYPE,
    PREDICATE_TYPE_V2,
    PREDICATE_TYPE_V3,
    PREDICATE_TYPES,
    STATEMENT_TYPE,
    GenerationRecord,
    Statement,
    build_statement,
    parse_statement,
    rfc3339_utc,
)
from .trajectory import Trajectory, TrajectoryCommitment
from .verify import CHECK_NAMES, Check, VerificationReport, verify_attestation, verify_image

__all__ = [
    "ATTESTATION_KEYWORD",
    "ATTESTATION_PAYLOAD_TYPE",
    "CHECK_NAMES",
    "JOB_KEYWORD",
    "LIBRARY_NAMES",
    "MODEL_DIGEST_ALGORITHM",
    "PARAMETERS_KEYWORD",
    "PREDICATE_TYPE",
    "PREDICATE_TYPE_V2",
    "PREDICATE_TYPE_V3",
    "PREDICATE_TYPES",
    "STATEMENT_TYPE",
    "Check",
    "GenerationRecord",
    "PixelSubject",
    "PngContents",
    "Provenance",
    "Statement",
    "Trajectory",
    "TrajectoryCommitment",
    "VerificationReport",
    "a1111_parameters",
    "attest",
    "build_statement",
    "embed_provenance",
    "extract_provenance",
    "parse_statement",
    "pixel_subject",
    "read_png",
    "rgb8_bytes",
    "rfc3339_utc",
    "to_rgb8",
    "verify_attestation",
    "verify_image",
]
