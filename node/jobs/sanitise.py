"""Sanitisers for untrusted program files: ``torch.export`` .pt2 archives and safetensors headers.

``torch.export.load`` is not safe on untrusted bytes (see ``docs/jobs.md``): it
unpickles sample inputs, ``use_pickle`` weights, ``custom_obj_*``/``opaque_obj_*``
constants, legacy ``*.pt`` members and the pre-2.8 format; it dlopens
``data/aotinductor/`` libraries; it ``sympify``s (``eval``) every ``expr_str``;
it ``exec``s ``guards_code``; FX pastes placeholder names into generated
source; and any graph node may call any ``torch.ops`` operator
(``aten.from_file`` reads files). So :func:`sanitise_pt2` never hands torch the
submitted archive. It parses the zip and every JSON member with the standard
library only, refuses anything outside an allow-list, and writes a *new*
archive from the validated values: re-serialised JSON, node metadata
dropped, sample inputs replaced by ``b""``.

Layout accepted (torch 2.13, ``archive_format`` pt2, ``archive_version`` 0),
every member under one root folder ``<root>/``::

    archive_format  archive_version  byteorder  .data/version  .data/serialization_id
    models/model.json                               the graph (JSON, schema 8.x)
    data/weights/model_weights_config.json          {"config": {fqn: payload meta}}
    data/weights/weight_<n>                         raw little-endian tensor bytes
    data/constants/model_constants_config.json      same, for tensor constants only
    data/constants/tensor_<n>
    data/sample_inputs/model.pt                     pickled; replaced by b""

This module never imports torch: a refusal happens before any torch call.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from poolai.node.jobs.spec import InvalidJob, TensorInfo


class UnsafeProgram(InvalidJob):
    """A program file was refused by the sanitiser; the message says which rule it broke."""


@dataclass(frozen=True, slots=True)
class Pt2Limits:
    """Caps for one archive. Declared zip sizes are checked first, then every read is capped."""

    max_archive_bytes: int = 1 << 30
    max_members: int = 4096
    max_member_bytes: int = 512 << 20
    max_total_bytes: int = 1 << 30
    max_json_bytes: int = 16 << 20
    # Deflate reaches ~1000:1 on runs of zeros; an exported program's JSON compresses ~10:1
    # and its constants less. A member past ratio_from_bytes that claims more is refused
    # before it is inflated: two 500 MiB members of zeros fit in a 1 MB archive.
    max_ratio: int = 200
    ratio_from_bytes: int = 1 << 20
    max_json_depth: int = 64
    max_nodes: int = 20_000
    max_expr_len: int = 512


DEFAULT_LIMITS = Pt2Limits()

# Graph node targets a worker will run: the ATen ops that MLPs and transformers export to
# (before and after run_decompositions), and the SymInt arithmetic of dynamic batch sizes.
# Anything else, aten.from_file or torch.serialization.os.system included, is refused.
ALLOWED_OPS: frozenset[str] = frozenset(
    ["_operator.mul", "_operator.add", "_operator.sub", "_operator.floordiv",
     "torch.ops.aten.sym_size.int", "torch.ops.aten.sym_numel.default"]
    + ["torch.ops.aten." + op for op in (
        # linear algebra
        "linear.default", "addmm.default", "mm.default", "bmm.default", "matmul.default",
        "baddbmm.default", "t.default",
        # activations and normalisation
        "relu.default", "gelu.default", "silu.default", "tanh.default", "sigmoid.default",
        "softmax.int", "_softmax.default", "log_softmax.int", "_log_softmax.default",
        "layer_norm.default", "native_layer_norm.default", "rms_norm.default",
        "scaled_dot_product_attention.default", "dropout.default",
        "embedding.default",
        # shapes and views
        "view.default", "reshape.default", "_unsafe_view.default", "permute.default",
        "transpose.int", "contiguous.default", "clone.default", "expand.default",
        "unsqueeze.default", "squeeze.dim", "squeeze.dims", "squeeze.default",
        "flatten.using_ints", "unflatten.int", "select.int", "slice.Tensor",
        "split.Tensor", "split_with_sizes.default", "chunk.default", "cat.default",
        "stack.default", "alias.default", "detach.default",
        # elementwise arithmetic and reductions
        "add.Tensor", "add.Scalar", "sub.Tensor", "sub.Scalar", "mul.Tensor", "mul.Scalar",
        "div.Tensor", "div.Scalar", "neg.default", "pow.Tensor_Scalar", "sqrt.default",
        "rsqrt.default", "exp.default", "mean.dim", "sum.dim_IntList", "amax.default",
        "where.self", "masked_fill.Scalar", "triu.default", "tril.default",
        # masks (what run_decompositions makes of a causal scaled_dot_product_attention)
        "eq.Scalar", "ne.Scalar", "lt.Scalar", "le.Scalar", "gt.Scalar", "ge.Scalar",
        "eq.Tensor", "ne.Tensor", "lt.Tensor", "le.Tensor", "gt.Tensor", "ge.Tensor",
        "logical_and.default", "logical_or.default", "logical_not.default", "any.dim",
        # creation and dtype movement (sizes are bounded by the worker's RLIMIT_AS)
        "arange.default", "arange.start", "arange.start_step", "full.default",
        "zeros.default", "ones.default", "full_like.default", "zeros_like.default",
        "ones_like.default", "scalar_tensor.default", "_to_copy.default", "to.dtype", "type_as.default",
        "lift_fresh_copy.default", "_assert_tensor_metadata.default",
        "_assert_scalar.default", "sym_constrain_range_for_size.default",
    )]
)

# Names relative to the archive's root folder. Everything else is refused, including
# data/aotinductor/, extra/, data/weights/<model>.pt and the pre-2.8 top-level members.
_SMALL_MEMBERS = {"archive_format": b"pt2", "archive_version": b"0", "byteorder": b"little"}
_MODEL_JSON = "models/model.json"
_WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
_CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
_SAMPLE_INPUTS = "data/sample_inputs/model.pt"
_MEMBER = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/model\.json|data/weights/model_weights_config\.json"
    r"|data/constants/model_constants_config\.json|data/sample_inputs/model\.pt"
    r"|data/weights/weight_[0-9]{1,6}|data/constants/tensor_[0-9]{1,6}")
_ROOT = re.compile(r"([A-Za-z0-9_]{1,64})/(.{1,256})", re.S)
_REBUILT_ROOT = "archive"

_TOKEN = re.compile(r"[A-Za-z0-9_.+\-]{0,256}")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
_FQN = re.compile(r"[A-Za-z0-9_]{1,128}(\.[A-Za-z0-9_]{1,128}){0,31}")
_OP_STRING = re.compile(r"[A-Za-z0-9_,.\->]{0,128}")
_NAME_KEYS = {"name", "as_name"}
_PYTREE_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict"}
_FORBIDDEN_KEYS = {"as_custom_obj", "custom_obj", "as_custom_objs"}

# expr_str is passed to sympy.sympify, which evaluates it as Python. torch writes it with
# sympy's srepr (nested constructor calls), so only that form is accepted: calls of the
# constructors below, integers, quoted symbol names and assumption keywords. Pow takes
# a symbol and a small integer exponent only, so no expression makes sympy compute a
# huge number (nested powers of constants would).
_EXPR_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|(-?[0-9]{1,12})|'([a-z][0-9]{1,9})'|([(),=]))")
_EXPR_CALLS = frozenset({
    "Symbol", "Integer", "Rational", "Add", "Mul", "Pow", "Min", "Max", "Mod", "FloorDiv",
    "CeilToInt", "FloorToInt", "TruncToInt", "CleanDiv", "PythonMod", "IntTrueDiv",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "LessThan", "StrictGreaterThan",
    "GreaterThan", "Equality", "Unequality", "And", "Or", "Not",
})
_EXPR_ASSUMPTIONS = frozenset({"positive", "integer", "nonnegative", "real", "finite"})
_INT_LITERAL = re.compile(r"-?[0-9]{1,12}")  # a quoted name is the other kind of literal
_EXPR_MAX_DEPTH = 32
_MAX_EXPONENT = 8

# serde ScalarType codes -> element size (complex and float8 types are not accepted).
_ELEMENT_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 12: 1, 13: 2}
_STRIDED = 7


@dataclass(frozen=True, slots=True)
class SanitisedPt2:
    """A rebuilt archive that is safe to pass to ``torch.export.load(BytesIO(archive))``."""

    archive: bytes
    input_names: tuple[str, ...]  # positional forward arguments, in order
    parameter_names: tuple[str, ...]  # keys of the weights the program expects
    ops: frozenset[str]  # every node target found, all on ALLOWED_OPS
    stripped: tuple[str, ...]  # what was removed or emptied, for the job log


def _refuse(message: str) -> UnsafeProgram:
    return UnsafeProgram(f"unsafe .pt2 archive: {message}")


# ----------------------------------------------------------------------------- zip layer


def _read_members(data: bytes, limits: Pt2Limits) -> dict[str, bytes]:
    if len(data) > limits.max_archive_bytes:
        raise _refuse(f"archive of {len(data)} bytes exceeds {limits.max_archive_bytes}")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise _refuse(f"not a zip archive ({exc})") from None
    if len(infos) > limits.max_members:
        raise _refuse(f"{len(infos)} members exceed {limits.max_members}")
    roots, total, members = set(), 0, {}
    for info in infos:
        match = _ROOT.fullmatch(info.filename)
        if match is None:
            if info.filename in ("version", "serialized_exported_program.json") or \
                    info.filename.startswith("serialized_"):
                raise _refuse("the pre-2.8 format (pickled state) is not accepted")
            raise _refuse(f"member {info.filename[:80]!r} is not under one root folder")
        roots.add(match[1])
        name = match[2]
        if name.startswith("data/aotinductor/"):
            raise _refuse(f"AOTInductor member {name[:80]!r} (a native library) is not accepted")
        if name.startswith(("data/constants/custom_obj_", "data/constants/opaque_obj_")):
            raise _refuse(f"pickled object constant {name!r} is not accepted")
        if re.fullmatch(r"data/(weights|constants)/[^/]*\.pt", name):
            raise _refuse(f"legacy pickled member {name!r} is not accepted")
        if _MEMBER.fullmatch(name) is None:
            raise _refuse(f"member {name[:80]!r} is not on the allow-list")
        if name in members:
            raise _refuse(f"duplicate member {name!r}")
        if info.flag_bits & 0x1:
            raise _refuse(f"member {name!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _refuse(f"member {name!r} uses compression method {info.compress_type}")
        cap = limits.max_json_bytes if name.endswith(".json") else limits.max_member_bytes
        if info.file_size > cap:
            raise _refuse(f"member {name!r} declares {info.file_size} bytes, over {cap}")
        total += info.file_size
        if total > limits.max_total_bytes:
            raise _refuse(f"members declare over {limits.max_total_bytes} bytes in total")
        if info.file_size > limits.ratio_from_bytes and \
                info.file_size > limits.max_ratio * max(1, info.compress_size):
            raise _refuse(f"member {name!r} inflates {info.compress_size} bytes to {info.file_size}, "
                          f"more than {limits.max_ratio}:1")
        if name == _SAMPLE_INPUTS:
            members[name] = b""  # a pickle: never read, never passed on
            continue
        try:
            with zf.open(info) as f:
                body = f.read(cap + 1)  # never trust the declared size alone
        except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError,
                NotImplementedError) as exc:  # zlib.error: a corrupt deflate stream
            raise _refuse(f"member {name!r} cannot be read ({exc})") from None
        if len(body) != info.file_size:
            raise _refuse(f"member {name!r} holds {len(body)} bytes, declares {info.file_size}")
        members[name] = body
    if len(roots) > 1:
        raise _refuse(f"members under several root folders {sorted(roots)[:4]}")
    for name, value in _SMALL_MEMBERS.items():
        if members.get(name) != value:
            raise _refuse(f"{name} must be {value.decode()!r}")
    for name in (_MODEL_JSON, _WEIGHTS_CONFIG, _CONSTANTS_CONFIG):
        if name not in members:
            raise _refuse(f"missing member {name!r}")
    if not re.fullmatch(rb"[0-9]{1,4}\n?", members.get(".data/version", b"6\n")):
        raise _refuse(".data/version is malformed")
    if not re.fullmatch(rb"[0-9]{0,64}", members.get(".data/serialization_id", b"")):
        raise _refuse(".data/serialization_id is malformed")
    return members


def _load_json(name: str, body: bytes | str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise _refuse(f"{name} is not valid JSON ({str(exc)[:80]})") from None


# ----------------------------------------------------------------------------- payload configs


def _as_int(value: object, what: str, lo: int, hi: int) -> int:
    if not (isinstance(value, dict) and set(value) == {"as_int"} and type(value["as_int"]) is int):
        raise _refuse(f"{what} must be a concrete integer")
    n = value["as_int"]
    if not lo <= n <= hi:
        raise _refuse(f"{what}={n} is outside [{lo}, {hi}]")
    return n  # type: ignore[no-any-return]


def _check_payload_config(config_name: str, doc: Any, prefix: str,
                          members: dict[str, bytes], limits: Pt2Limits) -> list[str]:
    if not (isinstance(doc, dict) and set(doc) == {"config"} and isinstance(doc["config"], dict)):
        raise _refuse(f"{config_name} must be {{\"config\": {{...}}}}")
    base = config_name.rsplit("/", 1)[0] + "/"
    for fqn, meta in doc["config"].items():
        where = f"{config_name}[{fqn[:80]!r}]"
        if not _FQN.fullmatch(fqn):
            raise _refuse(f"{where}: bad name")
        if not isinstance(meta, dict) or set(meta) - {"path_name", "is_param", "use_pickle",
                                                      "tensor_meta"}:
            raise _refuse(f"{where}: unexpected fields")
        if meta.get("use_pickle") is not False:
            raise _refuse(f"{where}: use_pickle payloads are not accepted")
        path = meta.get("path_name")
        if not isinstance(path, str) or not re.fullmatch(prefix + r"[0-9]{1,6}", path):
            if isinstance(path, str) and path.startswith(("custom_obj_", "opaque_obj_")):
                raise _refuse(f"{where}: pickled object constant {path!r} is not accepted")
            raise _refuse(f"{where}: path_name {str(path)[:40]!r} is not {prefix}<n>")
        if type(meta.get("is_param", False)) is not bool:
            raise _refuse(f"{where}: is_param must be a boolean")
        if base + path not in members:
            raise _refuse(f"{where}: member {path!r} is missing")
        _check_tensor_meta(where, meta.get("tensor_meta"), len(members[base + path]), limits)
    return list(doc["config"])


def _check_tensor_meta(where: str, tm: Any, nbytes: int, limits: Pt2Limits) -> None:
    fields = {"dtype", "sizes", "requires_grad", "device", "strides", "storage_offset", "layout"}
    if not isinstance(tm, dict) or set(tm) != fields:
        raise _refuse(f"{where}: tensor_meta must have exactly {sorted(fields)}")
    elem = _ELEMENT_SIZE.get(tm["dtype"]) if type(tm["dtype"]) is int else None
    if elem is None:
        raise _refuse(f"{where}: dtype {tm['dtype']!r} is not accepted")
    if tm["layout"] != _STRIDED or type(tm["requires_grad"]) is not bool:
        raise _refuse(f"{where}: only strided tensors are accepted")
    if tm["device"] != {"type": "cpu", "index": None}:
        raise _refuse(f"{where}: stored tensors must be on the cpu")
    if not (isinstance(tm["sizes"], list) and isinstance(tm["strides"], list)
            and len(tm["sizes"]) == len(tm["strides"]) <= 8):
        raise _refuse(f"{where}: sizes and strides must be lists of equal length (at most 8)")
    cap = limits.max_member_bytes
    sizes = [_as_int(s, f"{where} size", 0, cap) for s in tm["sizes"]]
    strides = [_as_int(s, f"{where} stride", 0, cap) for s in tm["strides"]]
    offset = _as_int(tm["storage_offset"], f"{where} storage_offset", 0, cap)
    if nbytes % elem:
        raise _refuse(f"{where}: payload of {nbytes} bytes is not whole elements")
    if math.prod(sizes) == 0:
        return
    # torch.zeros(sizes) is allocated for an empty payload: refuse that instead of a size bomb.
    last = offset + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True))
    if last >= nbytes // elem:
        raise _refuse(f"{where}: the view reaches element {last} of a {nbytes // elem} payload")


# ----------------------------------------------------------------------------- the graph


class _ExprParser:
    """Recursive descent over srepr output; raises on anything outside the accepted form."""

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text.rstrip()):
            m = _EXPR_TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                raise self.error(text, f"a disallowed character at {pos}")
            kind = ("name", "int", "str", "punct")[m.lastindex - 1]  # type: ignore[operator]
            self.tokens.append((kind, m[m.lastindex]))  # type: ignore[index]
            pos = m.end()
        self.text, self.i = text, 0

    @staticmethod
    def error(text: str, why: str) -> UnsafeProgram:
        return _refuse(f"expr_str {text[:80]!r}: {why}")

    def take(self, kind: str, value: str | None = None) -> str:
        if self.i >= len(self.tokens):
            raise self.error(self.text, "ends early")
        k, v = self.tokens[self.i]
        if k != kind or (value is not None and v != value):
            raise self.error(self.text, f"unexpected {v[:40]!r}")
        self.i += 1
        return v

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def call(self, depth: int) -> tuple[str, list[str]]:
        """Parses NAME(args); returns the name and the int/str literal arguments it took."""
        if depth > _EXPR_MAX_DEPTH:
            raise self.error(self.text, "nests too deeply")
        name = self.take("name")
        if name not in _EXPR_CALLS:
            raise self.error(self.text, f"uses the name {name[:40]!r}")
        self.take("punct", "(")
        literals: list[str] = []
        inner: list[tuple[str, list[str]]] = []
        while self.peek() != ("punct", ")"):
            if literals or inner:
                self.take("punct", ",")
            tok = self.peek()
            if tok and tok[0] == "name" and self.peek(1) == ("punct", "="):
                if self.take("name") not in _EXPR_ASSUMPTIONS:
                    raise self.error(self.text, "uses an unknown assumption")
                self.take("punct", "=")
                if self.take("name") not in ("True", "False"):
                    raise self.error(self.text, "an assumption must be True or False")
            elif tok and tok[0] in ("int", "str"):
                literals.append(self.take(tok[0]))
            else:
                inner.append(self.call(depth + 1))
        self.take("punct", ")")
        if name == "Pow":  # a symbol to a small power: no constant can blow up
            base, exponent = inner if len(inner) == 2 else (("", []), ("", []))
            if base[0] != "Symbol" or exponent[0] != "Integer" \
                    or abs(int(exponent[1][0])) > _MAX_EXPONENT:
                raise self.error(self.text, f"Pow takes a symbol and an integer exponent of at "
                                            f"most {_MAX_EXPONENT}")
        if name in ("Integer", "Symbol") and len(literals) != 1:
            raise self.error(self.text, f"{name} takes one literal")
        if name == "Integer" and not _INT_LITERAL.fullmatch(literals[0]):
            raise self.error(self.text, "Integer takes an integer")
        return name, literals


def _check_expr(expr: Any, limits: Pt2Limits) -> None:
    if not isinstance(expr, str) or len(expr) > limits.max_expr_len:
        raise _refuse("expr_str must be a string of at most "
                      f"{limits.max_expr_len} characters")
    parser = _ExprParser(expr)
    parser.call(0)
    if parser.i != len(parser.tokens):
        raise parser.error(expr, "has text after the expression")


def _check_spec(text: Any) -> None:
    """A pytree spec string (module_call_graph in_spec/out_spec): plain containers only."""
    if not isinstance(text, str) or len(text) > 65536:
        raise _refuse("a pytree spec must be a string")
    doc = _load_json("pytree spec", text)  # not re-encoded: it may hold lone surrogates
    root = doc[1] if isinstance(doc, list) and len(doc) == 2 else None
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict) or set(node) != {"type", "context", "children_spec"} \
                or depth > 32:
            raise _refuse("a pytree spec is malformed")
        if node["type"] not in _PYTREE_TYPES:
            raise _refuse(f"pytree type {str(node['type'])[:60]!r} is not accepted")
        if node["context"] is not None and not isinstance(node["context"], str):
            raise _refuse("a pytree context must be a string")
        if not isinstance(node["children_spec"], list):
            raise _refuse("a pytree spec is malformed")
        stack.extend((child, depth + 1) for child in node["children_spec"])


class _GraphChecker:
    """Walks models/model.json: every key and string is checked by the field it sits in."""

    def __init__(self, limits: Pt2Limits) -> None:
        self.limits = limits
        self.ops: set[str] = set()
        self.nodes = 0

    def walk(self, value: Any, key: str, depth: int) -> Any:
        if depth > self.limits.max_json_depth:
            raise _refuse("model.json nests too deeply")
        if isinstance(value, dict):
            return self._walk_map(value, key, depth)
        if isinstance(value, list):
            return [self.walk(v, key, depth + 1) for v in value]
        if isinstance(value, str):
            self._check_string(value, key)
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > 1 << 63:
            raise _refuse(f"integer in {key!r} is out of range")
        return value

    def _walk_map(self, value: dict[str, Any], key: str, depth: int) -> dict[str, Any]:
        out = {}
        for k, v in value.items():
            if not _TOKEN.fullmatch(k) or not k:
                raise _refuse(f"key {k[:60]!r} is not a plain name")
            if k in _FORBIDDEN_KEYS:
                raise _refuse(f"custom objects ({k}) are not accepted")
            if k == "metadata":
                out[k] = {}  # stack traces and module paths: not needed, never parsed
                continue
            if k == "guards_code" and v != []:
                raise _refuse("guards_code is executed by torch and must be empty")
            if k in ("custom_obj_values", "treespec_namedtuple_fields") and v != {}:
                raise _refuse(f"{k} must be empty")
            if k == "target" or k == "as_operator":
                if not isinstance(v, str) or v not in ALLOWED_OPS:
                    raise _refuse(f"operator {str(v)[:80]!r} is not on the allow-list")
                self.ops.add(v)
                if k == "target":
                    self.nodes += 1
                    if self.nodes > self.limits.max_nodes:
                        raise _refuse(f"more than {self.limits.max_nodes} graph nodes")
                out[k] = v
                continue
            if k == "expr_str":
                _check_expr(v, self.limits)
                out[k] = v
                continue
            if k in ("in_spec", "out_spec"):
                _check_spec(v)
                out[k] = v
                continue
            out[k] = self.walk(v, k, depth + 1)
        return out

    def _check_string(self, value: str, key: str) -> None:
        if key in _NAME_KEYS or key == "forward_arg_names":
            ok = _IDENT.fullmatch(value) is not None
        elif key in ("parameter_name", "buffer_name", "tensor_constant_name", "fqn"):
            ok = (key == "fqn" and value == "") or _FQN.fullmatch(value) is not None
        elif key == "as_string":
            ok = _OP_STRING.fullmatch(value) is not None
        else:
            ok = _TOKEN.fullmatch(value) is not None
        if not ok:
            raise _refuse(f"string {value[:60]!r} in {key!r} is not accepted")


def _check_model(doc: Any, limits: Pt2Limits) -> tuple[dict[str, Any], set[str], tuple[str, ...]]:
    required = {"graph_module", "opset_version", "range_constraints", "schema_version"}
    if not isinstance(doc, dict) or not required <= set(doc):
        raise _refuse("models/model.json is not an exported program")
    version = doc["schema_version"]
    if not (isinstance(version, dict) and version.get("major") == 8):
        raise _refuse(f"schema version {str(version)[:60]} is not 8.x")
    checker = _GraphChecker(limits)
    clean = checker.walk(doc, "", 0)
    gm = clean["graph_module"]
    if not isinstance(gm, dict) or not isinstance(gm.get("module_call_graph"), list):
        raise _refuse("graph_module has no module_call_graph")
    entry = next((e for e in gm["module_call_graph"] if isinstance(e, dict) and e.get("fqn") == ""),
                 None)
    signature = entry.get("signature") if entry else None
    names = signature.get("forward_arg_names") if isinstance(signature, dict) else None
    if not isinstance(names, list) or len(names) > 64:
        raise _refuse("the top-level signature has no forward_arg_names")
    return clean, checker.ops, tuple(names)


# ----------------------------------------------------------------------------- entry point


def sanitise_pt2(data: bytes, limits: Pt2Limits = DEFAULT_LIMITS) -> SanitisedPt2:
    """Validate a submitted .pt2 archive and rebuild it from the validated parts.

    Raises :class:`UnsafeProgram` naming the rule that failed. Uses no torch.
    """
    members = _read_members(data, limits)
    doc, ops, input_names = _check_model(_load_json(_MODEL_JSON, members[_MODEL_JSON]), limits)
    weights_doc = _load_json(_WEIGHTS_CONFIG, members[_WEIGHTS_CONFIG])
    constants_doc = _load_json(_CONSTANTS_CONFIG, members[_CONSTANTS_CONFIG])
    parameter_names = _check_payload_config(_WEIGHTS_CONFIG, weights_doc, "weight_", members,
                                            limits)
    _check_payload_config(_CONSTANTS_CONFIG, constants_doc, "tensor_", members, limits)

    rebuilt = dict(members)
    rebuilt[_MODEL_JSON] = json.dumps(doc).encode()
    rebuilt[_WEIGHTS_CONFIG] = json.dumps(weights_doc).encode()
    rebuilt[_CONSTANTS_CONFIG] = json.dumps(constants_doc).encode()
    rebuilt[_SAMPLE_INPUTS] = b""  # the deserializer then sets example_inputs to None
    rebuilt.setdefault(".data/version", b"6\n")
    out = io.BytesIO()
    # Not a with-block: a MemoryError in writestr would reach ZipFile.__exit__, whose close()
    # then fails on the half-written member and replaces it with a ValueError.
    zf = zipfile.ZipFile(out, "w", zipfile.ZIP_STORED)
    for name, body in sorted(rebuilt.items()):
        zf.writestr(f"{_REBUILT_ROOT}/{name}", body)
    zf.close()
    return SanitisedPt2(out.getvalue(), input_names, tuple(parameter_names), frozenset(ops),
                        stripped=("node metadata", _SAMPLE_INPUTS))


# ----------------------------------------------------------------------------- safetensors


_SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                       "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_SAFETENSORS_HEADER = 16 << 20


def safetensors_f32(tensors: Mapping[str, tuple[Sequence[int], list[float]]]) -> bytes:
    """A safetensors file of float32 tensors: name -> (shape, values in row-major order)."""
    header: dict[str, Any] = {}
    data = bytearray()
    for name, (shape, values) in tensors.items():
        count = 1
        for dim in shape:
            count *= dim
        if len(values) != count:
            raise ValueError(f"{name}: {len(values)} values for shape {shape}")
        header[name] = {"dtype": "F32", "shape": list(shape),
                        "data_offsets": [len(data), len(data) + 4 * count]}
        data += struct.pack(f"<{count}f", *values)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header so the data is 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw + bytes(data)


def safetensors_header_length(first8: bytes) -> int:
    """The JSON header length from a file's first 8 bytes; raises :class:`InvalidJob`."""
    if len(first8) != 8:
        raise InvalidJob("safetensors file is shorter than its 8-byte header length")
    n = int.from_bytes(first8, "little")
    if n > MAX_SAFETENSORS_HEADER:
        raise InvalidJob(f"safetensors header of {n} bytes is too large")
    return n


def parse_safetensors_header(header: bytes, file_size: int) -> dict[str, TensorInfo]:
    """Names, dtypes and shapes declared by a safetensors JSON header, checked for consistency.

    ``file_size`` is the whole file's size; every tensor's span must lie inside its data
    section and match its shape and dtype. Raises :class:`InvalidJob`.
    """
    try:
        doc = json.loads(header)
    except (ValueError, RecursionError):
        raise InvalidJob("safetensors header is not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidJob("safetensors header is not a map")
    data_len = file_size - 8 - len(header)
    out: dict[str, TensorInfo] = {}
    for name, entry in doc.items():
        if name == "__metadata__":
            continue
        if not (isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}):
            raise InvalidJob(f"safetensors entry {name[:60]!r} is malformed")
        dtype, shape, span = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _SAFETENSORS_DTYPES:
            raise InvalidJob(f"safetensors tensor {name[:60]!r} has unsupported dtype {dtype!r}")
        if not (isinstance(shape, list) and len(shape) <= 8
                and all(type(s) is int and 0 <= s < 1 << 40 for s in shape)):
            raise InvalidJob(f"safetensors tensor {name[:60]!r} has a bad shape")
        if not (isinstance(span, list) and len(span) == 2 and all(type(s) is int for s in span)
                and 0 <= span[0] <= span[1] <= data_len):
            raise InvalidJob(f"safetensors tensor {name[:60]!r} lies outside the file")
        if span[1] - span[0] != math.prod(shape) * _SAFETENSORS_DTYPES[dtype]:
            raise InvalidJob(f"safetensors tensor {name[:60]!r} span does not match its shape")
        out[name] = TensorInfo(dtype, tuple(shape))
    return out
