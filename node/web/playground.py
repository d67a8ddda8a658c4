"""The playground's demo job: a small built-in MLP forward pass on random inputs.

The node process never imports torch, so the demo's weights and inputs are
written here as safetensors bytes directly (an 8-byte little-endian header
length, a JSON header, then the raw little-endian float32 data), with the
tensor names and shapes taken from the family's own signature.
``POST /api/admin/playground/demo-job`` stores both files on the mesh through
the jobs service's storage seam and submits the job like any other.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from poolai.mesh.errors import MeshError
from poolai.node.jobs.sanitise import safetensors_f32
from poolai.node.jobs.spec import InvalidJob, MLPConfig, Mode, input_signature, weight_signature

if TYPE_CHECKING:
    from poolai.node.web.context import NodeView

DEMO_CONFIG = MLPConfig(in_features=8, hidden=(16,), out_features=4)
DEMO_BATCH = 4
WEIGHTS, INPUTS = "weights.safetensors", "inputs.safetensors"


def demo_files(seed: int) -> dict[str, bytes]:
    """Weights and inputs of the demo job, drawn from ``seed``."""
    rng = random.Random(seed)

    def tensor(shape: tuple[int, ...], scale: float) -> tuple[tuple[int, ...], list[float]]:
        count = 1
        for dim in shape:
            count *= dim
        return shape, [rng.uniform(-scale, scale) for _ in range(count)]

    weights = {}
    for name, spec in weight_signature(DEMO_CONFIG).tensors.items():
        shape = tuple(int(d) for d in spec.shape)
        weights[name] = tensor(shape, 1.0 / max(1, shape[-1]) ** 0.5)
    (x_name, x_spec), = input_signature(DEMO_CONFIG, Mode.FORWARD).tensors.items()
    inputs = {x_name: tensor((DEMO_BATCH, int(x_spec.shape[1])), 1.0)}
    return {WEIGHTS: safetensors_f32(weights), INPUTS: safetensors_f32(inputs)}


def demo_job(files: Mapping[str, bytes]) -> dict[str, Any]:
    """The job map (without id and submitter) for ``demo_files`` output."""

    def ref(name: str) -> dict[str, Any]:
        return {"name": name, "sha256": hashlib.sha256(files[name]).hexdigest(), "size": len(files[name])}

    return {
        "program": {"kind": "builtin", "family": "mlp",
                    "config": {"in_features": DEMO_CONFIG.in_features, "hidden": list(DEMO_CONFIG.hidden),
                               "out_features": DEMO_CONFIG.out_features, "activation": "relu"},
                    "weights": ref(WEIGHTS)},
        "inputs": ref(INPUTS),
        "mode": "forward",
        "timeout_s": 60.0,
        "retry_budget": 1,
    }


def playground_routes(node: NodeView) -> list[Route]:
    async def demo(request: Request) -> JSONResponse:
        """Submit the built-in demo job (a small MLP forward pass); answers the job's status."""
        jobs = node.jobs
        if jobs is None:
            return JSONResponse({"error": "this node runs no jobs service"}, 501)
        files = demo_files(secrets.randbits(32))
        staging = node.data_dir / "playground"
        ids = {}
        try:
            await trio.to_thread.run_sync(lambda: staging.mkdir(mode=0o700, exist_ok=True))
            for name, data in files.items():
                path = staging / f"{secrets.token_hex(6)}-{name}"
                try:
                    await trio.Path(path).write_bytes(data)
                    ids[name] = await jobs.files.put(path, f"demo job {name}")
                finally:
                    await trio.Path(path).unlink(missing_ok=True)
            sub = jobs.submit(demo_job(files), ids)
        except (MeshError, OSError) as exc:
            return JSONResponse({"error": f"could not store the demo files: {exc}"}, 503)
        except (InvalidJob, RuntimeError) as exc:
            return JSONResponse({"error": str(exc)}, 503)
        return JSONResponse(jobs.job_json(sub), 201)

    return [Route("/api/admin/playground/demo-job", demo, methods=["POST"])]
