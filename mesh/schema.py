"""The strict schema layer every peer message goes through: declare once, decode bounded.

A message is a frozen, slotted dataclass declared with :func:`message` (its type tag)
and :func:`field` (its limits)::

    @message("store.fetch")
    class FetchRequest:
        id: bytes = field(max_len=32)
        offset: int = field(min=0, max=MAX_SHARE_SIZE)

Its wire form is one msgpack map: ``"type"`` first, then every field in declaration
order (:func:`to_wire`). Decoding (:func:`decode_message`) never builds an object from
unchecked data. Each class is compiled once into a msgspec ``Struct`` that mirrors it,
limits included (``Annotated`` with ``Meta``), with ``forbid_unknown_fields`` and the
type tag; msgspec parses and checks the bytes against that mirror in C, and only then
decodes the same bytes a second time straight into the dataclass. Every failure is a
:class:`~poolai.mesh.errors.SchemaError` (``UnknownField`` for a field beyond the schema)
or, for bytes that are not msgpack, a :class:`~poolai.mesh.errors.ProtocolError`.

Bounds: msgspec never reads past the body, and checks a declared string, byte string,
array or map length against the bytes left *before* allocating for it, so no length a
peer writes can claim more than the (already size-checked) frame; ext types are
refused; nesting deeper than the interpreter's recursion limit is refused.

Why msgspec (``scripts/bench_schema.py``): decoding a signed capacity advert's body went
from ~190 µs of Python checks to a few µs, and verifying one is now the Ed25519 check.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import sys
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import msgspec

from poolai.mesh.errors import ProtocolError, SchemaError, UnknownField

MAX_TYPE_LEN = 64
DEFAULT_MAX_STR = 4096
DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_MAX_ITEMS = 1024
MAX_KEY_LEN = 256  # a map field's keys
_U64_MAX = (1 << 64) - 1
_FINITE = sys.float_info.max  # a float with no declared range must still be finite

T = TypeVar("T")


# --------------------------------------------------------------------------- declaring


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
_MIRROR_ATTR = "__wire_mirror__"
# Every class declared so far, in declaration order: what a fuzzer or a schema dump walks.
# Classes, not instances, and only ever appended to at import time.
_DECLARED: list[type] = []


def message(type_name: str) -> Callable[[type[T]], type[T]]:
    """Declare a wire message: wraps the class as a frozen, slotted dataclass with a type tag."""
    if not type_name or len(type_name) > MAX_TYPE_LEN:
        raise ValueError("message type name must be 1..64 characters")

    def wrap(cls: type[T]) -> type[T]:
        dc = dataclasses.dataclass(frozen=True, slots=True)(cls)
        setattr(dc, _REGISTRY_ATTR, type_name)
        _DECLARED.append(dc)
        return dc

    return wrap


def declared_messages() -> tuple[type, ...]:
    """Every message class declared with :func:`message` by the modules imported so far.

    In declaration order. A module's messages appear once it is imported, so a caller
    that wants all of a package's imports the package's modules first.
    """
    return tuple(_DECLARED)


def is_message(cls_or_obj: Any) -> bool:
    return hasattr(cls_or_obj, _REGISTRY_ATTR)


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


def _fields(cls: type) -> tuple[_FieldSpec, ...]:
    cached = cls.__dict__.get(_FIELDS_ATTR)
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls)
    result = tuple(
        _FieldSpec(f.name, hints[f.name], f.metadata.get("wire", Limits()),
                   f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        for f in dataclasses.fields(cls)
    )
    # Slotted frozen dataclasses refuse new attributes on instances, not on the class.
    type.__setattr__(cls, _FIELDS_ATTR, result)
    return result


def field_hints(cls: type) -> dict[str, Any]:
    """A message class's field names and their type hints (resolved once per class)."""
    return {spec.name: spec.hint for spec in _fields(cls)}


# --------------------------------------------------------------------------- encoding


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


# --------------------------------------------------------------------------- the mirror


def _mirror(cls: type) -> type[msgspec.Struct]:
    """The msgspec Struct that checks ``cls``'s wire form: same fields, limits and tag."""
    cached = cls.__dict__.get(_MIRROR_ATTR)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    where = type_name_of(cls)
    specs = []
    for spec in _fields(cls):
        hint = _checked(spec.hint, spec.limits, f"{where}.{spec.name}")
        # Defaults live on the dataclass; the mirror only needs to know a field may be absent.
        specs.append((spec.name, hint) if spec.required else (spec.name, hint, None))
    mirror = msgspec.defstruct(
        f"Wire_{cls.__name__}", specs, tag_field="type", tag=where,
        forbid_unknown_fields=True, kw_only=True, frozen=True, module=cls.__module__,
    )
    type.__setattr__(cls, _MIRROR_ATTR, mirror)
    return mirror


def _checked(hint: Any, limits: Limits, where: str) -> Any:
    """``hint`` with ``limits`` as msgspec constraints (items of a sequence get none)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_checked(a, limits, where) for a in args)]  # noqa: UP007
    if hint is type(None) or hint is Any or hint is bool:
        return hint
    if isinstance(hint, type) and is_message(hint):
        return _mirror(hint)
    if origin in (tuple, list):
        count = msgspec.Meta(max_length=limits.max_len or DEFAULT_MAX_ITEMS)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            items = tuple(_checked(a, Limits(), where) for a in args)
            return Annotated[tuple[items], count]  # type: ignore[valid-type]
        item = _checked(args[0] if args else Any, Limits(), where)
        return Annotated[tuple[item, ...], count]  # type: ignore[valid-type]
    if origin is dict:
        key = _checked(args[0], Limits(max_len=MAX_KEY_LEN), where)
        value = _checked(args[1], Limits(), where)
        return Annotated[dict[key, value], msgspec.Meta(max_length=limits.max_len or DEFAULT_MAX_ITEMS)]  # type: ignore[valid-type]
    if hint is int:
        lo = None if limits.min is None else math.ceil(limits.min)
        hi = None if limits.max is None else math.floor(limits.max)
        if hi is not None and hi >= _U64_MAX:
            hi = None  # msgpack has no larger integer, and msgspec bounds are int64
        if any(b is not None and not -(1 << 63) <= b < 1 << 63 for b in (lo, hi)):
            raise TypeError(f"integer bounds of {where} do not fit in int64")
        return Annotated[int, msgspec.Meta(ge=lo, le=hi)] if (lo, hi) != (None, None) else int
    if hint is float:
        lo = -_FINITE if limits.min is None else float(limits.min)
        hi = _FINITE if limits.max is None else float(limits.max)
        return Annotated[float, msgspec.Meta(ge=lo, le=hi)]  # a range also refuses NaN
    if hint is str:
        return Annotated[str, msgspec.Meta(max_length=limits.max_len or DEFAULT_MAX_STR)]
    if hint is bytes:
        return Annotated[bytes, msgspec.Meta(max_length=limits.max_len or DEFAULT_MAX_BYTES)]
    raise TypeError(f"unsupported wire type {hint!r} at {where}")


class _NoMessage(msgspec.Struct, tag_field="type", tag="\x00"):
    """Joins every union of mirrors, so that a map without a ``"type"`` is refused."""


def _refuse_ext(code: int, data: memoryview) -> Any:
    raise SchemaError(f"msgpack ext type {code} is not allowed")


@functools.lru_cache(maxsize=256)
def _decoders(classes: tuple[type, ...]) -> tuple[msgspec.msgpack.Decoder, dict[type, Any]]:
    """The checking decoder for a set of message classes, and each class's building decoder."""
    mirrors = tuple(_mirror(c) for c in classes)
    check = msgspec.msgpack.Decoder(typing.Union[(*mirrors, _NoMessage)], ext_hook=_refuse_ext)  # noqa: UP007
    build = {m: (c, msgspec.msgpack.Decoder(c, ext_hook=_refuse_ext))
             for m, c in zip(mirrors, classes, strict=True)}
    return check, build


# --------------------------------------------------------------------------- decoding


def decode_message(body: bytes, classes: tuple[type, ...]) -> Any:
    """Check ``body`` against the one of ``classes`` its type tag names, then build it.

    Raises :class:`ProtocolError` when ``body`` is not one msgpack value,
    :class:`UnknownField` for a field the schema lacks, :class:`SchemaError` otherwise.
    """
    check, build = _decoders(classes)
    try:
        checked = check.decode(body)
        if isinstance(checked, _NoMessage):
            raise SchemaError("message type '\\x00' is not a message")
        _, decoder = build[type(checked)]
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        # msgspec checks while it parses, so bytes that also break off early are
        # reported as what they are first: not msgpack.
        _parse(body)
        raise _explain(str(exc), classes) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"malformed msgpack: {exc}") from None
    except RecursionError:
        raise ProtocolError("malformed msgpack: nested too deeply") from None


def _parse(body: bytes) -> None:
    try:
        _ANY.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProtocolError(f"malformed msgpack: {exc}") from None
    except SchemaError:
        pass  # an ext type: well-formed msgpack, refused by the schema


_ANY = msgspec.msgpack.Decoder(ext_hook=_refuse_ext)


def from_wire(cls: type[T], data: Any) -> T:
    """Check an already unpacked map against ``cls`` and build it; raises SchemaError."""
    try:
        msgspec.convert(data, typing.Union[_mirror(cls), _NoMessage])  # noqa: UP007
    except msgspec.ValidationError as exc:
        raise _explain(str(exc), (cls,)) from None
    return msgspec.convert(data, cls)  # type: ignore[no-any-return]


# msgspec's messages ("Expected `int` <= 100 - at `$.count`") in the project's words.
_AT = re.compile(r"^(?P<what>.*?)(?: - at `(?P<path>[^`]*)`(?: in `(?P<outer>[^`]*)`)?)?$", re.S)
_NOUNS = {"int": "an int", "float": "a number", "str": "a string", "bytes": "bytes",
          "bool": "a bool", "array": "a list", "object": "a map", "null": "nil"}


def _explain(text: str, classes: tuple[type, ...]) -> SchemaError:
    match = _AT.match(text)
    assert match is not None  # the pattern matches any text
    what, path = match["what"], match["outer"] or match["path"] or "$"
    if match["outer"]:
        what = f"{what} (a map key)"
    if path == "$.type" or path == "$" and "`type`" in what:
        tag = re.search(r"'(.*)'", what)
        got = repr(tag[1]) if tag else "None"
        expected = ", ".join(type_name_of(c) for c in classes)
        return SchemaError(f"unexpected message type {got} (expected {expected})")
    where = (type_name_of(classes[0]) if len(classes) == 1 else "message") + path[1:]
    if found := re.fullmatch(r"Object contains unknown field `(.*)`", what):
        return UnknownField(f"{where}: unknown field(s) {found[1]}")
    if found := re.fullmatch(r"Object missing required field `(.*)`", what):
        return SchemaError(f"{where}: missing field {found[1]!r}")
    if found := re.fullmatch(r"Expected `(\w+)[^`]*` of length <= (\d+)", what):
        return SchemaError(f"{where}: exceeds the limit of {found[2]} ({found[1]})")
    if found := re.fullmatch(r"Expected `(\w+)` (>=|<=) (\S+)", what):
        if abs(float(found[3])) == _FINITE:
            return SchemaError(f"{where}: NaN or an infinity is not allowed")
        side = "below the minimum" if found[2] == ">=" else "above the maximum"
        return SchemaError(f"{where}: value is {side} {found[3]} (or NaN)")
    if found := re.fullmatch(r"Expected `(\w+)[^`]*`, got `(\w+)`", what):
        return SchemaError(f"{where}: expected {_NOUNS.get(found[1], found[1])}, got {found[2]}")
    return SchemaError(f"{where}: {what}")
