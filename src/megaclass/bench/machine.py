"""What a benchmark figure was measured on, and how its records are written."""

from __future__ import annotations

import json
import os
import platform

import torch


def machine_info(device: str) -> dict:
    """CPU model, logical CPUs, torch threads and version, GPU if any."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def write_records(records: list[dict], path: str) -> None:
    """The records of a benchmark run as a JSON list."""
    with open(path, "w") as f:
        json.dump(records, f, indent=2)
        f.write("\n")
