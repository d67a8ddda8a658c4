#!/usr/bin/env python3
"""Print this machine's inventory, read through NVML, and the capacity advert a node would publish.

    python scripts/gpu_inventory.py [--check-torch]

Works from a source checkout that was never installed, on a GPU host that has
only pynvml (nvidia-ml-py) and msgpack: the repository's packages are mapped
onto ``poolai.*`` here. ``--check-torch`` imports torch (this script is not the
node) to compare ``torch.cuda.is_available()`` with what the node derives
without importing it. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def import_poolai() -> None:
    """Make ``poolai.mesh`` and ``poolai.node`` importable from the checkout if not installed."""
    try:
        importlib.import_module("poolai.node.capacity.inventory")
        return
    except ImportError:
        pass
    for name in [m for m in sys.modules if m == "poolai" or m.startswith("poolai.")]:
        del sys.modules[name]
    root = types.ModuleType("poolai")
    root.__path__ = []  # a namespace: its subpackages live in folders named differently
    sys.modules["poolai"] = root
    for sub in ("mesh", "node", "storage"):
        spec = importlib.util.spec_from_file_location(
            f"poolai.{sub}", ROOT / sub / "__init__.py", submodule_search_locations=[str(ROOT / sub)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"poolai.{sub}"] = module
        spec.loader.exec_module(module)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-torch", action="store_true",
                        help="also import torch and report what it sees")
    args = parser.parse_args()
    import_poolai()
    from poolai.mesh import adverts, wire
    from poolai.node.capacity import inventory
    from poolai.node.capacity.rules import LocalState, make_advert

    started = time.perf_counter()
    provider = inventory.NvmlProvider(Path.cwd())
    inv = provider.read()
    read_ms = (time.perf_counter() - started) * 1000
    again = time.perf_counter()
    provider.read()
    reread_ms = (time.perf_counter() - again) * 1000
    provider.close()

    try:  # a throwaway identity, only to show the signed size
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes_raw()
        peer_id, sign = adverts.peer_id_from_public_key(public), key.sign
    except ImportError:
        public, peer_id, sign = b"", "12D3KooW-example", None
    advert = make_advert(inv, LocalState(peer_id, "poolai/gpu_inventory", job_slots=max(1, len(inv.gpus))),
                         seq=int(time.time() * 1000), now=time.time(), ttl=30.0)
    body = wire.encode(advert)
    out = {
        "inventory": inv.to_json(),
        "advert": wire.to_wire(advert),
        "advert_body_bytes": len(body),
        "advert_signed_bytes": len(adverts.sign(advert, sign, public)) if sign else None,
        "advert_limit_bytes": adverts.MAX_ADVERT,
        "nvml_first_read_ms": round(read_ms, 1),
        "nvml_reread_ms": round(reread_ms, 1),
        "torch_build_cuda": inventory.torch_cuda_build(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
    }
    if args.check_torch:
        try:
            import torch

            out["torch"] = {"version": torch.__version__, "cuda_available": torch.cuda.is_available(),
                            "device_count": torch.cuda.device_count(),
                            "capabilities": [list(torch.cuda.get_device_capability(i))
                                             for i in range(torch.cuda.device_count())]}
            out["torch_cuda_derivation_correct"] = out["torch"]["cuda_available"] == inv.torch_cuda
        except ImportError as exc:
            out["torch"] = {"error": str(exc)}
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
