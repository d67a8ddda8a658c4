"""Framing and schema validation: every malformed input is a clear ProtocolError, never a crash."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from poolai.mesh import wire
from poolai.mesh.errors import FrameTooLarge, ProtocolError, SchemaError, TruncatedFrame, UnknownField


@wire.message("test.inner")
class Inner:
    name: str = wire.field(max_len=8)


@wire.message("test.outer")
class Outer:
    count: int = wire.field(min=0, max=100)
    ratio: float
    blob: bytes = wire.field(max_len=16)
    tags: tuple[str, ...] = wire.field(max_len=3)
    inner: Inner
    maybe: int | None = None
    flag: bool = False


def sample() -> Outer:
    return Outer(count=3, ratio=0.5, blob=b"\x00\x01", tags=("a", "b"), inner=Inner(name="x"))


def test_round_trip_through_frames():
    msg = sample()
    framed = wire.frame(wire.encode(msg)) * 2
    decoder = wire.FrameDecoder()
    for byte in framed:  # one byte at a time: the worst fragmentation a stream can deliver
        decoder.feed(bytes([byte]))
    first, second = decoder.next_frame(), decoder.next_frame()
    assert decoder.next_frame() is None
    assert wire.decode(first, Outer) == msg == wire.decode(second, Outer)
    decoder.close()


def test_oversized_frame_is_refused_before_its_body_arrives():
    decoder = wire.FrameDecoder(max_frame=100)
    decoder.feed(wire.encode_varint(101))
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_sender_refuses_to_build_an_oversized_frame():
    with pytest.raises(FrameTooLarge):
        wire.frame(b"x" * 11, max_frame=10)


def test_truncated_frame_at_end_of_stream():
    decoder = wire.FrameDecoder()
    decoder.feed(wire.frame(b"hello")[:-1])
    assert decoder.next_frame() is None
    with pytest.raises(TruncatedFrame):
        decoder.close()


def test_endless_varint_is_a_protocol_error():
    decoder = wire.FrameDecoder()
    decoder.feed(b"\xff" * 11)
    with pytest.raises(ProtocolError):
        decoder.next_frame()


def _raw(**fields) -> bytes:
    base = wire.to_wire(sample())
    base.update(fields)
    return msgpack.packb({k: v for k, v in base.items() if v is not ...}, use_bin_type=True)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"count": "3"}, "expected an int"),
        ({"count": True}, "expected an int"),
        ({"count": 101}, "above the maximum"),
        ({"count": -1}, "below the minimum"),
        ({"ratio": float("nan")}, "NaN"),
        ({"blob": "text"}, "expected bytes"),
        ({"blob": b"x" * 17}, "exceeds the limit"),
        ({"tags": ["a", "b", "c", "d"]}, "exceeds the limit"),
        ({"tags": ["a", 1]}, "expected a string"),
        ({"inner": {"type": "test.inner", "name": "toolongname"}}, "exceeds the limit"),
        ({"inner": {"type": "test.inner", "name": "x", "extra": 1}}, "unknown field"),
        ({"surprise": 1}, "unknown field"),
        ({"count": ...}, "missing field"),
        ({"type": "test.other"}, "unexpected message type"),
        ({"maybe": "no"}, "expected an int"),
        ({"flag": 1}, "expected a bool"),
    ],
)
def test_schema_violations_are_rejected(fields, needle):
    with pytest.raises(SchemaError, match=needle):
        wire.decode(_raw(**fields), Outer)


def test_optional_fields_take_defaults_and_accept_none():
    msg = wire.decode(_raw(maybe=None, flag=...), Outer)
    assert msg.maybe is None and msg.flag is False


@pytest.mark.parametrize(
    "body",
    [b"", b"\xc1", b"\x92\x01", msgpack.packb([1, 2]), msgpack.packb({1: 2}), b"\x81\xa1"],
)
def test_malformed_msgpack_is_a_protocol_error(body):
    with pytest.raises(ProtocolError):
        wire.decode(body, Outer)


def test_declared_container_larger_than_body_is_refused_without_allocating():
    # array32 header claiming 2**31 items in a 5-byte body
    with pytest.raises(ProtocolError):
        wire.decode(b"\xdd\x80\x00\x00\x00", Outer)


def test_messages_are_frozen():
    msg = sample()
    with pytest.raises(AttributeError):
        msg.count = 4  # type: ignore[misc]


def test_field_hints_are_the_resolved_annotations_in_field_order():
    hints = wire.field_hints(Outer)
    assert list(hints) == ["count", "ratio", "blob", "tags", "inner", "maybe", "flag"]
    assert hints["inner"] is Inner and hints["maybe"] == int | None
    assert hints["tags"] == tuple[str, ...]


@wire.message("test.record")
class Record:
    record: dict[str, Any] = wire.field(max_len=4)


def test_ext_types_and_deep_nesting_are_refused_even_in_free_form_fields():
    ext = msgpack.packb({"type": "test.record", "record": {"e": msgpack.ExtType(1, b"x")}})
    with pytest.raises(SchemaError, match="ext type"):
        wire.decode(ext, Record)
    deep = b"\x82\xa4type\xabtest.record\xa6record\x81\xa1e" + b"\x91" * 100_000 + b"\x90"
    with pytest.raises(ProtocolError, match="nested too deeply"):
        wire.decode(deep, Record)
    assert wire.decode(msgpack.packb(wire.to_wire(Record({"e": [1, {"x": b"y"}]}))), Record) \
        == Record({"e": [1, {"x": b"y"}]})


def test_unknown_fields_are_their_own_schema_error_at_any_depth():
    for fields in ({"surprise": 1}, {"inner": {"type": "test.inner", "name": "x", "extra": 1}}):
        with pytest.raises(UnknownField):
            wire.decode(_raw(**fields), Outer)


def test_a_float_without_a_range_must_be_finite():
    with pytest.raises(SchemaError, match="infinity"):
        wire.decode(_raw(ratio=float("inf")), Outer)
