"""Capacity adverts: what a node says about itself on the capacity topic, signed.

An advert travels as a signed envelope::

    capacity.signed { body: bytes, public_key: bytes[32], signature: bytes[64] }

``body`` is the msgpack encoding of a :class:`Advert` exactly as the signer
produced it, and ``signature`` is Ed25519 over ``SIGNING_DOMAIN + body``: a
:class:`~poolai.mesh.envelope.Role` of the envelope layer that receipts share.
Signing the bytes rather than a re-encoding of the decoded fields means a
receiver never has to reproduce the sender's encoder to check a signature, and
a body is only parsed after its signature holds. The peer id inside the body
must be the one derived from ``public_key``, so a node can speak only for
itself.

Everything here is pure: :func:`verify` takes the current time and the last
sequence number seen from the peer, and either returns the advert or raises
:class:`AdvertRejected` naming the reason. The whole envelope is capped at
:data:`MAX_ADVERT` bytes (16 KiB), checked before anything is unpacked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from poolai.mesh import wire
from poolai.mesh.envelope import KEY_LEN, SIG_LEN, Role, SealRejected, peer_id_from_public_key
from poolai.mesh.errors import Rejected

__all__ = ["peer_id_from_public_key"]  # re-exported: it used to live here

TOPIC = "poolai/capacity/1"
ADVERT_VERSION = 1  # the schema version, also the topic's suffix
MAX_ADVERT = 16 * 1024  # a whole signed envelope, in bytes
ENVELOPE_OVERHEAD = 160  # type tag, three keys, key and signature, length prefixes
MAX_BODY = MAX_ADVERT - ENVELOPE_OVERHEAD
MAX_GPUS = 16
MAX_MODELS = 32
MAX_MODEL_NAME = 128
MAX_SKEW_S = 30.0  # how far in the future a timestamp may be (clock skew between peers)
MAX_TTL_S = 3600.0
MAX_BYTES = 1 << 60  # any memory or storage size
MAX_SEQ = (1 << 63) - 1
SIGNING_DOMAIN = b"poolai/capacity/advert/1\x00"
ADVERT_ROLE = Role("advert", SIGNING_DOMAIN)
ED25519_KEY_LEN = KEY_LEN
ED25519_SIG_LEN = SIG_LEN

# Why an advert was refused. Those in IGNORED can happen to an honest sender
# (reordering on two mesh paths, a slow path) and cost the forwarder nothing;
# every other reason is a fault of whoever sent it and is penalised.
REASONS = (
    "oversize", "malformed", "unknown_field", "schema", "bad_key", "bad_signature",
    "peer_mismatch", "origin_mismatch", "future", "expired", "stale",
)
IGNORED = frozenset({"expired", "stale"})


class AdvertRejected(Rejected, reasons=REASONS):
    """An advert failed verification; ``reason`` is one of :data:`REASONS`."""

    @property
    def penalise(self) -> bool:
        """Whether the peer that passed this on should lose reputation for it."""
        return self.reason not in IGNORED


# --------------------------------------------------------------------------- schema


@wire.message("capacity.gpu")
class GpuAdvert:
    """One GPU as its node sees it. Sizes in bytes; ``None`` where the driver would not say."""

    index: int = wire.field(min=0, max=255)
    name: str = wire.field(max_len=96)
    uuid: str = wire.field(max_len=96)
    memory_total: int = wire.field(min=0, max=MAX_BYTES)
    memory_free: int = wire.field(min=0, max=MAX_BYTES)
    cc_major: int = wire.field(min=0, max=99)
    cc_minor: int = wire.field(min=0, max=99)
    utilization: int | None = wire.field(min=0, max=100, default=None)  # percent
    temperature_c: int | None = wire.field(min=0, max=250, default=None)
    power_w: float | None = wire.field(min=0, max=100_000, default=None)
    power_limit_w: float | None = wire.field(min=0, max=100_000, default=None)
    pcie_gen: int | None = wire.field(min=1, max=32, default=None)
    pcie_width: int | None = wire.field(min=1, max=64, default=None)

    @property
    def compute_capability(self) -> tuple[int, int]:
        return (self.cc_major, self.cc_minor)


@wire.message("capacity.coord")
class CoordAdvert:
    """A Vivaldi coordinate (see :mod:`poolai.mesh.coords`): point and height in ms."""

    vec: tuple[float, ...] = wire.field(max_len=8)
    height: float = wire.field(min=0, max=60_000)
    error: float = wire.field(min=0, max=10)


@wire.message("capacity.advert")
class Advert:
    """What one node can run right now, and how busy it is.

    ``seq`` grows strictly with every advert from a node, across restarts
    (nodes seed it from the clock in milliseconds). ``ttl`` says how long the
    advert stays valid after it is received unless a newer one replaces it.
    """

    peer_id: str = wire.field(max_len=128)
    seq: int = wire.field(min=1, max=MAX_SEQ)
    timestamp: float = wire.field(min=0, max=1 << 36)  # unix seconds at the sender
    ttl: float = wire.field(min=1, max=MAX_TTL_S)
    software: str = wire.field(max_len=64)  # e.g. "poolai/0.1.0"
    protocol: int = wire.field(min=1, max=65535)  # the advert schema version
    simulated: bool = wire.field()  # devices come from a file, not from the hardware
    gpus: tuple[GpuAdvert, ...] = wire.field(max_len=MAX_GPUS)
    cpu_cores: int = wire.field(min=0, max=65536)
    ram_total: int = wire.field(min=0, max=MAX_BYTES)
    ram_free: int = wire.field(min=0, max=MAX_BYTES)
    storage_free: int = wire.field(min=0, max=MAX_BYTES)
    job_slots: int = wire.field(min=0, max=1024)
    free_slots: int = wire.field(min=0, max=1024)
    queue_length: int = wire.field(min=0, max=1_000_000)
    models: tuple[str, ...] = wire.field(max_len=MAX_MODELS, default=())
    driver_version: str = wire.field(max_len=32, default="")
    cuda_version: str = wire.field(max_len=16, default="")
    torch_cuda: bool | None = wire.field(default=None)  # None: unknown
    coord: CoordAdvert | None = wire.field(default=None)
    payout_address: str = wire.field(max_len=128, default="")

    @property
    def reach(self) -> str:
        """The sender's reachability verdict (``public``, ``private`` or ``unknown``), read
        from the product comment of :attr:`software` (see :func:`software_with_reach`)."""
        return reach_of_software(self.software)


@wire.message("capacity.signed")
class SignedAdvert:
    """The envelope that travels on the topic."""

    body: bytes = wire.field(max_len=MAX_BODY)
    public_key: bytes = wire.field(max_len=ED25519_KEY_LEN)
    signature: bytes = wire.field(max_len=ED25519_SIG_LEN)


# --------------------------------------------------------------------------- reachability

# The reachability verdict travels as a product comment of ``software``:
# ``"poolai/0.1.0 (reach public)"``. A field of its own would be refused by every node of
# an earlier release (decoding forbids unknown fields, and the validator penalises the
# forwarder: NETWORK.md section 6); ``software`` is a string those nodes only display.
# No comment means ``unknown``, so an advert without a verdict is byte-for-byte today's.
REACH_STATES = ("public", "private", "unknown")
_REACH_OPEN, _REACH_CLOSE = " (reach ", ")"
MAX_SOFTWARE = 64


def software_with_reach(software: str, reach: str) -> str:
    """``software`` with the verdict ``reach`` as its comment (none for ``unknown``),
    shortened so the whole fits :data:`MAX_SOFTWARE` characters with the comment kept.
    Raises ValueError for a state not in :data:`REACH_STATES`."""
    if reach not in REACH_STATES:
        raise ValueError(f"unknown reachability state {reach!r}")
    base = software.split(_REACH_OPEN, 1)[0]
    if reach == "unknown":
        return base[:MAX_SOFTWARE]
    comment = f"{_REACH_OPEN}{reach}{_REACH_CLOSE}"
    return base[: MAX_SOFTWARE - len(comment)] + comment


def reach_of_software(software: str) -> str:
    """The verdict in ``software``'s comment; ``unknown`` when there is none or it names
    no known state (an advert's other checks do not depend on it)."""
    if not software.endswith(_REACH_CLOSE) or _REACH_OPEN not in software:
        return "unknown"
    state = software.rsplit(_REACH_OPEN, 1)[1][: -len(_REACH_CLOSE)]
    return state if state in REACH_STATES else "unknown"


# --------------------------------------------------------------------------- sign and verify


def sign(advert: Advert, signer: Callable[[bytes], bytes], public_key: bytes) -> bytes:
    """The signed envelope for ``advert``, ready to publish.

    ``signer`` signs bytes with the node's Ed25519 private key. Raises
    ValueError when the advert is too large or does not belong to ``public_key``.
    """
    if advert.peer_id != peer_id_from_public_key(public_key):
        raise ValueError("advert peer id does not belong to the signing key")
    body = wire.encode(advert)
    if len(body) > MAX_BODY:
        raise ValueError(f"advert body of {len(body)} bytes exceeds {MAX_BODY}")
    envelope = wire.encode(SignedAdvert(body, public_key, signer(ADVERT_ROLE.domain + body)))
    if len(envelope) > MAX_ADVERT:  # only a wrong ENVELOPE_OVERHEAD could get here
        raise ValueError(f"signed advert of {len(envelope)} bytes exceeds {MAX_ADVERT}")
    return envelope


def verify(
    data: bytes,
    *,
    now: float,
    last_seq: int | None = None,
    origin: str | None = None,
    max_skew: float = MAX_SKEW_S,
    max_age: float = MAX_TTL_S,
) -> Advert:
    """Check a received envelope and return the advert inside.

    ``last_seq`` is the newest sequence number accepted from the advert's peer
    (``None`` if none is held); ``origin``, when given, is the peer the
    transport says published it. Checks run cheapest first and a body is only
    unpacked once its signature holds. Raises :class:`AdvertRejected`.
    """
    if len(data) > MAX_ADVERT:
        raise AdvertRejected("oversize", f"{len(data)} bytes, limit {MAX_ADVERT}")
    envelope = _decode(SignedAdvert, data)
    try:
        ADVERT_ROLE.verify(envelope.body, envelope.public_key, envelope.signature)
    except SealRejected as exc:
        raise AdvertRejected(exc.reason, exc.detail) from None
    advert = _decode(Advert, envelope.body)
    if advert.peer_id != peer_id_from_public_key(envelope.public_key):
        raise AdvertRejected("peer_mismatch", f"{advert.peer_id} is not the signing key's peer id")
    if origin is not None and origin != advert.peer_id:
        raise AdvertRejected("origin_mismatch", f"advert of {advert.peer_id} published by {origin}")
    _check_consistent(advert)
    if advert.timestamp > now + max_skew:
        raise AdvertRejected("future", f"timestamp {advert.timestamp - now:.1f} s ahead")
    if advert.timestamp < now - max_age:
        raise AdvertRejected("expired", f"timestamp {now - advert.timestamp:.1f} s old")
    if last_seq is not None and advert.seq <= last_seq:
        raise AdvertRejected("stale", f"seq {advert.seq} <= last seen {last_seq}")
    return advert


def _decode(cls: type, data: bytes) -> Any:
    return wire.decode_or_raise(data, cls, AdvertRejected)


def _check_consistent(advert: Advert) -> None:
    problems = []
    if advert.free_slots > advert.job_slots:
        problems.append("free_slots > job_slots")
    if advert.ram_free > advert.ram_total:
        problems.append("ram_free > ram_total")
    for gpu in advert.gpus:
        if gpu.memory_free > gpu.memory_total:
            problems.append(f"gpu {gpu.index}: memory_free > memory_total")
    if len({g.index for g in advert.gpus}) != len(advert.gpus):
        problems.append("duplicate gpu index")
    if any(not m or len(m) > MAX_MODEL_NAME for m in advert.models):
        problems.append(f"model names must be 1..{MAX_MODEL_NAME} characters")
    if advert.coord is not None and not (
        advert.coord.vec and all(math.isfinite(v) and abs(v) < 1e6 for v in advert.coord.vec)
    ):
        problems.append("coordinate is empty or not finite")
    if problems:
        raise AdvertRejected("schema", "; ".join(problems))
