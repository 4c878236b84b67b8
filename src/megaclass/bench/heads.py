"""``megaclass bench heads``: training steps of several output layers, side by side.

Each head runs in a child process of its own, so its peak memory is its own and not the
high-water mark of a head measured before it. A step is zero_grad + forward + backward +
optimizer step on random embeddings [batch, dim] (which receive a gradient, as a backbone's
output would) and uniform random labels.

The megaclass heads are built from a run config exactly as ``megaclass train`` builds them
(``HeadBenchConfig``): margin, chunks, products, the sampler's own section and the head
optimizer (row-sparse ``SparseSGD`` or ``RowAdaGrad``, ``optim.head_optimizer``).

Heads:
- ``naive``: ``nn.Linear(dim, num_classes, bias=False)`` + ``F.cross_entropy`` +
  ``torch.optim.SGD``: the plain PyTorch baseline; bf16 runs it under ``torch.autocast``.
- ``full``: ``ClassifierHead`` with the exact chunked softmax (``Full``).
- ``random``, ``knn``, ``ann``: ``ClassifierHead`` with the sampler of ``[head.random]``,
  ``[head.knn]`` or ``[head.ann]``. The class graph (knn) or index (ann) is built before the
  timed steps; its build time is recorded (``graph_build_s``, ``index_build_s``) with its cost
  per step amortised over ``refresh_every`` steps, apart from ``ms_per_step``. For ann,
  ``ms_per_step`` includes the retrieval (index update, search and grouping), which is also
  reported alone (``retrieval_ms_per_step``), with the Hamming scan used (``ann_backend``).
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from megaclass.bench.machine import machine_info
from megaclass.data.synthetic import DEFAULT_NUM_CLASSES
from megaclass.hardware import matmul_dtype
from megaclass.process import keep_freed_memory
from megaclass.train.config import RunConfig
from megaclass.train.loop import build_head, build_head_optimizer

HEADS = ("naive", "full", "random", "knn", "ann")
_REFERENCE_GEMM_MAX_COLUMNS = 65536


@dataclass(frozen=True)
class HeadBenchConfig:
    """What to time: the head of ``run`` (classes ``data.num_classes``, width
    ``model.embedding_dim``, batch ``train.batch_size``, margin, chunks and products of
    ``[head]``, each sampler's own section, the head optimizer of ``[optim]``), exactly as
    ``megaclass train`` would build it with that config, under each sampler of ``heads``."""

    run: RunConfig = field(default_factory=RunConfig)
    heads: tuple[str, ...] = ("naive", "full")
    steps: int = 5
    warmup: int = 1
    threads: int | None = None
    keep_freed_memory: bool = True  # megaclass heads, see megaclass.process; never naive
    device: str = "cpu"

    def __post_init__(self) -> None:
        unknown = [h for h in self.heads if h not in HEADS]
        if unknown:
            raise ValueError(f"unknown heads {unknown}; available: {', '.join(HEADS)}")
        if self.num_classes < 1:
            raise ValueError(
                f"bench heads reads no data: with data.source = {self.run.data.source!r} it "
                "needs data.num_classes >= 1"
            )
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    @property
    def num_classes(self) -> int:
        """``data.num_classes``; 0 is the synthetic catalogue's own count."""
        data = self.run.data
        if data.num_classes == 0 and data.source == "synthetic":
            return DEFAULT_NUM_CLASSES
        return data.num_classes

    @property
    def dim(self) -> int:
        return self.run.model.embedding_dim

    @property
    def batch(self) -> int:
        return self.run.train.batch_size

    @property
    def dtype(self) -> str:
        """The products' dtype, ``"fp32"`` or ``"bf16"`` (``"auto"`` resolved on the device)."""
        resolved = matmul_dtype(self.run.head.matmul_dtype, torch.device(self.device))
        return "bf16" if resolved == torch.bfloat16 else "fp32"


def run_heads(config: HeadBenchConfig, log: Callable[[str], None] = print) -> list[dict]:
    """One record per head, each measured in its own child process; the last child then times
    a reference torch.mm, against which every head's GEMM efficiency is given."""
    context = multiprocessing.get_context("spawn")
    records = []
    for number, head in enumerate(config.heads, 1):
        log(f"timing {head} at {config.num_classes:,} classes ({config.steps} steps) ...")
        last = number == len(config.heads)
        with context.Pool(1, maxtasksperchild=1) as pool:
            if last:
                record, gemm_flops = pool.apply(_measure_head_then_gemm, (config, head))
            else:
                record = pool.apply(_measure_head, (config, head))
        records.append(record)
    for record in records:
        step_flops = 6 * config.batch * record["num_active"] * config.dim
        record["gemm_efficiency"] = step_flops / (record["ms_per_step"] / 1e3) / gemm_flops
        record["reference_gemm_gflops"] = gemm_flops / 1e9
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
    device = torch.device(config.device)
    dtype = matmul_dtype(config.dtype, device)
    columns = min(config.num_classes, _REFERENCE_GEMM_MAX_COLUMNS)
    a = torch.randn(config.batch, config.dim, dtype=dtype, device=device)
    b = torch.randn(config.dim, columns, dtype=dtype, device=device)
    out = torch.empty(config.batch, columns, dtype=dtype, device=device)
    times = [_timed(lambda: torch.mm(a, b, out=out), device) for _ in range(12)]
    return 2 * config.batch * config.dim * columns / statistics.median(times[2:])


def _measure_head_then_gemm(config: HeadBenchConfig, head: str) -> tuple[dict, float]:
    """``_measure_head``, then ``_reference_gemm_rate`` in the same process (after the head's
    peak memory is read, so that the reference does not count in it)."""
    return _measure_head(config, head), _reference_gemm_rate(config)


def _measure_head(config: HeadBenchConfig, head: str) -> dict:
    _set_threads(config)
    # naive is PyTorch as a user runs it, with glibc's default malloc (keeping its freed
    # [batch, classes] blocks took it past 24 GB at 10^6 classes in fp32)
    kept_freed_memory = config.keep_freed_memory and head != "naive" and keep_freed_memory()
    torch.manual_seed(config.run.train.seed)
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
        "margin": config.run.head.margin if head != "naive" else "softmax",
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
    """A step of ``ClassifierHead`` with the sampler of ``head_name``, built as ``megaclass
    train`` builds it; fills ``extra`` with the active class count after each step and the
    graph (index) build time."""
    sampler = replace(config.run.head, sampler=head_name).build_sampler()
    head = build_head(config.run, config.num_classes, None, device, sampler=sampler)
    optimizer = build_head_optimizer(config.run, head)
    seconds = _timed(head.refresh_sampler, device)  # a graph or an index: before the first step
    if head_name == "knn":
        extra["graph_build_s"] = seconds
        extra["graph_build"] = "ivf" if sampler.uses_ivf(config.num_classes) else "exact"
        extra["graph_ms_per_step_amortised"] = seconds * 1e3 / sampler.refresh_every
    if head_name == "ann" and sampler.search == "ivf":
        extra["index_build_s"] = seconds
        extra["ann_backend"] = sampler.index.backend
        extra["index_ms_per_step_amortised"] = seconds * 1e3 / sampler.refresh_every
    if head_name == "ann":
        extra["ann_search"] = sampler.search
        extra["retrieval_s"] = []
        retrieve = sampler.select

        def timed_retrieval(*args):  # the sampler's retrieval and grouping, timed on its own
            began = time.perf_counter()
            selection = retrieve(*args)
            _synchronize(device)
            extra["retrieval_s"].append(time.perf_counter() - began)
            return selection

        sampler.select = timed_retrieval

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
