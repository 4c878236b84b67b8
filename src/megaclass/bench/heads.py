"""``megaclass bench heads``: training steps of several output layers, side by side.

Each head runs in a child process of its own, so its peak memory is its own and not the
high-water mark of a head measured before it. A step is zero_grad + forward + backward +
optimizer step on random embeddings [batch, dim] (which receive a gradient, as a backbone's
output would) and uniform random labels.

Heads:
- ``naive``: ``nn.Linear(dim, num_classes, bias=False)`` + ``F.cross_entropy`` +
  ``torch.optim.SGD``: the plain PyTorch baseline; bf16 runs it under ``torch.autocast``.
- ``full``: ``ClassifierHead`` with the exact chunked softmax, same optimizer.
- ``random``: ``ClassifierHead`` with ``Random(budget)`` (Partial FC), row-sparse gradient and a
  row-sparse optimizer (``--optimizer``: SparseSGD with momentum or RowAdaGrad).
- ``knn``: ``ClassifierHead`` with ``KNN(k, budget)``, same optimizer. The class graph is built
  once before the timed steps; its build time is recorded (``graph_build_s``) with its cost per
  step amortised over ``refresh_every`` steps, apart from ``ms_per_step``.
- ``ann``: ``ClassifierHead`` with ``ANN(k, group_size, ...)``, same optimizer. The index is
  built before the timed steps (``index_build_s``); ``ms_per_step`` includes the retrieval (index
  update, search and grouping), which is also reported alone (``retrieval_ms_per_step``), with
  the Hamming scan used (``ann_backend``: faiss when installed, else torch).
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from megaclass.bench.machine import machine_info
from megaclass.functional import margins
from megaclass.process import keep_freed_memory

HEADS = ("naive", "full", "random", "knn", "ann")
OPTIMIZERS = ("sgd", "rowadagrad")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MARGINS = {
    "softmax": margins.Softmax,
    "cosface": margins.CosFace,
    "arcface": margins.ArcFace,
}
_REFERENCE_GEMM_MAX_COLUMNS = 65536


@dataclass(frozen=True)
class HeadBenchConfig:
    num_classes: int = 100_000
    dim: int = 128
    batch: int = 1024
    heads: tuple[str, ...] = HEADS
    steps: int = 5
    warmup: int = 1
    dtype: str = "fp32"
    margin: str = "softmax"
    chunk_size: int = 4096
    budget: float = 0.1  # random, knn: fraction of the classes (<= 1) or a count (knn)
    knn_k: int = 32
    refresh_every: int = 1000  # knn: only for the amortised graph cost
    graph_build: str = "auto"  # knn: auto, exact or ivf
    nprobe: int = 4  # knn, ivf graph
    ann_k: int = 64  # ann: classes retrieved per sample
    group_size: int = 64  # ann: samples per group
    ann_nprobe: int = 8  # ann: lists searched per sample
    ann_bits: int = 128  # ann: code length
    rerank: int = 0  # ann: candidates re-ranked exactly
    ann_search: str = "ivf"  # ann: "ivf" (the index) or "exact" (every class scored)
    ann_uniform: float = 0.0  # ann: share of the classes drawn per step for every group
    optimizer: str = "sgd"  # random, knn, ann
    threads: int | None = None
    keep_freed_memory: bool = True  # megaclass heads, see megaclass.process; never naive
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [h for h in self.heads if h not in HEADS]
        if unknown:
            raise ValueError(f"unknown heads {unknown}; available: {', '.join(HEADS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        if "random" in self.heads and not 0 < self.budget <= 1:
            raise ValueError(f"random needs a budget in (0, 1], got {self.budget}")
        if self.margin not in MARGINS:
            raise ValueError(f"margin must be one of {', '.join(MARGINS)}, got {self.margin!r}")
        for name in ("num_classes", "dim", "batch", "steps", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def run_heads(config: HeadBenchConfig, log: Callable[[str], None] = print) -> list[dict]:
    """One record per head, each measured in its own child process."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, maxtasksperchild=1) as pool:
        log(f"timing a reference torch.mm ({config.dtype}) ...")
        gemm_flops = pool.apply(_reference_gemm_rate, (config,))
    records = []
    for head in config.heads:
        log(f"timing {head} at {config.num_classes:,} classes ({config.steps} steps) ...")
        with context.Pool(1, maxtasksperchild=1) as pool:
            record = pool.apply(_measure_head, (config, head))
        step_flops = 6 * config.batch * record["num_active"] * config.dim
        record["gemm_efficiency"] = step_flops / (record["ms_per_step"] / 1e3) / gemm_flops
        record["reference_gemm_gflops"] = gemm_flops / 1e9
        records.append(record)
    return records


def format_table(records: list[dict]) -> str:
    """A readable comparison, ratios against the first head (the baseline)."""
    base = records[0]
    lines = [
        f"{'head':8} {'classes':>11} {'active':>11} {'dtype':>5} {'ms/step':>9} {'x base':>7} "
        f"{'peak MB':>9} {'x base':>7} {'gemm eff':>8} {'graph s':>8}"
    ]
    for r in records:
        graph = f"{r['graph_build_s']:>8.1f}" if "graph_build_s" in r else f"{'-':>8}"
        lines.append(
            f"{r['head']:8} {r['num_classes']:>11,} {r['num_active']:>11,} {r['dtype']:>5} "
            f"{r['ms_per_step']:>9.1f} {r['ms_per_step'] / base['ms_per_step']:>7.2f} "
            f"{r['peak_rss_mb']:>9.0f} {r['peak_rss_mb'] / base['peak_rss_mb']:>7.2f} "
            f"{r['gemm_efficiency']:>8.2f} {graph}"
        )
    machine = records[0]["machine"]
    lines.append(
        f"machine: {machine['cpu']}, {machine['torch_threads']} threads, torch {machine['torch']}, "
        f"device {machine['device']}{', ' + machine['gpu'] if 'gpu' in machine else ''}"
    )
    return "\n".join(lines)


def _set_threads(config: HeadBenchConfig) -> None:
    if config.threads is not None:
        torch.set_num_threads(config.threads)


def _reference_gemm_rate(config: HeadBenchConfig) -> float:
    """FLOP/s of a plain torch.mm [batch, dim] x [dim, n], n = min(classes, 65536)."""
    _set_threads(config)
    dtype, device = DTYPES[config.dtype], torch.device(config.device)
    columns = min(config.num_classes, _REFERENCE_GEMM_MAX_COLUMNS)
    a = torch.randn(config.batch, config.dim, dtype=dtype, device=device)
    b = torch.randn(config.dim, columns, dtype=dtype, device=device)
    out = torch.empty(config.batch, columns, dtype=dtype, device=device)
    times = [_timed(lambda: torch.mm(a, b, out=out), device) for _ in range(12)]
    return 2 * config.batch * config.dim * columns / statistics.median(times[2:])


def _measure_head(config: HeadBenchConfig, head: str) -> dict:
    _set_threads(config)
    # naive is PyTorch as a user runs it, with glibc's default malloc (keeping its freed
    # [batch, classes] blocks took it past 24 GB at 10^6 classes in fp32)
    kept_freed_memory = config.keep_freed_memory and head != "naive" and keep_freed_memory()
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    embeddings = torch.randn(config.batch, config.dim, device=device, requires_grad=True)
    labels = torch.randint(0, config.num_classes, (config.batch,), device=device)
    extra: dict = {}
    step = (
        _naive_step(config, device) if head == "naive" else _head_step(config, head, device, extra)
    )
    times = []
    for _ in range(config.warmup + config.steps):
        times.append(_timed(lambda: step(embeddings, labels), device))
    if "retrieval_s" in extra:
        retrieval = extra.pop("retrieval_s")[config.warmup :]
        extra["retrieval_ms_per_step"] = statistics.median(retrieval) * 1e3
    record = {
        "head": head,
        "num_classes": config.num_classes,
        "dim": config.dim,
        "batch": config.batch,
        "dtype": config.dtype,
        "margin": config.margin if head != "naive" else "softmax",
        "num_active": extra.pop("num_active", config.num_classes),
        "ms_per_step": statistics.median(times[config.warmup :]) * 1e3,
        **extra,
        "kept_freed_memory": kept_freed_memory,
        "step_ms_all": [t * 1e3 for t in times],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "config": {k: v for k, v in asdict(config).items() if k != "heads"},
        "machine": machine_info(config.device),
    }
    if device.type == "cuda":
        record["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return record


def _naive_step(config: HeadBenchConfig, device: torch.device):
    linear = nn.Linear(config.dim, config.num_classes, bias=False, device=device)
    optimizer = torch.optim.SGD(linear.parameters(), lr=0.1, momentum=0.9)
    autocast = config.dtype == "bf16"

    def step(embeddings, labels):
        optimizer.zero_grad(set_to_none=True)
        embeddings.grad = None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = linear(embeddings)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()

    return step


def _head_step(config: HeadBenchConfig, head_name: str, device: torch.device, extra: dict):
    """A step of ``ClassifierHead`` with the sampler of ``head_name``; fills ``extra`` with the
    active class count after each step and, for knn, the graph build time."""
    from megaclass import samplers
    from megaclass.heads import ClassifierHead
    from megaclass.optim import RowAdaGrad, SparseSGD

    sampler = {
        "full": samplers.Full,
        "random": lambda: samplers.Random(config.budget),
        "knn": lambda: samplers.KNN(
            config.knn_k, config.budget, config.refresh_every, config.graph_build, config.nprobe
        ),
        "ann": lambda: samplers.ANN(
            k=config.ann_k,
            group_size=config.group_size,
            nprobe=config.ann_nprobe,
            num_bits=config.ann_bits,
            rerank=config.rerank,
            refresh_every=config.refresh_every,
            search=config.ann_search,
            uniform=config.ann_uniform,
        ),
    }[head_name]()
    head = ClassifierHead(
        config.num_classes,
        config.dim,
        margin=MARGINS[config.margin](),
        sampler=sampler,
        chunk_size=config.chunk_size,
        matmul_dtype=DTYPES[config.dtype],
        seed=config.seed,
        device=device,
    )
    if head_name == "full":
        optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    elif config.optimizer == "rowadagrad":
        optimizer = RowAdaGrad(head, lr=0.1)
    else:
        optimizer = SparseSGD(head, lr=0.1, momentum=0.9)
    if head_name == "knn":
        seconds = _timed(head.refresh_sampler, device)
        extra["graph_build_s"] = seconds
        extra["graph_build"] = "ivf" if sampler.uses_ivf(config.num_classes) else "exact"
        extra["graph_ms_per_step_amortised"] = seconds * 1e3 / config.refresh_every
    if head_name == "ann" and config.ann_search == "ivf":
        seconds = _timed(head.refresh_sampler, device)
        extra["index_build_s"] = seconds
        extra["ann_backend"] = head.sampler.index.backend
        extra["index_ms_per_step_amortised"] = seconds * 1e3 / config.refresh_every
    if head_name == "ann":
        extra["ann_search"] = config.ann_search
        extra["retrieval_s"] = []
        retrieve = head.sampler.select

        def timed_retrieval(*args):  # the sampler's retrieval and grouping, timed on its own
            began = time.perf_counter()
            selection = retrieve(*args)
            _synchronize(device)
            extra["retrieval_s"].append(time.perf_counter() - began)
            return selection

        head.sampler.select = timed_retrieval

    def step(embeddings, labels):
        optimizer.zero_grad(set_to_none=True)
        embeddings.grad = None
        out = head(embeddings, labels)
        out.loss.backward()
        optimizer.step()
        head.refresh_sampler()
        extra["num_active"] = out.num_active

    return step


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
