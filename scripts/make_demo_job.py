#!/usr/bin/env python3
"""Write a small exported PyTorch job to try on a PoolAI node.

    python scripts/make_demo_job.py OUTDIR

Writes, into OUTDIR:

* ``model.pt2``: a ``torch.export`` archive of a small residual MLP (LayerNorm, GELU),
  with a dynamic batch size. It is not one of PoolAI's built-in families: any model
  whose graph uses only allowed operators can be exported like this;
* ``model.safetensors``: its weights (the archive's own copy is never trusted; workers
  load these with ``load_state_dict(strict=True)``);
* ``inputs.safetensors``: 16 rows of ``x``;
* ``expected.safetensors``: the output computed here, to compare with the mesh's answer.

It checks the archive with the same sanitiser a worker runs before torch sees the file,
and prints the command that submits the job.
"""

from __future__ import annotations

import argparse
import io
import sys
import warnings
from pathlib import Path

from poolai.node.jobs.sanitise import UnsafeProgram, sanitise_pt2

with warnings.catch_warnings():
    # torch.cuda imports pynvml, and the `pynvml` dist warns that it is deprecated in favour of
    # nvidia-ml-py, which provides the very module it loads: nothing the user can act on.
    warnings.filterwarnings("ignore", "The pynvml package is deprecated", FutureWarning)
    import torch
    from safetensors.torch import save_file


class ResidualMLP(torch.nn.Module):
    def __init__(self, width: int = 8, hidden: int = 32, out: int = 4) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.up = torch.nn.Linear(width, hidden)
        self.down = torch.nn.Linear(hidden, width)
        self.head = torch.nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))
        return self.head(h)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args()
    out: Path = args.outdir
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    model = ResidualMLP().eval()
    x = torch.randn(16, 8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
    buf = io.BytesIO()
    torch.export.save(program, buf)
    try:
        sanitise_pt2(buf.getvalue())
    except UnsafeProgram as exc:
        print(f"error: the exported program would be refused by workers: {exc}", file=sys.stderr)
        return 1
    (out / "model.pt2").write_bytes(buf.getvalue())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    save_file({"x": x}, out / "inputs.safetensors")
    with torch.inference_mode():
        save_file({"output": model(x)}, out / "expected.safetensors")

    d = str(out)
    print(f"wrote {d}/model.pt2, model.safetensors, inputs.safetensors, expected.safetensors\n")
    print("run it on the mesh (through the local node):")
    print(f"  {poolai_command()} job submit {d}/model.pt2 --weights {d}/model.safetensors "
          f"--input {d}/inputs.safetensors --wait --out {d}/output.safetensors")
    return 0


def poolai_command() -> str:
    """How to run the ``poolai`` installed beside this Python: ``.venv/bin/poolai`` from the
    checkout (as the README writes it), else its full path; plain ``poolai`` if there is none."""
    exe = Path(sys.executable).parent / "poolai"  # not resolved: a venv's python is a symlink
    if not exe.exists():
        return "poolai"
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


if __name__ == "__main__":
    sys.exit(main())
