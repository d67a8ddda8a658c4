"""Fuzz targets: every decoder of peer input, the errors it documents, and inputs to try.

A :class:`Target` is one decoder seen as ``bytes -> object``: it either returns an
object that passes the target's ``check`` or raises one of the errors the decoder
documents; any other exception, a hang or a wild allocation is a bug. Its ``inputs``
mix three sources, so that the fuzzer gets past the first length or signature check:

* arbitrary bytes;
* byte-level mutations (flip, overwrite, insert, delete, truncate, splice in msgpack
  headers that claim 4G items, deep nesting) of valid encodings: the golden bytes of
  ``tests/golden_wire.json`` and encodings of messages generated from the schema;
* structural mutations of valid values before encoding: a field anywhere in the tree
  replaced by a value of the wrong type, out of range or huge, deleted, or joined by an
  unknown one; JSON documents likewise; zip archives with odd members. Signed envelopes
  are re-signed after the mutation, so the body's decoder is reached, not only the
  signature check.

:func:`valid_message` generates any declared message within its limits, for the
round-trip properties. ``tests/test_fuzz.py`` runs every target for a bounded number
of examples in the suite; ``scripts/fuzz.py`` runs one for a time budget. Both use
hypothesis (no torch is imported: the node never imports it).
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import math
import pkgutil
import types
import typing
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import msgpack
import trio
from hypothesis import strategies as st

import poolai.mesh
import poolai.node
import poolai.storage
from poolai.mesh import adverts, rpc, schema, wire
from poolai.mesh.errors import MeshError, ProtocolError
from poolai.node.credits import receipts
from poolai.node.jobs import protocol as job_protocol
from poolai.node.jobs import sanitise, spec
from poolai.storage import erasure, manifest
from poolai.storage.errors import ManifestError

TESTS = Path(__file__).resolve().parent.parent / "tests"
GOLDEN = json.loads((TESTS / "golden_wire.json").read_text())
PT2_SEED = (TESTS / "fuzz_seed.pt2").read_bytes()  # torch.export.save of relu(Linear(4, 3))

# Modules that run only inside job workers: they import torch and declare no messages.
WORKER_ONLY = frozenset({"poolai.node.jobs.worker", "poolai.node.jobs.models"})


@dataclass(frozen=True, slots=True)
class Target:
    """One decoder of peer input: ``decode`` raises only ``errors`` or returns what ``check`` accepts."""

    name: str
    decode: Callable[[bytes], Any]
    errors: tuple[type[BaseException], ...]
    inputs: st.SearchStrategy[bytes]
    check: Callable[[bytes, Any], None]

    def run(self, data: bytes) -> Any:
        """The decoded object, or None when refused with a documented error; anything else raises."""
        try:
            result = self.decode(data)
        except self.errors:
            return None
        self.check(data, result)
        return result


def _no_check(data: bytes, result: Any) -> None:
    pass


# ----------------------------------------------------------------------------- the messages


@cache
def message_classes() -> dict[str, type]:
    """Every message the node declares, by type name (every module imported first)."""
    for package in (poolai.mesh, poolai.storage, poolai.node):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name not in WORKER_ONLY:
                importlib.import_module(info.name)
    return {schema.type_name_of(c): c for c in schema.declared_messages()
            if c.__module__.startswith("poolai.")}


def _limits(cls: type) -> dict[str, schema.Limits]:
    return {f.name: f.metadata.get("wire", schema.Limits()) for f in dataclasses.fields(cls)}


@cache
def valid_message(cls: type) -> st.SearchStrategy[Any]:
    """Any instance of message class ``cls`` that its schema accepts."""
    hints, limits = schema.field_hints(cls), _limits(cls)
    required, optional = {}, {}
    for f in dataclasses.fields(cls):
        value = _valid(hints[f.name], limits[f.name])
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required[f.name] = value
        else:
            optional[f.name] = value
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: cls(**kw))


_U64 = (1 << 64) - 1
_I64 = 1 << 63
_ANY_LEAF = (st.none() | st.booleans() | st.integers(-_I64, _U64)
             | st.floats(allow_nan=False) | st.text(max_size=12) | st.binary(max_size=12))
ANY_VALUE = st.recursive(_ANY_LEAF, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def _sized(kind: Callable[..., st.SearchStrategy[Any]], n: int) -> st.SearchStrategy[Any]:
    short = kind(max_size=min(n, 40))
    return short | kind(min_size=n, max_size=n) if n <= 256 else short


def _valid(hint: Any, limits: schema.Limits) -> st.SearchStrategy[Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(_valid(a, limits) for a in args))
    if hint is type(None):
        return st.none()
    if hint is Any:
        return ANY_VALUE
    if hint is bool:
        return st.booleans()
    if isinstance(hint, type) and schema.is_message(hint):
        return valid_message(hint)
    if origin in (tuple, list):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return st.tuples(*(_valid(a, schema.Limits()) for a in args))
        items = st.lists(_valid(args[0] if args else Any, schema.Limits()),
                         max_size=min(limits.max_len or schema.DEFAULT_MAX_ITEMS, 4))
        return items.map(tuple) if origin is tuple else items
    if origin is dict:
        keys = _valid(args[0], schema.Limits(max_len=schema.MAX_KEY_LEN))
        return st.dictionaries(keys, _valid(args[1], schema.Limits()),
                               max_size=min(limits.max_len or schema.DEFAULT_MAX_ITEMS, 4))
    if hint is int:
        lo = -_I64 if limits.min is None else math.ceil(limits.min)
        hi = _U64 if limits.max is None else min(math.floor(limits.max), _U64)
        return st.integers(lo, hi)
    if hint is float:
        return st.floats(limits.min, limits.max, allow_nan=False, allow_infinity=False)
    if hint is str:
        return _sized(st.text, limits.max_len or schema.DEFAULT_MAX_STR)
    if hint is bytes:
        return _sized(st.binary, limits.max_len or schema.DEFAULT_MAX_BYTES)
    raise TypeError(f"no strategy for {hint!r}")


# ----------------------------------------------------------------------------- mutations

# Tokens spliced into bytes: msgpack headers that claim 4G items or bytes, ext types,
# NaN, the one reserved byte, deep nesting of arrays, maps and JSON.
TOKENS = (
    b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
    b"\xc6\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01", b"\xd4\x01\x00", b"\xc1",
    b"\xcf" + b"\xff" * 8, b"\xd3\x80" + b"\x00" * 7, b"\xcb\x7f\xf8" + b"\x00" * 6,
    b"\x91" * 5000 + b"\xc0", b"\x81\xa1a" * 3000 + b"\xc0", b"[" * 5000, b'{"a":' * 3000,
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x80" * 12, b"\x00", b"\xff",
    b"1e999", b"9" * 5000, b'"\\ud800"', b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06",
)


@st.composite
def mutated(draw: st.DrawFn, seeds: st.SearchStrategy[bytes]) -> bytes:
    """One seed with one to six byte-level edits."""
    data = bytearray(draw(seeds))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(("flip", "set", "insert", "token", "delete", "truncate",
                                   "duplicate")))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and at < len(data):
            data[at] = draw(st.sampled_from((0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xDC, 0xDE, 0xFF)))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[at:]
        elif op == "duplicate" and at < len(data):
            end = draw(st.integers(at, len(data)))
            data[end:end] = data[at:end]
    return bytes(data)


def _nest(depth: int) -> Any:
    value: Any = None
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


# Values a field must never be decoded into: wrong types, out of range, huge, nested.
NASTY = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 1 << 32, _U64, -_I64, 0.5, -0.0,
                     float("nan"), float("inf"), float("-inf"), 1e308, "", "\x00", "é" * 300,
                     "x" * 5000, b"", b"\x00" * 33, b"\xff" * 5000, [], [None], {}, {"type": 1},
                     {1: 2}, {b"k": 1}]),
    st.integers(-_I64, _U64), st.text(max_size=20), st.binary(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.integers(1, 100).map(_nest),
)


def _locations(tree: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in a tree; iterative, as edits nest trees past the recursion limit."""
    out: list[tuple[Any, Any]] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else \
            enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            out.append((node, key))
            stack.append(value)
    return out


def _thaw(value: Any) -> Any:
    """Lists for tuples, fresh containers throughout (the drawn value may be shared)."""
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value


@st.composite
def edited(draw: st.DrawFn, trees: st.SearchStrategy[Any], nasty: st.SearchStrategy[Any] = NASTY,
           ) -> Any:
    """A tree of maps and lists with one to three edits anywhere in it."""
    tree = _thaw(draw(trees))
    for _ in range(draw(st.integers(1, 3))):
        spots = _locations(tree)
        if not spots:
            return draw(nasty)
        parent, key = draw(st.sampled_from(spots))
        op = draw(st.sampled_from(("replace", "replace", "delete", "add", "wrap")))
        if op == "replace":  # copies: a later edit must not change a shared sample
            parent[key] = _thaw(draw(nasty))
        elif op == "delete":
            del parent[key]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=12) | st.sampled_from(["type", "", "__proto__"]))] = \
                _thaw(draw(nasty))
        elif op == "add":
            parent.append(_thaw(draw(nasty)))
        elif op == "wrap":
            parent[key] = [parent[key]]
    return tree


def packed(trees: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """msgpack of each tree; trees msgpack cannot encode are left out."""
    return trees.map(_pack).filter(lambda b: b is not None)  # type: ignore[return-value]


def _pack(tree: Any) -> bytes | None:
    try:
        return msgpack.packb(tree, use_bin_type=True)
    except (ValueError, TypeError, OverflowError):
        return None


def as_json(trees: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """JSON of each tree (bytes become lists of ints, NaN stays NaN as Python writes it)."""
    return trees.map(lambda t: json.dumps(t, default=list).encode())


def _golden_messages(type_name: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in GOLDEN["messages"].get(type_name, {}).values()]


def _seeds(golden: list[bytes], generated: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.sampled_from(golden) | generated if golden else generated


# ----------------------------------------------------------------------------- messages


def message_target(cls: type) -> Target:
    """``wire.decode(body, cls)``: a ProtocolError (SchemaError, UnknownField) or a ``cls``."""
    valid = valid_message(cls)
    encoded = valid.map(wire.encode)
    seeds = _seeds(_golden_messages(schema.type_name_of(cls)), encoded)

    def check(data: bytes, msg: Any) -> None:
        assert type(msg) is cls, type(msg)
        assert wire.decode(wire.encode(msg), cls) == msg  # what was accepted re-encodes

    return Target(
        f"message:{schema.type_name_of(cls)}",
        lambda data: wire.decode(data, cls),
        (ProtocolError,),
        st.binary(max_size=256) | mutated(seeds) | packed(edited(valid.map(schema.to_wire))),
        check,
    )


def _any_decode(data: bytes) -> Any:
    return wire.decode(data, *message_classes().values())


def _all_messages() -> Target:
    classes = list(message_classes().values())
    golden = [b for name in GOLDEN["messages"] for b in _golden_messages(name)]
    return Target("messages", _any_decode, (ProtocolError,),
                  st.binary(max_size=256) | mutated(st.sampled_from(golden))
                  | packed(edited(st.sampled_from(classes).flatmap(valid_message).map(schema.to_wire))),
                  _no_check)


def _unpack_target() -> Target:
    golden = [b for name in GOLDEN["messages"] for b in _golden_messages(name)]
    return Target("unpack", wire.unpack, (ProtocolError,),
                  st.binary(max_size=256) | mutated(st.sampled_from(golden)), _no_check)


# ----------------------------------------------------------------------------- frames and rpc

MAX_FRAME = 4096


def _frames(data: bytes, chunk: int) -> tuple[list[bytes], type[BaseException] | None]:
    decoder = wire.FrameDecoder(MAX_FRAME)
    frames: list[bytes] = []
    try:
        for at in range(0, len(data), chunk):
            decoder.feed(data[at:at + chunk])
            while (body := decoder.next_frame()) is not None:
                frames.append(body)
        decoder.close()
    except ProtocolError as exc:
        return frames, type(exc)
    return frames, None


def decode_frames(data: bytes) -> list[bytes]:
    """Every frame in ``data`` (fed whole); raises the ProtocolError that ends them, if any.

    However the bytes are split, the same frames come out and the same error ends them.
    """
    whole = _frames(data, max(1, len(data)))
    for chunk in (1, 3, 64):
        assert _frames(data, chunk) == whole, chunk
    frames, error = whole
    if error is not None:
        raise error("frames end in an error")
    return frames


def _check_frames(data: bytes, frames: list[bytes]) -> None:
    # Not re-framed byte for byte: a length prefix need not be minimal ("80 00" is 0).
    assert all(len(f) <= MAX_FRAME and f in data for f in frames)
    assert sum(map(len, frames)) <= len(data) <= sum(map(len, frames)) + \
        wire.MAX_VARINT_BYTES * len(frames)


def _frames_target() -> Target:
    bodies = st.lists(st.binary(max_size=300) | st.sampled_from(_golden_messages("error")),
                      max_size=4)
    framed = bodies.map(lambda fs: b"".join(wire.frame(f, MAX_FRAME) for f in fs))
    return Target("frames", decode_frames, (ProtocolError,),
                  st.binary(max_size=300) | framed | mutated(framed), _check_frames)


class _ScriptedStream:
    """A stream that delivers ``data`` in small chunks, then end of stream, and records writes."""

    def __init__(self, data: bytes) -> None:
        self.data, self.sent, self.eof = data, bytearray(), False

    async def send_all(self, data: bytes) -> None:
        self.sent += data

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        chunk, self.data = self.data[:100], self.data[100:]
        return chunk

    async def send_eof(self) -> None:
        self.eof = True

    async def aclose(self) -> None:
        pass


async def _echo(peer: Any, request: Any) -> Any:
    return request


def serve_and_ask(data: bytes) -> Any:
    """``data`` as a request to an rpc Service, then as the reply to an rpc exchange.

    The service must answer anything but silence with one well-formed frame (reply or
    ErrorReply) and never raise; the exchange returns a reply or raises a MeshError.
    """
    classes = (adverts.SignedAdvert, receipts.Receipt)
    service = rpc.Service("fuzz", _echo, rpc.ServiceConfig(request_types=classes,
                                                           max_frame=MAX_FRAME))
    server = _ScriptedStream(data)
    trio.run(service.handle, server, "peer")
    if data:  # a peer that sent nothing gets nothing back; anything else, one answer
        decoder = wire.FrameDecoder(MAX_FRAME)
        decoder.feed(bytes(server.sent))
        reply = decoder.next_frame()
        assert reply is not None and decoder.pending == 0, "the service wrote no single frame"
        wire.decode(reply, wire.ErrorReply, *classes)
    client = _ScriptedStream(data)
    return trio.run(rpc.exchange, client, wire.ErrorReply("busy", "x"), classes)


def _rpc_target() -> Target:
    requests = st.sampled_from([bytes.fromhex(GOLDEN["advert"]),
                                bytes.fromhex(GOLDEN["receipts"]["job"]["both"])])
    framed = (requests | st.binary(max_size=200)).map(lambda b: wire.frame(b, MAX_FRAME))
    return Target("rpc", serve_and_ask, (MeshError,),
                  st.binary(max_size=300) | framed | mutated(framed), _no_check)


# ----------------------------------------------------------------------------- manifests


@st.composite
def valid_manifest(draw: st.DrawFn) -> manifest.Manifest:
    n = draw(st.integers(1, 12))
    k = draw(st.integers(1, n))
    seg = draw(st.integers(1, 64))
    size = draw(st.integers(0, seg * 6))
    hashes = draw(st.binary(min_size=32, max_size=32)) * (erasure.segment_count(size, seg) * n)
    return manifest.make_manifest(size, erasure.ErasureParams(k, n, seg), hashes)


def _manifest_map(m: manifest.Manifest) -> dict[str, Any]:
    return msgpack.unpackb(m.encode(), raw=False)  # type: ignore[no-any-return]


def _manifest_target() -> Target:
    def check(data: bytes, m: manifest.Manifest) -> None:
        assert m.encode() == data and manifest.decode(data) == m

    encoded = valid_manifest().map(lambda m: m.encode())
    return Target("manifest", manifest.decode, (ManifestError,),
                  st.binary(max_size=256) | mutated(encoded)
                  | packed(edited(valid_manifest().map(_manifest_map))), check)


# ----------------------------------------------------------------------------- signed envelopes


@cache
def signing_key(seed: int) -> receipts.SigningKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    public = private.public_key().public_bytes_raw()
    return receipts.SigningKey(adverts.peer_id_from_public_key(public), public, private.sign)


ADVERT_NOW = 1_800_000_001.0  # the golden advert's time


def sign_advert_body(body: bytes) -> bytes:
    """An envelope whose signature over ``body`` holds (body need not be an advert)."""
    key = signing_key(1)
    return wire.encode(adverts.SignedAdvert(body, key.public_key,
                                            key.sign(adverts.SIGNING_DOMAIN + body)))


@st.composite
def valid_advert(draw: st.DrawFn) -> adverts.Advert:
    """An advert that :func:`adverts.verify` accepts at its own timestamp."""
    a = draw(valid_message(adverts.Advert))
    gpus = tuple(dataclasses.replace(g, index=i, memory_free=min(g.memory_free, g.memory_total))
                 for i, g in enumerate(a.gpus))
    coord = a.coord
    if coord is not None and not (coord.vec and all(abs(v) < 1e6 for v in coord.vec)):
        coord = dataclasses.replace(coord, vec=(0.0,))
    return dataclasses.replace(
        a, peer_id=signing_key(1).peer_id, free_slots=min(a.free_slots, a.job_slots),
        ram_free=min(a.ram_free, a.ram_total), gpus=gpus, coord=coord,
        models=tuple(m for m in a.models if m))


def _advert_target() -> Target:
    golden_body = wire.decode(bytes.fromhex(GOLDEN["advert"]), adverts.SignedAdvert).body
    bodies = st.sampled_from([golden_body]) | valid_advert().map(wire.encode)
    maps = (st.just(golden_body) | valid_advert().map(wire.encode)).map(wire.unpack)

    def check(data: bytes, advert: adverts.Advert) -> None:
        assert type(advert) is adverts.Advert and advert.peer_id == signing_key(1).peer_id

    return Target(
        "advert", lambda data: adverts.verify(data, now=ADVERT_NOW), (adverts.AdvertRejected,),
        st.binary(max_size=256) | mutated(st.just(bytes.fromhex(GOLDEN["advert"])))
        | mutated(bodies).map(sign_advert_body) | packed(edited(maps)).map(sign_advert_body),
        check)


def sign_receipt_body(body: bytes) -> bytes:
    """An envelope with both signatures over ``body`` holding (worker 1, submitter 2)."""
    earner, payer = signing_key(1), signing_key(2)
    return wire.encode(receipts.Receipt(
        body, earner.public_key, earner.sign(receipts.EARNER_DOMAIN + body),
        payer.public_key, payer.sign(receipts.PAYER_DOMAIN + body)))


@st.composite
def valid_claim(draw: st.DrawFn) -> receipts.Claim:
    """A job or storage claim of worker/holder 1 and submitter/owner 2 that a receipt may carry."""
    earner, payer = signing_key(1).peer_id, signing_key(2).peer_id
    if draw(st.booleans()):
        c = draw(valid_message(receipts.JobClaim))
        return dataclasses.replace(c, worker=earner, submitter=payer,
                                   device=draw(st.sampled_from(("gpu", "cpu"))),
                                   result_hash=draw(st.binary(min_size=32, max_size=32)))
    c = draw(valid_message(receipts.StorageClaim))
    start = c.epoch * receipts.EPOCH_S
    audits = tuple(
        dataclasses.replace(a, share_id=bytes(32), nonce=i.to_bytes(32, "big"),
                            digest=bytes(32), at=float(start + i))
        for i, a in enumerate(draw(st.lists(valid_message(receipts.AuditEvidence), min_size=1,
                                            max_size=receipts.MAX_AUDITS))))
    return dataclasses.replace(c, owner=payer, holder=earner, audits=audits)


def _receipt_target() -> Target:
    golden = [bytes.fromhex(r[part]) for r in GOLDEN["receipts"].values()
              for part in ("earner", "both")]
    golden_bodies = [wire.decode(g, receipts.Receipt).body for g in golden]
    bodies = st.sampled_from(golden_bodies) | valid_claim().map(wire.encode)

    def decode(data: bytes) -> receipts.Checked:
        partly = None
        try:
            partly = receipts.check_receipt(data, complete=False)
        except receipts.ReceiptRejected:
            pass
        checked = receipts.check_receipt(data)
        assert partly == checked  # what holds complete also holds as started
        return checked

    def check(data: bytes, checked: receipts.Checked) -> None:
        assert checked.complete and checked.raw == data and checked.earner != checked.payer

    return Target(
        "receipt", decode, (receipts.ReceiptRejected,),
        st.binary(max_size=256) | mutated(st.sampled_from(golden))
        | mutated(bodies).map(sign_receipt_body)
        | packed(edited(bodies.map(wire.unpack))).map(sign_receipt_body),
        check)


# ----------------------------------------------------------------------------- jobs


def _golden_jobs() -> list[bytes]:
    return [bytes.fromhex(h) for h in GOLDEN["jobs"].values()]


# JSON values a job spec field must never be decoded into.
NASTY_JSON = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 1 << 64, 10 ** 400, -(10 ** 400), 0.0, -0.0,
                     1e308, float("inf"), float("nan"), "", "x" * 5000, "é", "\ud800", [], [1, 2],
                     [[]], {}, {"kind": "pt2"}, {"kind": "builtin", "family": "transformer"}]),
    st.integers(), st.floats(), st.text(max_size=20), st.lists(st.integers(), max_size=3),
    st.integers(1, 100).map(_nest),
)


def _check_job(data: bytes, job: spec.JobSpec) -> None:
    assert spec.decode_job(spec.encode_job(job)) == job


def _job_target() -> Target:
    golden = st.sampled_from(_golden_jobs())
    trees = golden.map(json.loads)
    return Target("job_spec", spec.decode_job, (spec.InvalidJob,),
                  st.binary(max_size=256) | mutated(golden) | as_json(edited(trees, NASTY_JSON))
                  | mutated(as_json(edited(trees, NASTY_JSON))),
                  _check_job)


def _parse_result(data: bytes) -> spec.JobResult:
    return job_protocol.parse_result(wire.decode(data, job_protocol.Result))


def _result_target() -> Target:
    golden = bytes.fromhex(GOLDEN["result"])
    record = wire.decode(golden, job_protocol.Result)
    maps = st.just(schema.to_wire(record))
    return Target("job_result", _parse_result, (ProtocolError, spec.InvalidJob),
                  st.binary(max_size=256) | mutated(st.just(golden)) | packed(edited(maps)),
                  _no_check)


# ----------------------------------------------------------------------------- .pt2 archives


def zip_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def zip_of(members: list[tuple[str, bytes, int]]) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w") as zf:
        warnings.simplefilter("ignore")  # duplicate names are what is being tried
        for name, body, method in members:
            zf.writestr(zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0)), body, compress_type=method)
    return out.getvalue()


_SEED_MEMBERS = zip_members(PT2_SEED)
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


@st.composite
def odd_archive(draw: st.DrawFn) -> bytes:
    """The seed archive rebuilt with odd members: renamed, added, dropped, doubled, recompressed,
    or with one JSON member edited anywhere in its tree."""
    members = [(name, body, zipfile.ZIP_STORED) for name, body in _SEED_MEMBERS.items()]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(members) - 1))
        name, body, method = members[i]
        op = draw(st.sampled_from(("json", "json", "rename", "add", "drop", "double", "method",
                                   "truncate")))
        if op == "json" and name.endswith(".json") and (tree := _json_or_none(body)) is not None:
            members[i] = (name, json.dumps(draw(edited(st.just(tree), NASTY_JSON))).encode(), method)
        elif op == "rename":
            root, _, rest = name.partition("/")
            new = draw(st.sampled_from((
                "x/" + name, rest, f"{root}/data/aotinductor/m.so",
                f"{root}/data/weights/weight_9", f"{root}/../{name}", "/" + name, name + "/",
                f"{root}/data/constants/custom_obj_0", "serialized_model.json", "version")))
            members[i] = (draw(st.just(new) | st.text(max_size=40)), body, method)
        elif op == "add":
            members.append((draw(st.text(max_size=40)), draw(st.binary(max_size=64)), method))
        elif op == "drop":
            del members[i]
        elif op == "double":
            members.append(members[i])
        elif op == "method":
            members[i] = (name, body, draw(st.sampled_from(_METHODS)))
        elif op == "truncate":
            members[i] = (name, body[:draw(st.integers(0, len(body)))], method)
        if not members:
            break
    try:
        return zip_of(members)
    except (ValueError, UnicodeEncodeError):
        return b""  # a name zipfile itself refuses to write


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None  # a member truncated by an earlier edit


def _check_pt2(data: bytes, clean: sanitise.SanitisedPt2) -> None:
    again = sanitise.sanitise_pt2(clean.archive)  # the rebuilt archive passes unchanged
    assert (again.input_names, again.parameter_names, again.ops) == \
        (clean.input_names, clean.parameter_names, clean.ops)
    assert zip_members(again.archive) == zip_members(clean.archive)


def _pt2_target() -> Target:
    deflated = zip_of([(n, b, zipfile.ZIP_DEFLATED) for n, b in _SEED_MEMBERS.items()])
    seeds = st.sampled_from([PT2_SEED, deflated])
    return Target("pt2", sanitise.sanitise_pt2, (sanitise.UnsafeProgram,),
                  st.binary(max_size=256) | mutated(seeds) | odd_archive()
                  | mutated(odd_archive()), _check_pt2)


# ----------------------------------------------------------------------------- safetensors


def read_safetensors(data: bytes) -> dict[str, spec.TensorInfo]:
    """A whole safetensors file read as the worker reads one (``worker.read_header``)."""
    n = sanitise.safetensors_header_length(data[:8])
    header = data[8:8 + n]
    if len(header) != n:
        raise spec.InvalidJob("safetensors header is truncated")
    return sanitise.parse_safetensors_header(header, len(data))


def safetensors_file(header: Any, data_len: int) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + bytes(data_len)


_ST_DTYPES = {"F32": "float32", "F64": "float64", "I64": "int64", "I32": "int32", "U8": "uint8",
              "I8": "int8", "F16": "float16", "BOOL": "bool", "I16": "int16", "U16": "uint16"}


@st.composite
def valid_safetensors(draw: st.DrawFn) -> tuple[bytes, dict[str, spec.TensorInfo]]:
    """A file written by the safetensors library itself, and the tensors it holds."""
    import numpy as np
    from safetensors.numpy import save

    names = draw(st.lists(st.text("abcxyz._0123456789", min_size=1, max_size=12), max_size=4,
                          unique=True))
    tensors, infos = {}, {}
    for name in names:
        dtype = draw(st.sampled_from(sorted(_ST_DTYPES)))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        tensors[name] = np.zeros(shape, dtype=_ST_DTYPES[dtype])
        infos[name] = spec.TensorInfo(dtype, shape)
    # safetensors 0.4-0.7 writes a broken header for metadata without tensors.
    metadata = draw(st.none() | st.dictionaries(st.text(max_size=8), st.text(max_size=8),
                                                max_size=2)) if names else None
    return save(tensors, metadata=metadata), infos


def _header_tree(data: bytes) -> tuple[Any, int]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), len(data) - 8 - n


@st.composite
def edited_safetensors(draw: st.DrawFn) -> bytes:
    data, _ = draw(valid_safetensors())
    header, data_len = _header_tree(data)
    return safetensors_file(draw(edited(st.just(header), NASTY_JSON)), data_len)


def _check_safetensors(data: bytes, infos: dict[str, spec.TensorInfo]) -> None:
    for info in infos.values():
        assert info.dtype in _ST_DTYPES or info.dtype in ("BF16", "U32", "U64")
        assert all(type(s) is int and s >= 0 for s in info.shape)


def _safetensors_target() -> Target:
    files = valid_safetensors().map(lambda pair: pair[0])
    return Target("safetensors", read_safetensors, (spec.InvalidJob,),
                  st.binary(max_size=256) | mutated(files) | edited_safetensors(),
                  _check_safetensors)


# ----------------------------------------------------------------------------- all of them


@cache
def targets() -> dict[str, Target]:
    """Every target by name: one per message type, and one per other decoder of peer input."""
    found = [_frames_target(), _rpc_target(), _unpack_target(), _all_messages(),
             _manifest_target(), _advert_target(), _receipt_target(), _job_target(),
             _result_target(), _pt2_target(), _safetensors_target()]
    found += [message_target(c) for c in message_classes().values()]
    return {t.name: t for t in found}
