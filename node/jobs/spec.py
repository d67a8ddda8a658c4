"""Job specifications: what a submitter asks a worker to run, and what comes back.

A job names one *program* and the files it needs. Only two program kinds exist:

* :class:`BuiltinProgram`: a model family defined in PoolAI's own code
  (:class:`MLPConfig`, :class:`TransformerConfig`) plus safetensors weights.
  Nothing from the submitter is ever executed, only shaped and multiplied.
* :class:`Pt2Program`: a ``torch.export`` archive that must pass
  :mod:`poolai.node.jobs.sanitise` before torch sees it, plus safetensors weights.

Files travel as :class:`FileRef` (a plain file name, its size and sha256): the
worker re-hashes every file before use, because safetensors has no checksum.

Everything here is pure (no torch, no I/O). Every config is checked in
``__post_init__``, so a spec that exists is a valid spec, whether it came from
:func:`job_from_dict` or from code. The wire form is a plain map
(JSON or msgpack) documented in ``docs/jobs.md``; decoding rejects unknown
keys, wrong types and out-of-range values with :class:`InvalidJob`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SPEC_VERSION = 1
MAX_SPEC_BYTES = 64 * 1024
# The environment variable naming a worker's lifeline pipe (see poolai.node.jobs.runner).
LIFELINE_ENV = "POOLAI_LIFELINE_FD"
MAX_PARAMETERS = 1 << 28  # 1 GiB of float32 weights
MAX_INPUT_ELEMENTS = 1 << 26  # per input tensor
MAX_FILE_BYTES = 8 << 30
MAX_TIMEOUT_S = 24 * 3600.0

_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SUBMITTER = re.compile(r"[A-Za-z0-9_-]{1,128}")


class JobError(Exception):
    """Base class of every error the job layer raises on purpose."""


class InvalidJob(JobError):
    """A job spec, its config or one of its files is malformed or out of bounds.

    It is the submitter's fault: the job is refused and must not be retried.
    """


class Family(StrEnum):
    MLP = "mlp"
    TRANSFORMER = "transformer"


class Mode(StrEnum):
    FORWARD = "forward"
    TRAIN = "train"


class Device(StrEnum):
    CPU = "cpu"
    GPU = "gpu"


class Activation(StrEnum):
    RELU = "relu"
    GELU = "gelu"
    TANH = "tanh"
    SILU = "silu"


class Optimizer(StrEnum):
    SGD = "sgd"
    ADAM = "adam"


class Loss(StrEnum):
    MSE = "mse"
    CROSS_ENTROPY = "cross_entropy"


class JobStatus(StrEnum):
    """How a job ended. Only TIMED_OUT and CRASHED may be retried elsewhere."""

    OK = "ok"
    REFUSED = "refused"  # invalid spec, unsafe program, bad file: never retry
    FAILED = "failed"  # the program raised (bad shapes, strict weights): never retry
    OUT_OF_MEMORY = "out_of_memory"  # stopped at its memory limit: never retry (same cap anywhere)
    TIMED_OUT = "timed_out"  # killed at its wall-clock limit
    CRASHED = "crashed"  # the worker died without writing a result


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise InvalidJob(message)


def _int_in(name: str, value: object, lo: int, hi: int) -> None:
    _check(type(value) is int, f"{name} must be an integer")
    _check(lo <= value <= hi, f"{name}={value} is outside [{lo}, {hi}]")  # type: ignore[operator]


def _float_in(name: str, value: object, lo: float, hi: float, *, open_lo: bool = False) -> None:
    _check(type(value) in (int, float), f"{name} must be a number")
    # Compared as they are: float() of an integer past 1e308 (JSON has no limit) overflows.
    v: float = value  # type: ignore[assignment]
    ok = (type(v) is int or math.isfinite(v)) and (lo < v if open_lo else lo <= v) and v <= hi
    _check(ok, f"{name}={value} is outside {'(' if open_lo else '['}{lo}, {hi}]")


# ----------------------------------------------------------------------------- files


@dataclass(frozen=True, slots=True)
class FileRef:
    """A file in the job's directory: a plain name (no path), its size and sha256 (hex)."""

    name: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and _FILE_NAME.fullmatch(self.name) is not None,
               f"file name {self.name!r} is not a plain file name")
        _check(".." not in self.name, f"file name {self.name!r} contains '..'")
        _check(isinstance(self.sha256, str) and _SHA256.fullmatch(self.sha256) is not None,
               "sha256 must be 64 lowercase hex digits")
        _int_in("file size", self.size, 0, MAX_FILE_BYTES)


# ----------------------------------------------------------------------------- model configs


@dataclass(frozen=True, slots=True)
class MLPConfig:
    """A multi-layer perceptron: Linear layers with ``activation`` between them."""

    in_features: int
    hidden: tuple[int, ...]
    out_features: int
    activation: Activation = Activation.RELU

    def __post_init__(self) -> None:
        _int_in("in_features", self.in_features, 1, 65536)
        _int_in("out_features", self.out_features, 1, 65536)
        _check(isinstance(self.hidden, tuple) and len(self.hidden) <= 16,
               "hidden must be a tuple of at most 16 layer widths")
        for width in self.hidden:
            _int_in("hidden width", width, 1, 65536)
        _check(isinstance(self.activation, Activation), "activation must be an Activation")
        _check(parameter_count(self) <= MAX_PARAMETERS, "the model has too many parameters")

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.in_features, *self.hidden, self.out_features)


@dataclass(frozen=True, slots=True)
class TransformerConfig:
    """A small GPT-style decoder (pre-LayerNorm blocks); ``causal=False`` makes it an encoder."""

    vocab_size: int
    d_model: int
    n_heads: int
    n_layers: int
    d_ff: int
    max_seq_len: int
    causal: bool = True

    def __post_init__(self) -> None:
        _int_in("vocab_size", self.vocab_size, 2, 65536)
        _int_in("d_model", self.d_model, 8, 2048)
        _int_in("n_heads", self.n_heads, 1, 32)
        _int_in("n_layers", self.n_layers, 1, 24)
        _int_in("d_ff", self.d_ff, 8, 8192)
        _int_in("max_seq_len", self.max_seq_len, 1, 4096)
        _check(type(self.causal) is bool, "causal must be a boolean")
        _check(self.d_model % self.n_heads == 0, "d_model must be a multiple of n_heads")
        _check(parameter_count(self) <= MAX_PARAMETERS, "the model has too many parameters")


ModelConfig = MLPConfig | TransformerConfig


def family_of(config: ModelConfig) -> Family:
    return Family.MLP if isinstance(config, MLPConfig) else Family.TRANSFORMER


# ----------------------------------------------------------------------------- tensor signatures


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor as a safetensors header declares it (dtype is the safetensors code, e.g. F32)."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """An expected tensor: dtype plus a shape whose str entries are named free dimensions."""

    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True, slots=True)
class Signature:
    """Exactly these tensors; each free dimension binds one size within its bounds."""

    tensors: Mapping[str, TensorSpec]
    dims: Mapping[str, tuple[int, int]] = field(default_factory=dict)


def weight_signature(config: ModelConfig) -> Signature:
    """The state dict a family expects (mirrors :mod:`poolai.node.jobs.models` exactly)."""
    t: dict[str, TensorSpec] = {}
    if isinstance(config, MLPConfig):
        widths = config.widths
        for i in range(len(widths) - 1):
            t[f"layers.{i}.weight"] = TensorSpec("F32", (widths[i + 1], widths[i]))
            t[f"layers.{i}.bias"] = TensorSpec("F32", (widths[i + 1],))
        return Signature(t)
    v, d, f = config.vocab_size, config.d_model, config.d_ff
    t["tok_emb.weight"] = TensorSpec("F32", (v, d))
    t["pos_emb.weight"] = TensorSpec("F32", (config.max_seq_len, d))
    for i in range(config.n_layers):
        p = f"blocks.{i}."
        for name, shape in (
            ("ln1.weight", (d,)), ("ln1.bias", (d,)),
            ("qkv.weight", (3 * d, d)), ("qkv.bias", (3 * d,)),
            ("proj.weight", (d, d)), ("proj.bias", (d,)),
            ("ln2.weight", (d,)), ("ln2.bias", (d,)),
            ("ff1.weight", (f, d)), ("ff1.bias", (f,)),
            ("ff2.weight", (d, f)), ("ff2.bias", (d,)),
        ):
            t[p + name] = TensorSpec("F32", shape)
    t["ln_f.weight"] = TensorSpec("F32", (d,))
    t["ln_f.bias"] = TensorSpec("F32", (d,))
    t["head.weight"] = TensorSpec("F32", (v, d))
    t["head.bias"] = TensorSpec("F32", (v,))
    return Signature(t)


def parameter_count(config: ModelConfig) -> int:
    total = 0
    for spec in weight_signature(config).tensors.values():
        total += math.prod(spec.shape)  # type: ignore[arg-type]
    return total


MAX_BATCH = 65536


def input_signature(config: ModelConfig, mode: Mode, loss: Loss | None = None) -> Signature:
    """The tensors a job's inputs file must hold for this family and mode."""
    if isinstance(config, MLPConfig):
        t = {"x": TensorSpec("F32", ("batch", config.in_features))}
        if mode is Mode.TRAIN:
            t["target"] = (TensorSpec("I64", ("batch",)) if loss is Loss.CROSS_ENTROPY
                           else TensorSpec("F32", ("batch", config.out_features)))
        return Signature(t, {"batch": (1, MAX_BATCH)})
    lo = 2 if mode is Mode.TRAIN else 1  # next-token loss needs two positions
    return Signature({"tokens": TensorSpec("I64", ("batch", "seq"))},
                     {"batch": (1, 4096), "seq": (lo, config.max_seq_len)})


def output_names(config: ModelConfig) -> tuple[str, ...]:
    return ("y",) if isinstance(config, MLPConfig) else ("logits",)


def check_tensors(actual: Mapping[str, TensorInfo], expected: Signature,
                  what: str) -> dict[str, int]:
    """Check names, dtypes and shapes; return the size bound to each free dimension.

    Raises :class:`InvalidJob` naming the first offending tensor.
    """
    missing = sorted(set(expected.tensors) - set(actual))
    extra = sorted(set(actual) - set(expected.tensors))
    _check(not missing, f"{what}: missing tensors {missing[:8]}")
    _check(not extra, f"{what}: unexpected tensors {extra[:8]}")
    bound: dict[str, int] = {}
    for name, spec in expected.tensors.items():
        info = actual[name]
        _check(info.dtype == spec.dtype,
               f"{what}: {name} has dtype {info.dtype}, expected {spec.dtype}")
        _check(len(info.shape) == len(spec.shape),
               f"{what}: {name} has shape {list(info.shape)}, expected {list(spec.shape)}")
        for size, want in zip(info.shape, spec.shape, strict=True):
            if isinstance(want, int):
                _check(size == want, f"{what}: {name} has shape {list(info.shape)}, "
                                     f"expected {list(spec.shape)}")
                continue
            lo, hi = expected.dims[want]
            _check(lo <= size <= hi,
                   f"{what}: {name} dimension {want}={size} is outside [{lo}, {hi}]")
            _check(bound.setdefault(want, size) == size,
                   f"{what}: dimension {want} is {bound[want]} in one tensor and {size} in {name}")
        _check(math.prod(info.shape) <= MAX_INPUT_ELEMENTS, f"{what}: {name} is too large")
    return bound


# ----------------------------------------------------------------------------- programs and jobs


@dataclass(frozen=True, slots=True)
class BuiltinProgram:
    """A family from :mod:`poolai.node.jobs.models` with its config and safetensors weights."""

    config: ModelConfig
    weights: FileRef

    def __post_init__(self) -> None:
        _check(isinstance(self.config, MLPConfig | TransformerConfig), "config has no known family")
        _check(isinstance(self.weights, FileRef), "weights must be a FileRef")

    @property
    def family(self) -> Family:
        return family_of(self.config)


@dataclass(frozen=True, slots=True)
class Pt2Program:
    """A ``torch.export`` archive (sanitised before loading) with separate safetensors weights."""

    archive: FileRef
    weights: FileRef

    def __post_init__(self) -> None:
        _check(isinstance(self.archive, FileRef) and isinstance(self.weights, FileRef),
               "archive and weights must be FileRefs")


Program = BuiltinProgram | Pt2Program


@dataclass(frozen=True, slots=True)
class TrainSpec:
    """Train for ``steps`` full-batch steps on the inputs; the job returns weights and losses."""

    steps: int
    lr: float
    optimizer: Optimizer = Optimizer.SGD
    loss: Loss = Loss.MSE
    seed: int = 0

    def __post_init__(self) -> None:
        _int_in("train.steps", self.steps, 1, 10_000)
        _float_in("train.lr", self.lr, 0.0, 10.0, open_lo=True)
        _check(isinstance(self.optimizer, Optimizer), "train.optimizer must be an Optimizer")
        _check(isinstance(self.loss, Loss), "train.loss must be a Loss")
        _int_in("train.seed", self.seed, 0, 2**31 - 1)


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a node must offer to take the job; ``memory_mib`` is the worker's address-space cap."""

    device: Device = Device.CPU
    min_gpu_memory_mib: int = 0
    min_compute_capability: tuple[int, int] | None = None
    expected_runtime_s: float = 1.0
    memory_mib: int = 2048

    def __post_init__(self) -> None:
        _check(isinstance(self.device, Device), "requirements.device must be a Device")
        _int_in("requirements.min_gpu_memory_mib", self.min_gpu_memory_mib, 0, 1 << 24)
        cc = self.min_compute_capability
        if cc is not None:
            _check(isinstance(cc, tuple) and len(cc) == 2,
                   "requirements.min_compute_capability must be [major, minor]")
            _int_in("compute capability major", cc[0], 1, 99)
            _int_in("compute capability minor", cc[1], 0, 9)
        if self.device is Device.CPU:
            _check(self.min_gpu_memory_mib == 0 and cc is None,
                   "GPU requirements given for a CPU job")
        _float_in("requirements.expected_runtime_s", self.expected_runtime_s, 0.0, MAX_TIMEOUT_S)
        # importing torch alone needs ~700 MiB of address space
        _int_in("requirements.memory_mib", self.memory_mib, 1024, 1 << 20)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job as submitted. ``retry_budget`` counts re-runs elsewhere after TIMED_OUT/CRASHED."""

    job_id: str
    submitter: str
    program: Program
    inputs: FileRef
    mode: Mode = Mode.FORWARD
    train: TrainSpec | None = None
    requirements: Requirements = field(default_factory=Requirements)
    timeout_s: float = 60.0
    retry_budget: int = 0
    priority: int = 0
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        _check(type(self.version) is int and self.version == SPEC_VERSION,
               f"unsupported job spec version {self.version!r}")
        _check(isinstance(self.job_id, str) and _JOB_ID.fullmatch(self.job_id) is not None,
               "id must be 1-64 of [A-Za-z0-9_-]")
        _check(isinstance(self.submitter, str) and _SUBMITTER.fullmatch(self.submitter) is not None,
               "submitter must be 1-128 of [A-Za-z0-9_-]")
        _check(isinstance(self.program, BuiltinProgram | Pt2Program), "program has no known kind")
        _check(isinstance(self.mode, Mode), "mode must be a Mode")
        _check((self.mode is Mode.TRAIN) == (self.train is not None),
               "train settings are required in train mode and only there")
        if self.train is not None:
            _check(isinstance(self.program, BuiltinProgram),
                   "train mode is only offered for built-in families")
            assert isinstance(self.program, BuiltinProgram)
            if self.program.family is Family.TRANSFORMER:
                _check(self.train.loss is Loss.CROSS_ENTROPY,
                       "a transformer trains on next-token cross_entropy only")
        _float_in("timeout_s", self.timeout_s, 0.0, MAX_TIMEOUT_S, open_lo=True)
        _int_in("retry_budget", self.retry_budget, 0, 8)
        _int_in("priority", self.priority, -100, 100)

    def files(self) -> tuple[FileRef, ...]:
        """Every file the worker reads, so the node can fetch them before launching it."""
        if isinstance(self.program, BuiltinProgram):
            return (self.program.weights, self.inputs)
        return (self.program.archive, self.program.weights, self.inputs)


@dataclass(frozen=True, slots=True)
class Timings:
    wall_s: float = 0.0  # the worker's own wall clock, interpreter start excluded
    cpu_s: float = 0.0  # user + system
    setup_s: float = 0.0  # hashing, sanitising, import torch, loading weights
    run_s: float = 0.0  # forward or training steps


@dataclass(frozen=True, slots=True)
class JobResult:
    """The result record a worker writes (``result.json``) or the runner composes for it."""

    job_id: str
    status: JobStatus
    output: FileRef | None = None
    timings: Timings = field(default_factory=Timings)
    peak_rss_bytes: int = 0
    device: str = ""
    error: str = ""
    losses: tuple[float, ...] = ()


# ----------------------------------------------------------------------------- wire codec


class _Map:
    """Reads one wire map, refusing unknown keys and wrong types."""

    def __init__(self, value: object, where: str, keys: set[str]) -> None:
        _check(isinstance(value, dict), f"{where} must be a map")
        assert isinstance(value, dict)
        unknown = sorted(str(k) for k in set(value) - keys)
        _check(not unknown, f"{where} has unknown keys {unknown[:8]}")
        self.d, self.where = value, where

    def get(self, key: str, default: Any = dataclasses.MISSING) -> Any:
        if key not in self.d:
            _check(default is not dataclasses.MISSING, f"{self.where}.{key} is missing")
            return default
        return self.d[key]

    def enum(self, key: str, kind: type[StrEnum], default: Any = dataclasses.MISSING) -> Any:
        value = self.get(key, default)
        if isinstance(value, kind):
            return value
        _check(isinstance(value, str) and value in kind._value2member_map_,
               f"{self.where}.{key} must be one of {[m.value for m in kind]}")
        return kind(value)


def file_ref_from_dict(value: object, where: str = "file") -> FileRef:
    m = _Map(value, where, {"name", "sha256", "size"})
    return FileRef(m.get("name"), m.get("sha256"), m.get("size"))


def config_from_dict(family: Family, value: object) -> ModelConfig:
    if family is Family.MLP:
        m = _Map(value, "config", {"in_features", "hidden", "out_features", "activation"})
        hidden = m.get("hidden")
        _check(isinstance(hidden, list | tuple), "config.hidden must be a list")
        return MLPConfig(m.get("in_features"), tuple(hidden), m.get("out_features"),
                         m.enum("activation", Activation, Activation.RELU))
    fields = dataclasses.fields(TransformerConfig)
    m = _Map(value, "config", {f.name for f in fields})
    return TransformerConfig(**{f.name: m.get(f.name, f.default) for f in fields})


def _program_from_dict(value: object) -> Program:
    kind = _Map(value, "program", {"kind", "family", "config", "weights", "archive"}).get("kind")
    if kind == "builtin":
        m = _Map(value, "program", {"kind", "family", "config", "weights"})
        return BuiltinProgram(config_from_dict(m.enum("family", Family), m.get("config")),
                              file_ref_from_dict(m.get("weights"), "program.weights"))
    _check(kind == "pt2", "program.kind must be 'builtin' or 'pt2'")
    m = _Map(value, "program", {"kind", "archive", "weights"})
    return Pt2Program(file_ref_from_dict(m.get("archive"), "program.archive"),
                      file_ref_from_dict(m.get("weights"), "program.weights"))


def job_from_dict(value: object) -> JobSpec:
    """Decode and validate a wire map; raises :class:`InvalidJob` with the offending field."""
    m = _Map(value, "job", {"version", "id", "submitter", "program", "inputs", "mode", "train",
                            "requirements", "timeout_s", "retry_budget", "priority"})
    train = None
    if (t := m.get("train", None)) is not None:
        tm = _Map(t, "train", {"steps", "lr", "optimizer", "loss", "seed"})
        train = TrainSpec(tm.get("steps"), tm.get("lr"),
                          tm.enum("optimizer", Optimizer, Optimizer.SGD),
                          tm.enum("loss", Loss, Loss.MSE), tm.get("seed", 0))
    rm = _Map(m.get("requirements", {}), "requirements",
              {f.name for f in dataclasses.fields(Requirements)})
    cc = rm.get("min_compute_capability", None)
    if cc is not None:
        _check(isinstance(cc, list | tuple), "requirements.min_compute_capability must be a list")
        cc = tuple(cc)
    requirements = Requirements(
        rm.enum("device", Device, Device.CPU), rm.get("min_gpu_memory_mib", 0), cc,
        rm.get("expected_runtime_s", 1.0), rm.get("memory_mib", 2048))
    return JobSpec(
        job_id=m.get("id"), submitter=m.get("submitter"),
        program=_program_from_dict(m.get("program")),
        inputs=file_ref_from_dict(m.get("inputs"), "inputs"),
        mode=m.enum("mode", Mode, Mode.FORWARD), train=train, requirements=requirements,
        timeout_s=m.get("timeout_s", 60.0), retry_budget=m.get("retry_budget", 0),
        priority=m.get("priority", 0), version=m.get("version"))


def _plain(value: Any) -> Any:
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def job_to_dict(job: JobSpec) -> dict[str, Any]:
    """The wire map of a job (inverse of :func:`job_from_dict`)."""
    d = _plain(job)
    d["id"] = d.pop("job_id")
    program = job.program
    if isinstance(program, BuiltinProgram):
        d["program"] = {"kind": "builtin", "family": program.family.value,
                        "config": _plain(program.config), "weights": _plain(program.weights)}
    else:
        d["program"] = {"kind": "pt2", **_plain(program)}
    return d


def encode_job(job: JobSpec) -> bytes:
    return json.dumps(job_to_dict(job), sort_keys=True).encode()


def decode_job(data: bytes) -> JobSpec:
    """Parse a JSON job spec of at most :data:`MAX_SPEC_BYTES`; raises :class:`InvalidJob`."""
    _check(len(data) <= MAX_SPEC_BYTES, f"job spec of {len(data)} bytes is too large")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidJob(f"job spec is not JSON: {exc}") from None
    return job_from_dict(value)


def result_to_dict(result: JobResult) -> dict[str, Any]:
    return _plain(result)  # type: ignore[no-any-return]


def result_from_dict(value: object) -> JobResult:
    """Decode a result record; raises :class:`InvalidJob` if it is malformed."""
    m = _Map(value, "result", {f.name for f in dataclasses.fields(JobResult)})
    tm = _Map(m.get("timings", {}), "result.timings", {f.name for f in dataclasses.fields(Timings)})
    times = {k: tm.get(k) for k in tm.d}
    for k, v in times.items():
        _float_in(f"timings.{k}", v, 0.0, 1e9)
    output = m.get("output", None)
    losses = m.get("losses", [])
    _check(isinstance(losses, list) and len(losses) <= 10_000
           and all(type(x) is float or type(x) is int and abs(x) <= sys.float_info.max
                   for x in losses), "result.losses must be numbers")
    error, device, rss = m.get("error", ""), m.get("device", ""), m.get("peak_rss_bytes", 0)
    _check(isinstance(error, str) and isinstance(device, str), "result error/device must be text")
    _int_in("peak_rss_bytes", rss, 0, 1 << 50)
    return JobResult(
        job_id=m.get("job_id"), status=m.enum("status", JobStatus),
        output=None if output is None else file_ref_from_dict(output, "result.output"),
        timings=Timings(**{k: float(v) for k, v in times.items()}), peak_rss_bytes=rss,
        device=device[:256], error=error[:4096], losses=tuple(float(x) for x in losses))
