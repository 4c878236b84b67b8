"""BinaryGraph against the search libraries people use, on the same vectors and queries. Usage:
    index.py RUN OUT_JSON [--queries 2000] [--threads 2] [--engines a,b,...] [--limit N]
    index.py --synthetic N OUT_JSON [...]     (class points of the synthetic catalogue, N of them)
    index.py ... --queries 0                  (build only: build time and bytes per vector)

RUN is a run folder (a trained model): the vectors are its class weights, the queries the
backbone's embeddings of held-out samples. With ``--synthetic N`` the vectors are the synthetic
catalogue's class points and the queries noisy copies of some of them. The truth is each query's
exact top-10 by cosine. For each engine it records the build time (``--threads`` threads), the
bytes per vector of the saved index (what it holds in RAM; BinaryGraph's float vectors for the
re-rank may stay on disk and are not counted) and, over a sweep of its search parameter,
recall@10 and queries per second for the whole query set; then the best QPS at recall@10 >=
0.90, 0.95 and 0.99. Engines whose library is missing are reported as skipped. A markdown table
and a plot are written beside OUT_JSON. The anchors come from the package index:
``pip install faiss-cpu hnswlib pynndescent``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from megaclass.bench.machine import machine_info
from megaclass.index.binary_codes import encode, exact_rerank, fit_rotation
from megaclass.index.binary_graph import BinaryGraph

K = 10
TARGETS = (0.90, 0.95, 0.99)
EFS = (16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
NPROBES = (1, 4, 16, 64, 256, 1024)
ENGINES = (
    "binary_graph",
    "binary_graph_torch",
    "binary_graph_hamming_build",
    "binary_graph_partitions_only",
    "binary_graph_256_bits",
    "binary_graph_two_passes",
    "hnswlib",
    "faiss_hnsw",
    "faiss_binary_hnsw",
    "faiss_ivf",
    "pynndescent",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, help="a trained run folder")
    parser.add_argument("out", type=Path, help="the JSON to write")
    parser.add_argument("--synthetic", type=int, default=0, help="N synthetic class points")
    parser.add_argument("--queries", type=int, default=2000, help="0: build only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--limit", type=int, default=0, help="index only the first N vectors")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # build progress
    vectors, queries = load_vectors(args)
    vectors = np.ascontiguousarray(F.normalize(vectors, dim=1).numpy())
    queries = np.ascontiguousarray(F.normalize(queries, dim=1).numpy())
    truth = exact_topk(vectors, queries)
    print(f"{len(vectors):,} vectors of dim {vectors.shape[1]}, {len(queries):,} queries")
    records = []
    for engine in args.engines.split(","):
        try:
            record = RUNNERS[engine](vectors, queries, truth, args.threads)
        except ImportError as error:
            record = {"skipped": f"{error.name} not installed"}
        record = {"engine": engine, **record}
        records.append(record)
        print(json.dumps(record), flush=True)
        result = {
            "machine": machine_info("cpu"),
            "vectors": len(vectors),
            "dim": int(vectors.shape[1]),
            "queries": len(queries),
            "source": f"synthetic {args.synthetic}" if args.synthetic else str(args.run),
            "threads": args.threads,
            "engines": records,
        }
        args.out.write_text(json.dumps(result, indent=1))  # after each engine: a long run's part
    write_table(result, args.out.with_suffix(".md"))
    write_plot(result, args.out.with_suffix(".png"))


def load_vectors(args) -> tuple[torch.Tensor, torch.Tensor]:
    if args.synthetic:
        from megaclass.data.synthetic import SyntheticCatalog

        vectors = SyntheticCatalog(args.synthetic).class_points(torch.arange(args.synthetic))
        generator = torch.Generator().manual_seed(1)
        pick = torch.randperm(args.synthetic, generator=generator)[: args.queries]
        noise = torch.randn(len(pick), vectors.shape[1], generator=generator)
        return vectors, vectors[pick] + 0.05 * noise
    from ann_recall import trained_weights_and_queries

    vectors, queries = trained_weights_and_queries(args.run, args.queries)
    if args.limit:
        vectors = vectors[: args.limit]
    return vectors, queries


def exact_topk(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    keys = torch.from_numpy(vectors)
    return torch.cat(
        [(torch.from_numpy(q) @ keys.t()).topk(K, 1).indices for q in np.array_split(queries, 16)]
    ).numpy()


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(
        len(set(a[:K].tolist()) & set(b.tolist())) for a, b in zip(found, truth, strict=True)
    )
    return hits / truth.size


def sweep(search, settings, queries, truth) -> list[dict]:
    """recall@10 and QPS of ``search(queries, setting)`` for each setting, until recall 0.999
    (none without queries: a build-only run)."""
    points = []
    if len(queries) == 0:
        return points
    for setting in settings:
        search(queries[:64], setting)  # warm
        start = time.perf_counter()
        found = search(queries, setting)
        seconds = time.perf_counter() - start
        points.append(
            {"setting": setting, "recall": recall(found, truth), "qps": len(queries) / seconds}
        )
        if points[-1]["recall"] >= 0.999:
            break
    return points


def saved_bytes(save) -> float:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "index"
        save(str(path))
        return path.stat().st_size


def timed(build):
    start = time.perf_counter()
    index = build()
    return index, time.perf_counter() - start


def run_binary_graph(vectors, queries, truth, threads, backend="faiss", **settings):
    tensor = torch.from_numpy(vectors)
    index, seconds = timed(lambda: BinaryGraph(backend=backend, **settings).build(tensor))
    points = sweep(
        lambda q, ef: index.search(torch.from_numpy(q), K, ef=max(ef, K))[1].numpy(),
        EFS,
        queries,
        truth,
    )
    return {
        "build_s": seconds,
        "bytes_per_vector": saved_bytes(index.save) / len(vectors),
        "parameter": "ef",
        "points": points,
        "settings": vars(index.settings),
    }


def run_hnswlib(vectors, queries, truth, threads, m=16, ef_construction=100):
    import hnswlib

    def build():
        index = hnswlib.Index(space="ip", dim=vectors.shape[1])
        index.init_index(max_elements=len(vectors), M=m, ef_construction=ef_construction)
        index.set_num_threads(threads)
        index.add_items(vectors)
        return index

    index, seconds = timed(build)

    def search(q, ef):
        index.set_ef(max(ef, K))
        return index.knn_query(q, k=K)[0]

    return {
        "build_s": seconds,
        "bytes_per_vector": saved_bytes(index.save_index) / len(vectors),
        "parameter": "ef",
        "points": sweep(search, EFS, queries, truth),
        "settings": {"M": m, "ef_construction": ef_construction},
    }


def _faiss_threads(threads):
    import faiss

    faiss.omp_set_num_threads(threads)
    return faiss


def run_faiss_hnsw(vectors, queries, truth, threads, m=16, ef_construction=100):
    faiss = _faiss_threads(threads)

    def build():
        index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.add(vectors)
        return index

    index, seconds = timed(build)

    def search(q, ef):
        index.hnsw.efSearch = max(ef, K)
        return index.search(q, K)[1]

    return {
        "build_s": seconds,
        "bytes_per_vector": saved_bytes(lambda p: faiss.write_index(index, p)) / len(vectors),
        "parameter": "ef",
        "points": sweep(search, EFS, queries, truth),
        "settings": {"M": m, "ef_construction": ef_construction},
    }


def run_faiss_binary_hnsw(vectors, queries, truth, threads, m=16, bits=128):
    """faiss's own binary HNSW over the same kind of sign codes, re-ranked exactly as
    BinaryGraph re-ranks (the same random rotation as BinaryGraph's default)."""
    faiss = _faiss_threads(threads)
    sample = torch.from_numpy(vectors[:65536])
    rotation = fit_rotation(sample, bits, "random", torch.Generator().manual_seed(0))

    def to_bytes(rows):
        return encode(torch.from_numpy(rows), rotation).numpy().view(np.uint8)

    def build():
        index = faiss.IndexBinaryHNSW(bits, m)
        index.add(to_bytes(vectors))
        return index

    index, seconds = timed(build)
    tensor = torch.from_numpy(vectors)

    def search(q, ef):
        index.hnsw.efSearch = max(ef, K)
        found = torch.from_numpy(index.search(to_bytes(q), max(ef, K))[1])
        return exact_rerank(tensor, torch.from_numpy(q), found, K)[1].numpy()

    return {
        "build_s": seconds,
        "bytes_per_vector": saved_bytes(lambda p: faiss.write_index_binary(index, p))
        / len(vectors),
        "parameter": "ef",
        "points": sweep(search, EFS, queries, truth),
        "settings": {"M": m, "bits": bits},
    }


def run_faiss_ivf(vectors, queries, truth, threads):
    faiss = _faiss_threads(threads)
    lists = int(4 * np.sqrt(len(vectors)))

    def build():
        quantizer = faiss.IndexFlatIP(vectors.shape[1])
        index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors[np.random.default_rng(0).permutation(len(vectors))[: 64 * lists]])
        index.add(vectors)
        return index

    index, seconds = timed(build)

    def search(q, nprobe):
        index.nprobe = nprobe
        return index.search(q, K)[1]

    return {
        "build_s": seconds,
        "bytes_per_vector": saved_bytes(lambda p: faiss.write_index(index, p)) / len(vectors),
        "parameter": "nprobe",
        "points": sweep(search, NPROBES, queries, truth),
        "settings": {"lists": lists},
    }


def run_pynndescent(vectors, queries, truth, threads):
    import numba
    import pynndescent

    numba.set_num_threads(threads)
    index, seconds = timed(
        lambda: pynndescent.NNDescent(vectors, metric="cosine", n_neighbors=30, n_jobs=threads)
    )
    index.prepare()

    def search(q, epsilon):
        return index.query(q, k=K, epsilon=epsilon)[0]

    graph = index.neighbor_graph[0]
    return {
        "build_s": seconds,
        "bytes_per_vector": graph.nbytes * 2 / len(vectors),  # ids and distances
        "parameter": "epsilon",
        "points": sweep(search, (0.0, 0.05, 0.1, 0.2, 0.3, 0.5), queries, truth),
        "settings": {"n_neighbors": 30},
    }


RUNNERS = {
    "binary_graph": run_binary_graph,
    "binary_graph_torch": lambda *a: run_binary_graph(*a, backend="torch"),
    "binary_graph_hamming_build": lambda *a: run_binary_graph(*a, build_distance="hamming"),
    "binary_graph_partitions_only": lambda *a: run_binary_graph(*a, search_passes=0),
    "binary_graph_256_bits": lambda *a: run_binary_graph(*a, num_bits=256),
    "binary_graph_two_passes": lambda *a: run_binary_graph(*a, search_passes=2),
    "hnswlib": run_hnswlib,
    "faiss_hnsw": run_faiss_hnsw,
    "faiss_binary_hnsw": run_faiss_binary_hnsw,
    "faiss_ivf": run_faiss_ivf,
    "pynndescent": run_pynndescent,
}


def best_qps(points: list[dict], target: float) -> float | None:
    reached = [p["qps"] for p in points if p["recall"] >= target]
    return max(reached) if reached else None


def write_table(result: dict, path: Path) -> None:
    lines = [
        f"{result['vectors']:,} vectors of dim {result['dim']} ({result['source']}), "
        f"{result['queries']:,} queries, {result['threads']} threads, "
        f"{result['machine'].get('cpu', '')}",
        "",
        "| engine | build s | bytes / vector | QPS at recall@10 0.90 | 0.95 | 0.99 | best recall |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for record in result["engines"]:
        if "skipped" in record:
            lines.append(f"| {record['engine']} | {record['skipped']} | | | | | |")
            continue
        qps = [best_qps(record["points"], t) for t in TARGETS]
        cells = ["-" if q is None else f"{q:,.0f}" for q in qps]
        top = max((p["recall"] for p in record["points"]), default=None)
        lines.append(
            f"| {record['engine']} | {record['build_s']:.1f} | {record['bytes_per_vector']:.0f} | "
            + " | ".join(cells)
            + (" | - |" if top is None else f" | {top:.3f} |")
        )
    path.write_text("\n".join(lines) + "\n")


def write_plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for record in result["engines"]:
        if "skipped" in record:
            continue
        points = record["points"]
        if not points:
            continue
        axes.plot(
            [p["recall"] for p in points], [p["qps"] for p in points], "o-", label=record["engine"]
        )
    axes.set_xlabel("recall@10")
    axes.set_ylabel(f"queries per second ({result['threads']} threads)")
    axes.set_yscale("log")
    axes.set_title(f"{result['vectors']:,} vectors, dim {result['dim']}")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
