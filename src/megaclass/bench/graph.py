"""``megaclass bench graph``: build time and recall@k of the class KNN graph builds.

The class weights are catalogue-like, as a trained head's would be: the latent points of the
synthetic catalogue's classes (families of near-identical products) through a fixed random
linear map to ``dim``, plus Gaussian noise (``noise`` relative to the signal's scale). Each build
(``exact`` and ``ivf`` at each ``nprobe``) runs on the whole set and is timed; its recall@k is
measured on ``queries`` random classes against their exact neighbours by brute force (one
[queries, classes] pass, never a [classes, classes] matrix). recall@k = |found ∩ exact| / k,
averaged over the queries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from megaclass.bench.machine import machine_info
from megaclass.data import SyntheticCatalog
from megaclass.functional import shard_topk
from megaclass.index import build_ivf_knn_graph, build_knn_graph
from megaclass.index.binary_graph import build_binary_graph_knn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_POINTS_BLOCK = 1 << 20  # classes generated at a time


@dataclass(frozen=True)
class GraphBenchConfig:
    num_classes: int = 100_000
    dim: int = 128
    k: int = 32
    nprobes: tuple[int, ...] = (1, 2, 4, 8)
    exact: bool = True  # also time the exact build (C^2 D work: minutes beyond ~2e5 classes)
    queries: int = 2000
    noise: float = 0.3
    dtype: str = "bf16"
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.num_classes < 2 or self.k < 1 or self.dim < 1 or self.queries < 1:
            raise ValueError("num_classes must be >= 2 and k, dim, queries >= 1")
        if any(p < 1 for p in self.nprobes):
            raise ValueError(f"nprobe values must be >= 1, got {self.nprobes}")


def catalog_weights(num_classes: int, dim: int, noise: float, seed: int) -> torch.Tensor:
    """Catalogue-like class weights [num_classes, dim] (see the module docstring)."""
    catalog = SyntheticCatalog(num_classes, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    latent = catalog.class_points(torch.zeros(1, dtype=torch.int64)).shape[1]
    projection = torch.randn(latent, dim, generator=generator) / latent**0.5
    weight = torch.empty(num_classes, dim)
    for start in range(0, num_classes, _POINTS_BLOCK):
        ids = torch.arange(start, min(start + _POINTS_BLOCK, num_classes))
        signal = catalog.class_points(ids) @ projection  # [n, dim], rows of norm ~1
        weight[ids] = signal + noise / dim**0.5 * torch.randn(len(ids), dim, generator=generator)
    return weight


def run_graph_bench(config: GraphBenchConfig, log: Callable[[str], None] = print) -> list[dict]:
    """One record per build: build seconds and recall@1, @10 and @k on the query sample."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    dtype = DTYPES[config.dtype]
    log(f"generating {config.num_classes:,} catalogue-like class weights ...")
    weight = catalog_weights(config.num_classes, config.dim, config.noise, config.seed)
    generator = torch.Generator().manual_seed(config.seed + 1)
    queries = torch.randperm(config.num_classes, generator=generator)[: config.queries]
    log(f"exact neighbours of {len(queries):,} query classes by brute force ...")
    truth = _exact_neighbours(weight, queries, config.k)
    builds: list[tuple[str, int | None, Callable[[], torch.Tensor]]] = []
    if config.exact:
        builds.append(("exact", None, lambda: _exact_build(weight, config, dtype)))
    for nprobe in config.nprobes:
        builds.append(("ivf", nprobe, lambda p=nprobe: _ivf_build(weight, config, p, dtype)))
    builds.append(
        (
            "binary_graph",
            None,
            lambda: build_binary_graph_knn(weight, config.num_classes, config.k, None),
        )
    )
    machine = machine_info("cpu")
    records = []
    for build, nprobe, run in builds:
        log(f"building the {build} graph" + (f", nprobe {nprobe}" if nprobe else "") + " ...")
        start = time.perf_counter()
        graph = run()
        seconds = time.perf_counter() - start
        found = graph[queries].long()
        record = {
            "build": build,
            "nprobe": nprobe,
            "build_s": seconds,
            **{f"recall@{r}": _recall(found, truth, r) for r in _recall_depths(config.k)},
            "config": asdict(config),
            "machine": machine,
        }
        log(format_table([record], header=False))
        records.append(record)
    return records


def format_table(records: list[dict], header: bool = True) -> str:
    depths = [key for key in records[0] if key.startswith("recall@")]
    lines = []
    if header:
        config = records[0]["config"]
        lines.append(
            f"{config['num_classes']:,} classes, dim {config['dim']}, k {config['k']}, "
            f"{config['dtype']}, {config['queries']:,} queries"
        )
        lines.append(
            f"{'build':6} {'nprobe':>6} {'build s':>9} " + " ".join(f"{d:>10}" for d in depths)
        )
    for r in records:
        nprobe = "-" if r["nprobe"] is None else str(r["nprobe"])
        lines.append(
            f"{r['build']:6} {nprobe:>6} {r['build_s']:>9.1f} "
            + " ".join(f"{r[d]:>10.3f}" for d in depths)
        )
    if header:
        machine = records[0]["machine"]
        lines.append(
            f"machine: {machine['cpu']}, {machine['torch_threads']} threads, "
            f"torch {machine['torch']}"
        )
    return "\n".join(lines)


def _exact_build(weight, config: GraphBenchConfig, dtype) -> torch.Tensor:
    return build_knn_graph(weight, config.num_classes, config.k, None, matmul_dtype=dtype)


def _ivf_build(weight, config: GraphBenchConfig, nprobe: int, dtype) -> torch.Tensor:
    return build_ivf_knn_graph(
        weight,
        config.num_classes,
        config.k,
        None,
        nprobe=nprobe,
        seed=config.seed,
        matmul_dtype=dtype,
    )


def _exact_neighbours(weight, queries, k: int) -> torch.Tensor:
    """The true k nearest other classes of ``queries`` [q]: ids [q, k], nearest first (fp32)."""
    unit = torch.nn.functional.normalize(weight, dim=1)
    scores, ids = shard_topk(
        unit[queries], unit, k + 1, normalize=False, chunk_size=8192, matmul_dtype=torch.float32
    )
    scores = scores.masked_fill(ids == queries[:, None], float("-inf"))  # drop the class itself
    return ids.gather(1, scores.topk(k, dim=1).indices)


def _recall(found: torch.Tensor, truth: torch.Tensor, depth: int) -> float:
    """Mean over rows of |found[:, :depth] ∩ truth[:, :depth]| / depth."""
    found, truth = found[:, :depth], truth[:, :depth]
    hits = (found[:, :, None] == truth[:, None, :]).any(dim=2) & (found >= 0)
    return hits.sum().item() / truth.numel()


def _recall_depths(k: int) -> list[int]:
    return sorted({d for d in (1, 10, k) if d <= k})
