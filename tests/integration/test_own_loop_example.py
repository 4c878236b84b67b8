"""examples/own_loop.py, the head in a user's own DDP loop, runs as documented and learns."""

import re
import subprocess
import sys
from pathlib import Path

import torch

from tests.distributed.harness import free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_loop.py"
SMALL = ["--classes", "500", "--steps", "60", "--batch", "128"]


def _top1(stdout: str) -> float:
    return float(re.search(r"held-out top-1 ([0-9.]+)", stdout).group(1))


def test_the_own_loop_example_learns_on_two_ranks_and_saves_each_ranks_state(tmp_path):
    result = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-port", str(free_port()), str(EXAMPLE), *SMALL, "--out", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert _top1(result.stdout) > 0.5  # chance is 0.002
    for rank in (0, 1):
        saved = torch.load(tmp_path / f"rank-{rank}-of-2.pt", weights_only=True)
        assert saved["head"]["weight"].shape == (250, 64)  # each rank holds half the classes
        assert saved["sampler"]["class_rows"]["graph"].shape[0] == 250


def test_the_own_loop_example_runs_in_one_process(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *SMALL, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert _top1(result.stdout) > 0.5
    assert (tmp_path / "rank-0-of-1.pt").is_file()
