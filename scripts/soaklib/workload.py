"""What the soak stores and runs, with the answers it must get back: no I/O, no torch.

A file is named by ``(seed, index)`` and regenerated on demand, so the soak keeps no
payloads in memory and can compare any prefix of a body with what was put. A job is the
built-in MLP of ``poolai job demo`` (8 -> 32 -> 4, ReLU) on fresh inputs; its expected
output is computed here in plain Python.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from dataclasses import dataclass

from poolai.node.jobs.sanitise import safetensors_f32

KiB = 1 << 10
FILE_SIZES = (1 * KiB, 17 * KiB, 64 * KiB, 200 * KiB, 700 * KiB, 1536 * KiB)
WIDTHS = (8, 32, 4)
ROWS = 16
MLP_CONFIG = {"in_features": WIDTHS[0], "hidden": [WIDTHS[1]], "out_features": WIDTHS[2],
              "activation": "relu"}
# The float32 sums a worker computes differ from these float64 ones in the last bits only.
OUTPUT_TOLERANCE = 1e-4


@dataclass(frozen=True, slots=True)
class FileSpec:
    seed: int
    index: int
    size: int

    def data(self) -> bytes:
        return random.Random(f"{self.seed}/{self.index}").randbytes(self.size)

    def sha256(self) -> str:
        return hashlib.sha256(self.data()).hexdigest()


def file_spec(seed: int, index: int) -> FileSpec:
    size = random.Random(f"size/{seed}/{index}").choice(FILE_SIZES)
    return FileSpec(seed, index, size)


def first_difference(expected: bytes, got: bytes) -> int | None:
    """The offset of the first byte of ``got`` that differs from ``expected``, or None
    when ``got`` is a prefix of it (a body cut short is a failed get, not a wrong byte)."""
    if len(got) > len(expected):
        return len(expected)
    if expected[:len(got)] == got:
        return None
    return next(i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b)


# ----------------------------------------------------------------------------- safetensors


def safetensors_bytes(tensors: dict[str, tuple[list[int], list[float]]]) -> bytes:
    """F32 tensors as a safetensors file (the node's own writer)."""
    return safetensors_f32(tensors)


def read_safetensors(data: bytes) -> dict[str, tuple[list[int], list[float]]]:
    """The F32 tensors of a safetensors file; ValueError if it is anything else."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    (length,) = struct.unpack_from("<Q", data)
    if length > len(data) - 8:
        raise ValueError("the header runs past the end")
    header = json.loads(data[8:8 + length])
    body = data[8 + length:]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] != "F32":
            raise ValueError(f"{name} is {meta['dtype']}, not F32")
        start, end = meta["data_offsets"]
        out[name] = (list(meta["shape"]), list(struct.unpack(f"<{(end - start) // 4}f", body[start:end])))
    return out


# ----------------------------------------------------------------------------- the job


def mlp_weights(seed: int) -> dict[str, tuple[list[int], list[float]]]:
    rng = random.Random(f"weights/{seed}")
    weights = {}
    for i, (a, b) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:], strict=True)):
        bound = 1 / a ** 0.5
        weights[f"layers.{i}.weight"] = ([b, a], [rng.uniform(-bound, bound) for _ in range(a * b)])
        weights[f"layers.{i}.bias"] = ([b], [rng.uniform(-bound, bound) for _ in range(b)])
    return weights


def mlp_inputs(seed: int, index: int) -> dict[str, tuple[list[int], list[float]]]:
    rng = random.Random(f"inputs/{seed}/{index}")
    return {"x": ([ROWS, WIDTHS[0]], [rng.gauss(0, 1) for _ in range(ROWS * WIDTHS[0])])}


def _f32(values: list[float]) -> list[float]:
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def mlp_forward(weights: dict[str, tuple[list[int], list[float]]],
                inputs: dict[str, tuple[list[int], list[float]]]) -> list[float]:
    """The output ``y`` (row-major) of the MLP on ``x``, as float32 inputs give it."""
    rows = inputs["x"][0][0]
    h = _f32(inputs["x"][1])
    width = WIDTHS[0]
    for i in range(len(WIDTHS) - 1):
        (out, inp), w = weights[f"layers.{i}.weight"][0], _f32(weights[f"layers.{i}.weight"][1])
        bias = _f32(weights[f"layers.{i}.bias"][1])
        assert inp == width
        nxt = []
        for r in range(rows):
            x = h[r * inp:(r + 1) * inp]
            for o in range(out):
                v = bias[o] + sum(w[o * inp + j] * x[j] for j in range(inp))
                nxt.append(max(v, 0.0) if i < len(WIDTHS) - 2 else v)
        h, width = nxt, out
    return h


def output_matches(expected: list[float], output: bytes) -> bool:
    try:
        shape, values = read_safetensors(output)["y"]
    except (ValueError, KeyError, struct.error, json.JSONDecodeError):
        return False
    return (shape == [ROWS, WIDTHS[-1]] and len(values) == len(expected)
            and all(abs(a - b) <= OUTPUT_TOLERANCE * max(1.0, abs(a))
                    for a, b in zip(expected, values, strict=True)))
