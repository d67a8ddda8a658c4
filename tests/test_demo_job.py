"""The researcher's way in: scripts/make_demo_job.py writes a job that a worker runs.

The script's archive must stay acceptable to the sanitiser and the worker as both change,
and the worker's answer must equal the output the script computed locally.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from poolai.node.jobs.spec import FileRef, JobSpec, JobStatus, Pt2Program
from poolai.node.jobs.worker import OUTPUT_FILE, execute

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_demo_job.py"


def ref(directory: Path, name: str) -> FileRef:
    body = (directory / name).read_bytes()
    return FileRef(name, hashlib.sha256(body).hexdigest(), len(body))


@pytest.mark.live
def test_the_demo_job_runs_in_a_worker_and_matches_its_expected_output(tmp_path: Path) -> None:
    files, out = tmp_path / "demo", tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), str(files)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr  # torch's pynvml FutureWarning included
    command = next(line for line in done.stdout.splitlines() if "job submit" in line).split()[0]
    assert Path(command).name == "poolai" and Path(command).exists()  # runnable as printed
    out.mkdir()
    job = JobSpec("demo", "peer1", Pt2Program(ref(files, "model.pt2"), ref(files, "model.safetensors")),
                  ref(files, "inputs.safetensors"))
    result = execute(job, files, out)
    assert result.status is JobStatus.OK, result.error
    got = load_file(out / OUTPUT_FILE)["output"]
    expected = load_file(files / "expected.safetensors")["output"]
    assert got.shape == (16, 4) and torch.allclose(got, expected, atol=1e-6)
