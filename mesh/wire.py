"""Wire format shared by every PoolAI protocol: frames, msgpack codec and message schemas.

A frame is an unsigned LEB128 varint length followed by that many bytes of
msgpack. The length is checked against the caller's limit *before* any buffer
is allocated for the body. The body is one msgpack map whose ``"type"`` key
names the message; every other key is a field of a frozen dataclass declared
with :func:`message`. Decoding rejects unknown, missing, mistyped and
oversized fields with :class:`~poolai.mesh.errors.SchemaError`.

This module does no I/O: :class:`FrameDecoder` turns bytes into frames, and
:mod:`poolai.mesh.rpc` drives it over trio streams.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack

from poolai.mesh.errors import FrameTooLarge, ProtocolError, SchemaError, TruncatedFrame

MAX_VARINT_BYTES = 10
DEFAULT_MAX_FRAME = 1 << 20  # 1 MiB: control messages; bulk data moves on raw streams
MAX_TYPE_LEN = 64
DEFAULT_MAX_STR = 4096
DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_MAX_ITEMS = 1024

T = TypeVar("T")

# --------------------------------------------------------------------------- framing


def encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def frame(body: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Prefix ``body`` with its length; refuse to build a frame the peer would reject."""
    if len(body) > max_frame:
        raise FrameTooLarge(f"frame of {len(body)} bytes exceeds the limit of {max_frame}")
    return encode_varint(len(body)) + body


class FrameDecoder:
    """Incremental frame parser: ``feed(bytes)`` then ``next_frame()`` until it returns None.

    Holds at most one partial frame (bounded by ``max_frame``) plus whatever the
    last ``feed`` delivered. ``close()`` marks end of stream and raises
    :class:`TruncatedFrame` if a partial frame is pending.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None  # body length once the header is parsed

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes buffered but not yet returned as a frame."""
        return len(self._buf)

    def next_frame(self) -> bytes | None:
        if self._need is None:
            length = self._parse_header()
            if length is None:
                return None
            self._need = length
        if len(self._buf) < self._need:
            return None
        body = bytes(self._buf[: self._need])
        del self._buf[: self._need]
        self._need = None
        return body

    def close(self) -> None:
        if self._buf or self._need is not None:
            raise TruncatedFrame("stream ended inside a frame")

    def _parse_header(self) -> int | None:
        value = 0
        for i, byte in enumerate(self._buf[:MAX_VARINT_BYTES]):
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if value > self.max_frame:
                    raise FrameTooLarge(
                        f"peer announced a frame of {value} bytes, limit is {self.max_frame}"
                    )
                del self._buf[: i + 1]
                return value
        if len(self._buf) >= MAX_VARINT_BYTES:
            raise ProtocolError("frame length prefix is not a valid varint")
        return None


# --------------------------------------------------------------------------- schemas


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Per-field bounds, given with :func:`field`."""

    max_len: int | None = None  # str/bytes length, or item count of a list/dict
    min: float | None = None
    max: float | None = None


def field(
    *,
    max_len: int | None = None,
    min: float | None = None,  # noqa: A002 - reads naturally at the call site
    max: float | None = None,  # noqa: A002
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with wire limits, e.g. ``name: str = field(max_len=64)``."""
    meta = {"wire": Limits(max_len=max_len, min=min, max=max)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_REGISTRY_ATTR = "__wire_type__"
_FIELDS_ATTR = "__wire_fields__"


def message(type_name: str) -> Callable[[type[T]], type[T]]:
    """Declare a wire message: wraps the class as a frozen, slotted dataclass with a type tag."""
    if not type_name or len(type_name) > MAX_TYPE_LEN:
        raise ValueError("message type name must be 1..64 characters")

    def wrap(cls: type[T]) -> type[T]:
        dc = dataclasses.dataclass(frozen=True, slots=True)(cls)
        setattr(dc, _REGISTRY_ATTR, type_name)
        return dc

    return wrap


def type_name_of(cls_or_obj: Any) -> str:
    name = getattr(cls_or_obj, _REGISTRY_ATTR, None)
    if name is None:
        raise TypeError(f"{cls_or_obj!r} is not a wire message")
    return name


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    hint: Any
    limits: Limits
    required: bool
    default: Any


def _fields(cls: type) -> tuple[_FieldSpec, ...]:
    cached = cls.__dict__.get(_FIELDS_ATTR)
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory
        specs.append(
            _FieldSpec(f.name, hints[f.name], f.metadata.get("wire", Limits()), required, default)
        )
    result = tuple(specs)
    # Slotted frozen dataclasses refuse new attributes on instances, not on the class.
    type.__setattr__(cls, _FIELDS_ATTR, result)
    return result


def field_hints(cls: type) -> dict[str, Any]:
    """A message class's field names and their type hints (resolved once per class)."""
    return {spec.name: spec.hint for spec in _fields(cls)}


def to_wire(msg: Any) -> dict[str, Any]:
    """The msgpack-ready map of a message, including its type tag."""
    out: dict[str, Any] = {"type": type_name_of(msg)}
    for spec in _fields(type(msg)):
        out[spec.name] = _dump(getattr(msg, spec.name))
    return out


def _dump(value: Any) -> Any:
    if hasattr(value, _REGISTRY_ATTR):
        return to_wire(value)
    if isinstance(value, tuple | list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


def from_wire(cls: type[T], data: Any, *, path: str = "") -> T:
    """Validate a decoded map against ``cls`` and build it; raises SchemaError."""
    where = path or type_name_of(cls)
    if not isinstance(data, dict):
        raise SchemaError(f"{where}: expected a map, got {type(data).__name__}")
    tag = data.get("type")
    if tag != type_name_of(cls):
        raise SchemaError(f"{where}: expected message type {type_name_of(cls)!r}, got {tag!r}")
    specs = _fields(cls)
    known = {s.name for s in specs} | {"type"}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise SchemaError(f"{where}: unknown field(s) {', '.join(unknown)}")
    kwargs = {}
    for spec in specs:
        if spec.name not in data:
            if spec.required:
                raise SchemaError(f"{where}: missing field {spec.name!r}")
            continue
        kwargs[spec.name] = _check(spec.hint, spec.limits, data[spec.name], f"{where}.{spec.name}")
    return cls(**kwargs)


def _check(hint: Any, limits: Limits, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _check(option, limits, value, where)
            except SchemaError as exc:
                errors.append(str(exc))
        raise SchemaError(errors[0] if len(errors) == 1 else f"{where}: no variant matched")
    if hint is Any:
        return value
    if isinstance(hint, type) and hasattr(hint, _REGISTRY_ATTR):
        return from_wire(hint, value, path=where)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise SchemaError(f"{where}: expected a list, got {type(value).__name__}")
        _check_len(len(value), limits.max_len or DEFAULT_MAX_ITEMS, where, "items")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise SchemaError(f"{where}: expected {len(args)} items, got {len(value)}")
            pairs = enumerate(zip(args, value, strict=True))
            return tuple(_check(a, Limits(), v, f"{where}[{i}]") for i, (a, v) in pairs)
        item = args[0] if args else Any
        items = [_check(item, Limits(), v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected a map, got {type(value).__name__}")
        _check_len(len(value), limits.max_len or DEFAULT_MAX_ITEMS, where, "entries")
        key_t, val_t = args
        return {
            _check(key_t, Limits(max_len=256), k, f"{where} key"):
            _check(val_t, Limits(), v, f"{where}[{k!r}]")
            for k, v in value.items()
        }
    if hint is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{where}: expected a bool, got {type(value).__name__}")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise SchemaError(f"{where}: expected an int, got {type(value).__name__}")
        _check_range(value, limits, where)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SchemaError(f"{where}: expected a number, got {type(value).__name__}")
        if value != value:  # NaN never compares, so it would slip through every range check
            raise SchemaError(f"{where}: NaN is not allowed")
        _check_range(value, limits, where)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise SchemaError(f"{where}: expected a string, got {type(value).__name__}")
        _check_len(len(value), limits.max_len or DEFAULT_MAX_STR, where, "characters")
        return value
    if hint is bytes:
        if not isinstance(value, bytes):
            raise SchemaError(f"{where}: expected bytes, got {type(value).__name__}")
        _check_len(len(value), limits.max_len or DEFAULT_MAX_BYTES, where, "bytes")
        return value
    raise TypeError(f"unsupported wire type {hint!r} at {where}")


def _check_len(n: int, limit: int, where: str, unit: str) -> None:
    if n > limit:
        raise SchemaError(f"{where}: {n} {unit} exceeds the limit of {limit}")


def _check_range(value: float, limits: Limits, where: str) -> None:
    if limits.min is not None and value < limits.min:
        raise SchemaError(f"{where}: {value} is below the minimum {limits.min}")
    if limits.max is not None and value > limits.max:
        raise SchemaError(f"{where}: {value} is above the maximum {limits.max}")


# --------------------------------------------------------------------------- codec


def encode(msg: Any) -> bytes:
    """A message as msgpack bytes (not yet framed)."""
    return msgpack.packb(to_wire(msg), use_bin_type=True)


def unpack(body: bytes, max_len: int = DEFAULT_MAX_FRAME) -> Any:
    """Bounded msgpack decoding: no container or string may claim more than ``max_len``."""
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=max_len,
            max_str_len=max_len,
            max_array_len=min(max_len, 1 << 16),
            max_map_len=min(max_len, 1 << 16),
            max_ext_len=0,
        )
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        raise ProtocolError(f"malformed msgpack: {exc}") from None


def decode(body: bytes, *classes: type) -> Any:
    """Decode ``body`` as one of ``classes`` (chosen by its type tag); raises ProtocolError."""
    data = unpack(body, len(body))
    if not isinstance(data, dict):
        raise SchemaError(f"expected a message map, got {type(data).__name__}")
    tag = data.get("type")
    for cls in classes:
        if type_name_of(cls) == tag:
            return from_wire(cls, data)
    expected = ", ".join(type_name_of(c) for c in classes)
    raise SchemaError(f"unexpected message type {tag!r} (expected {expected})")


# --------------------------------------------------------------------------- shared messages


ERROR_CODES = frozenset(
    {"bad_request", "unsupported", "busy", "not_found", "refused", "internal", "timeout"}
)


@message("error")
class ErrorReply:
    """A request could not be served; ``code`` is one of :data:`ERROR_CODES`."""

    code: str = field(max_len=32)
    message: str = field(max_len=512)
