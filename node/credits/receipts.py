"""Credits, the pure rules: signed receipts, the credit formula and balances from evidence.

Every unit of credit rests on a **receipt** that two different peers signed:

* a *job receipt*: the worker (earner) claims it ran ``job_id`` for the submitter
  (payer) for ``seconds`` on ``device_class`` and got the output whose sha256 is
  ``result_hash``; the submitter countersigns once it has fetched the output and
  checked the hash (and, for a replicated job, that the replicas agree);
* a *storage receipt*: the data owner (payer) vouches that the holder (earner)
  kept ``bytes_held`` of its shares through one hour-long ``epoch`` and passed the
  audits listed in it (nonce, range, digest); the holder countersigns.

A receipt travels as a signed envelope of :mod:`poolai.mesh.envelope`, like a capacity
advert, with two roles (:data:`EARNER`, :data:`PAYER`)::

    credits.receipt { body: bytes, earner_key: bytes[32], earner_sig: bytes[64],
                      payer_key: bytes[32], payer_sig: bytes[64] }

``body`` is the msgpack of a :class:`JobClaim` or :class:`StorageClaim`; each
signature is Ed25519 over a role's domain string + ``body``; each key must be the
one the named peer id is derived from. A receipt counts only when both signatures
hold and earner and payer differ, so no peer can mint credit alone.

**Dedup.** ``receipt_id`` = sha256(body) names one envelope (a replay of it is the
same id). ``claim_key`` names what is being paid for: (kind, payer, job id or epoch,
earner). Among verified receipts with one claim key exactly one counts: the
smallest credit, then the smallest receipt id. So re-sending, re-encoding or
re-signing a claim adds nothing, and every node that holds the same receipts
computes the same balances, whatever order they arrived in (:mod:`poolai.node.credits.balances`).

**Formula** (integer millicredits, so sums are exact and order-free; 1 credit =
one second of the reference GPU, an A100): job credit = seconds × weight, the GPU
weight read from :data:`GPU_WEIGHTS` by device class, CPU-seconds at
:data:`CPU_WEIGHT`; storage credit = GiB held × 1 hour × :data:`STORAGE_MILLI_PER_GIB_HOUR`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from poolai.mesh import wire
from poolai.mesh.envelope import Role, SealRejected, SigningKey, peer_id_from_public_key
from poolai.mesh.errors import ProtocolError, Rejected, SchemaError

RECEIPT_VERSION = 1
MAX_RECEIPT = 4096  # a whole envelope, checked before anything is unpacked
MAX_BODY = MAX_RECEIPT - 256  # keys, signatures, tags and length prefixes
KEY_LEN = 32
SIG_LEN = 64
HASH_LEN = 32
MAX_PEER_ID = 128
MAX_JOB_SECONDS = 24 * 3600.0  # one job runs at most a day (jobspec.MAX_TIMEOUT_S)
EPOCH_S = 3600  # a storage receipt covers one hour
MAX_AUDITS = 16
MAX_AUDIT_LENGTH = 1 << 20
MAX_BYTES_HELD = 1 << 50  # 1 PiB per owner-holder pair and hour
MAX_TIME = float(1 << 36)

EARNER_DOMAIN = b"poolai/credits/receipt/earner/1\x00"
PAYER_DOMAIN = b"poolai/credits/receipt/payer/1\x00"
CLAIM_DOMAIN = b"poolai/credits/claim/1\x00"
EARNER = Role("earner", EARNER_DOMAIN)
PAYER = Role("payer", PAYER_DOMAIN)

# ----------------------------------------------------------------------------- formula

MILLI = 1000  # millicredits per credit
# Relative speed per device class: dense BF16 (FP16 before Ampere) tensor throughput from
# the vendor's data sheet, divided by the A100's 312 TFLOP/s. Matched against the GPU name
# NVML reports, first pattern wins (so "A100" is tried before "A10", "L40S" before "L40").
GPU_WEIGHTS: tuple[tuple[str, float], ...] = (
    (r"\bH200\b", 3.17),  # 989 TFLOP/s
    (r"\bH100\b.*\bPCIe\b", 2.42),  # 756
    (r"\bH100\b", 3.17),  # 989 (SXM, NVL)
    (r"\bA100\b", 1.0),  # 312
    (r"\bL40S\b", 1.16),  # 362
    (r"\bL40\b", 0.58),  # 181
    (r"\bA40\b", 0.48),  # 150
    (r"\bA10G?\b", 0.40),  # 125
    (r"\bV100\b", 0.40),  # 125
    (r"\bL4\b", 0.39),  # 121
    (r"\bT4\b", 0.21),  # 65
)
UNKNOWN_GPU_WEIGHT = 0.2  # a class not in the table is paid like the slowest card in it
CPU_WEIGHT = 0.015  # per CPU-second: a core-hour costs ~1.5% of a reference GPU-hour
STORAGE_MILLI_PER_GIB_HOUR = 40  # 0.04 credit: a GiB-hour costs ~4% of a reference GPU-second
GIB = 1 << 30
_PATTERNS = tuple((re.compile(p, re.IGNORECASE), w) for p, w in GPU_WEIGHTS)


def device_weight(device: str, device_class: str) -> float:
    """Credits per second of ``device`` ("gpu" or "cpu") of ``device_class`` (an NVML name)."""
    if device == "cpu":
        return CPU_WEIGHT
    for pattern, weight in _PATTERNS:
        if pattern.search(device_class):
            return weight
    return UNKNOWN_GPU_WEIGHT


def device_of(described: str) -> tuple[str, str]:
    """(device, device class) from a worker's device text, e.g. ``"cuda:0 (NVIDIA H100 …)"``."""
    match = re.fullmatch(r"cuda:\d+ \((.{1,96})\)", described.strip())
    if match:
        return "gpu", match.group(1)
    return "cpu", "cpu"


# ----------------------------------------------------------------------------- schemas


@wire.message("credits.job")
class JobClaim:
    """What a worker claims for one finished job (the body of a job receipt)."""

    version: int = wire.field(min=RECEIPT_VERSION, max=RECEIPT_VERSION)
    job_id: str = wire.field(max_len=64)
    worker: str = wire.field(max_len=MAX_PEER_ID)
    submitter: str = wire.field(max_len=MAX_PEER_ID)
    device: str = wire.field(max_len=8)  # "gpu" or "cpu"
    device_class: str = wire.field(max_len=96)  # the GPU's NVML name, or "cpu"
    seconds: float = wire.field(min=0.0, max=MAX_JOB_SECONDS)  # GPU-seconds or CPU-seconds
    result_hash: bytes = wire.field(max_len=HASH_LEN)  # sha256 of the output file
    finished_at: float = wire.field(min=0.0, max=MAX_TIME)  # unix seconds at the worker


@wire.message("credits.audit")
class AuditEvidence:
    """One passed audit: the owner's nonce, the share range and the holder's digest."""

    share_id: bytes = wire.field(max_len=HASH_LEN)
    offset: int = wire.field(min=0, max=1 << 32)
    length: int = wire.field(min=1, max=MAX_AUDIT_LENGTH)
    nonce: bytes = wire.field(max_len=HASH_LEN)
    digest: bytes = wire.field(max_len=HASH_LEN)  # integrity.audit_digest(nonce, range)
    at: float = wire.field(min=0.0, max=MAX_TIME)


@wire.message("credits.storage")
class StorageClaim:
    """What a data owner vouches for: ``holder`` kept its shares through one epoch."""

    version: int = wire.field(min=RECEIPT_VERSION, max=RECEIPT_VERSION)
    owner: str = wire.field(max_len=MAX_PEER_ID)
    holder: str = wire.field(max_len=MAX_PEER_ID)
    epoch: int = wire.field(min=0, max=int(MAX_TIME) // EPOCH_S)  # unix hour
    bytes_held: int = wire.field(min=1, max=MAX_BYTES_HELD)
    shares: int = wire.field(min=1, max=1 << 20)
    audits: tuple[AuditEvidence, ...] = wire.field(max_len=MAX_AUDITS)


@wire.message("credits.receipt")
class Receipt:
    """The signed envelope; a signature not yet given is ``b""``."""

    body: bytes = wire.field(max_len=MAX_BODY)
    earner_key: bytes = wire.field(max_len=KEY_LEN)
    earner_sig: bytes = wire.field(max_len=SIG_LEN)
    payer_key: bytes = wire.field(max_len=KEY_LEN)
    payer_sig: bytes = wire.field(max_len=SIG_LEN)


Claim = JobClaim | StorageClaim
REASONS = ("oversize", "malformed", "unknown_field", "schema", "version", "bad_key", "bad_signature",
           "key_mismatch", "unsigned", "self_signed", "invalid_claim")


class ReceiptRejected(Rejected, reasons=REASONS):
    """A receipt failed a check; ``reason`` is one of :data:`REASONS`."""


@dataclass(frozen=True, slots=True)
class Checked:
    """A receipt that passed :func:`check_receipt`; ``complete`` once both parties signed."""

    raw: bytes
    receipt: Receipt
    claim: Claim
    receipt_id: bytes
    claim_key: bytes
    credit: int  # millicredits
    complete: bool

    @property
    def kind(self) -> str:
        return "job" if isinstance(self.claim, JobClaim) else "storage"

    @property
    def earner(self) -> str:
        return earner_of(self.claim)

    @property
    def payer(self) -> str:
        return payer_of(self.claim)


def earner_of(claim: Claim) -> str:
    return claim.worker if isinstance(claim, JobClaim) else claim.holder


def payer_of(claim: Claim) -> str:
    return claim.submitter if isinstance(claim, JobClaim) else claim.owner


def credit_of(claim: Claim) -> int:
    """The claim's worth in millicredits (the documented formula)."""
    if isinstance(claim, JobClaim):
        return round(claim.seconds * device_weight(claim.device, claim.device_class) * MILLI)
    return claim.bytes_held * STORAGE_MILLI_PER_GIB_HOUR // GIB


def claim_key_of(claim: Claim) -> bytes:
    """What one payment is for: at most one receipt per key counts."""
    if isinstance(claim, JobClaim):
        return job_claim_key(claim.submitter, claim.job_id, claim.worker)
    return _key("storage", claim.owner, str(claim.epoch), claim.holder)


def job_claim_key(submitter: str, job_id: str, worker: str) -> bytes:
    """The claim key of ``worker``'s receipt for ``submitter``'s job ``job_id``."""
    return _key("job", submitter, job_id, worker)


def _key(*parts: str) -> bytes:
    return hashlib.sha256(CLAIM_DOMAIN + "\x00".join(parts).encode()).digest()


# ----------------------------------------------------------------------------- sign and check


def start_receipt(claim: Claim, key: SigningKey) -> bytes:
    """A new envelope for ``claim`` carrying ``key``'s signature (earner or payer role).

    Raises ValueError when ``key`` is neither party, the parties are the same peer,
    or the claim breaks a rule a receiver would reject it for.
    """
    body = wire.encode(claim)
    if len(body) > MAX_BODY:
        raise ValueError(f"claim of {len(body)} bytes exceeds {MAX_BODY}")
    _check_claim(claim)
    empty = Receipt(body, b"", b"", b"", b"")
    return add_signature(wire.encode(empty), key)


def add_signature(data: bytes, key: SigningKey) -> bytes:
    """``data`` (an envelope) with ``key``'s signature added in its role; ValueError if no role."""
    checked = _check(data, need=0)
    receipt, claim = checked.receipt, checked.claim
    if key.peer_id != peer_id_from_public_key(key.public_key):
        raise ValueError("signing key does not belong to its peer id")
    if key.peer_id == earner_of(claim):
        receipt = Receipt(receipt.body, key.public_key, EARNER.sign(receipt.body, key),
                          receipt.payer_key, receipt.payer_sig)
    elif key.peer_id == payer_of(claim):
        receipt = Receipt(receipt.body, receipt.earner_key, receipt.earner_sig,
                          key.public_key, PAYER.sign(receipt.body, key))
    else:
        raise ValueError(f"{key.peer_id} is not a party to this receipt")
    return wire.encode(receipt)


def check_receipt(data: bytes, *, complete: bool = True) -> Checked:
    """Verify an envelope: both signatures with ``complete``, else at least one.

    Every signature present must hold and belong to the peer its role names. Checks
    run cheapest first; the body is unpacked only after the envelope's sizes hold.
    Raises :class:`ReceiptRejected`.
    """
    return _check(data, need=2 if complete else 1)


def parties_of(data: bytes) -> tuple[str, str]:
    """(earner, payer) an envelope names, read without checking any signature: what a
    receiver looks at to decide whether a receipt is worth checking at all. Raises
    :class:`ReceiptRejected` for an envelope that does not decode."""
    if len(data) > MAX_RECEIPT:
        raise ReceiptRejected("oversize", f"{len(data)} bytes, limit {MAX_RECEIPT}")
    claim = _decode_claim(_decode(Receipt, data).body)  # type: ignore[attr-defined]
    return earner_of(claim), payer_of(claim)


def _check(data: bytes, need: int) -> Checked:
    if len(data) > MAX_RECEIPT:
        raise ReceiptRejected("oversize", f"{len(data)} bytes, limit {MAX_RECEIPT}")
    receipt = _decode(Receipt, data)
    claim = _decode_claim(receipt.body)
    earner, payer = earner_of(claim), payer_of(claim)
    if earner == payer:
        raise ReceiptRejected("self_signed", f"{earner} cannot pay itself")
    try:
        _check_claim(claim)
    except ValueError as exc:
        raise ReceiptRejected("invalid_claim", str(exc)) from None
    signed = 0
    for role, peer, pub, sig in (
        (EARNER, earner, receipt.earner_key, receipt.earner_sig),
        (PAYER, payer, receipt.payer_key, receipt.payer_sig),
    ):
        if not pub and not sig:
            continue
        try:
            role.verify(receipt.body, pub, sig, peer)
        except SealRejected as exc:
            raise ReceiptRejected(exc.reason, exc.detail) from None
        signed += 1
    if signed < need:
        raise ReceiptRejected("unsigned", f"{signed} of 2 signatures")
    return Checked(data, receipt, claim, hashlib.sha256(receipt.body).digest(),
                   claim_key_of(claim), credit_of(claim), signed == 2)


def _check_claim(claim: Claim) -> None:
    if earner_of(claim) == payer_of(claim):
        raise ValueError("earner and payer are the same peer")
    if isinstance(claim, JobClaim):
        if claim.device not in ("gpu", "cpu"):
            raise ValueError(f"device {claim.device!r} is neither gpu nor cpu")
        if len(claim.result_hash) != HASH_LEN:
            raise ValueError("result_hash is not 32 bytes")
        return
    if not claim.audits:
        raise ValueError("a storage receipt needs at least one passed audit")
    start, end = claim.epoch * EPOCH_S, (claim.epoch + 1) * EPOCH_S
    nonces = set()
    for audit in claim.audits:
        if any(len(b) != HASH_LEN for b in (audit.share_id, audit.nonce, audit.digest)):
            raise ValueError("audit share id, nonce and digest are 32 bytes each")
        if not start <= audit.at < end:
            raise ValueError("an audit lies outside the receipt's epoch")
        nonces.add(audit.nonce)
    if len(nonces) != len(claim.audits):
        raise ValueError("an audit nonce is repeated")


def _decode(cls: type, data: bytes) -> Any:
    return wire.decode_or_raise(data, cls, ReceiptRejected)


def _claim_version(body: bytes) -> object:
    """The version a claim-shaped map names (None if ``body`` is no such map)."""
    try:
        raw = wire.unpack(body, len(body))
    except ProtocolError:
        return None  # msgpack that msgspec parses but msgpack-python refuses (an int map key)
    if not isinstance(raw, dict) or raw.get("type") not in ("credits.job", "credits.storage"):
        return None
    return raw.get("version")


def _decode_claim(body: bytes) -> Claim:
    try:
        return wire.decode(body, JobClaim, StorageClaim)  # type: ignore[no-any-return]
    except SchemaError as exc:
        # Said apart from other schema faults: a claim of a later version, not a broken one.
        version = _claim_version(body)
        if version is not None and version != RECEIPT_VERSION:
            raise ReceiptRejected("version", f"claim version {version!r}") from None
        raise ReceiptRejected("schema", str(exc)) from None
    except ProtocolError as exc:
        raise ReceiptRejected("malformed", str(exc)) from None
