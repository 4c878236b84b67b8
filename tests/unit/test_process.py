"""Importing megaclass leaves the process alone; tune_process is the explicit call."""

import subprocess
import sys

PROBE = """
import ctypes, os, sys, torch
threads = torch.get_num_threads()
import megaclass
head = megaclass.ClassifierHead(100, 8, sampler=megaclass.samplers.KNN(k=2, budget=0.5))
head.refresh_sampler()
head(torch.randn(4, 8), torch.tensor([1, 2, 3, 4])).loss.backward()
assert "THP_MEM_ALLOC_ENABLE" not in os.environ, "import set THP_MEM_ALLOC_ENABLE"
assert torch.get_num_threads() == threads, "import changed the thread count"
applied = megaclass.tune_process(threads=1)
assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1" and torch.get_num_threads() == 1
print(sorted(applied))
"""


def test_importing_megaclass_changes_nothing_and_tune_process_does_what_it_says():
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['huge_pages', 'keep_freed_memory', 'threads']"
