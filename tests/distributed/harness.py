"""Run a function on N local processes joined in a gloo group on a free port."""

from __future__ import annotations

import datetime
import gc
import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world_size: int, fn, *args) -> list:
    """``fn(group, *args)`` on ranks 0..world_size-1; returns each rank's return value."""
    port = free_port()
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(world_size, port, out, fn, args), nprocs=world_size, join=True)
        return [torch.load(os.path.join(out, f"{r}.pt")) for r in range(world_size)]


def _worker(rank, world_size, port, out, fn, args):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        result = fn(dist.group.WORLD, *args)
        torch.save(result, os.path.join(out, f"{rank}.pt"))
        dist.barrier()  # no rank tears down while another still communicates
    finally:
        gc.collect()  # the run's objects (cycles) holding the group and its work go first:
        dist.destroy_process_group()  # left to the interpreter's teardown, gloo can abort it
