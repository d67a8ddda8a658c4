"""A researcher's sweep on one standalone node: the same job submitted ten times at once
through the CLI. Every submission stores the same files (one file id, written by ten
requests at once) and every one must end ok with the expected output."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from poolai.node.launcher import NodeProcess, poolai_command

pytestmark = [pytest.mark.live, pytest.mark.timeout(420)]
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_demo_job.py"
COPIES = 10


def test_the_same_job_submitted_ten_times_at_once_ends_ok_every_time(tmp_path):
    demo = tmp_path / "demo"
    made = subprocess.run([sys.executable, str(SCRIPT), str(demo)], capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stderr
    node = NodeProcess(tmp_path / "node", env={"POOLAI_JOB_SLOTS": "2"}).start(timeout=60)
    try:
        def submit(i: int) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                poolai_command("--data-dir", str(node.data_dir), "job", "submit", str(demo / "model.pt2"),
                               "--weights", str(demo / "model.safetensors"),
                               "--input", str(demo / "inputs.safetensors"), "--cpu",
                               "--wait", "--out", str(tmp_path / f"out{i}.safetensors")),
                capture_output=True, text=True, timeout=360)

        with ThreadPoolExecutor(COPIES) as pool:
            results = list(pool.map(submit, range(COPIES)))
        failures = [(r.returncode, r.stderr[-500:]) for r in results if r.returncode != 0]
        assert failures == []
        expected = load_file(demo / "expected.safetensors")["output"]
        for i in range(COPIES):
            got = load_file(tmp_path / f"out{i}.safetensors")["output"]
            assert torch.allclose(got, expected, atol=1e-6), i
    finally:
        node.stop()
