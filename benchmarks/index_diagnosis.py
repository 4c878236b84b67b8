"""What limits BinaryGraph's recall: the codes or the graph. Usage:
    index_diagnosis.py codes RUN [--limit 100000]     # the true top-10 in the best R by code
    index_diagnosis.py coverage RUN [--limit 100000]  # true neighbours sharing a partition
    index_diagnosis.py graph RUN [KEY=VALUE ...]      # one build (GraphSettings keys, e.g.
                          # search_passes=2), searched by the float vectors and by the codes
    index_diagnosis.py speed RUN --limit 0 --queries 2000 --threads 2 [KEY=VALUE ...]
                          # recall@10 and QPS over ef: a build at 256 and one at 512 bits, each
                          # also searched with only its nearest 44 / 36 / 28 near links

RUN is a trained run folder (``runs/default``): the vectors are its class weights (the first
``--limit`` rows), the queries the backbone's embeddings of held-out samples, the truth their
exact top-10 by cosine. ``--threads`` threads (default one). Prints one line per measurement
(``benchmarks/results/index.md``, "More bits from orthogonal blocks"; ``speed``: "Degree
64", its last two tables).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from megaclass.index import BinaryGraph
from megaclass.index.binary_codes import encode, fit_rotation
from megaclass.index.binary_graph import binary_kmeans, nearest_codes
from megaclass.index.faiss_engines import FaissSignGraph

K = 10
EFS = (128, 256, 512, 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("codes", "coverage", "graph", "speed"))
    parser.add_argument("run", type=Path)
    parser.add_argument("settings", nargs="*", help="GraphSettings as KEY=VALUE (graph, speed)")
    parser.add_argument("--limit", type=int, default=100_000, help="the first N rows (0: all)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_intermixed_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    from ann_recall import trained_weights_and_queries

    vectors, queries = trained_weights_and_queries(args.run, args.queries)
    vectors = F.normalize(vectors[: args.limit or None], dim=1)
    queries = F.normalize(queries, dim=1)
    settings = dict(_setting(item) for item in args.settings)
    if args.what == "codes":
        codes(vectors, queries)
    elif args.what == "coverage":
        coverage(vectors)
    elif args.what == "speed":
        speed(vectors, queries, settings)
    else:
        graph(vectors, queries, settings)


def _setting(item: str) -> tuple[str, object]:
    key, value = item.split("=")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def top10(vectors: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    return torch.cat([(q @ vectors.t()).topk(K, 1).indices for q in queries.split(256)])


def recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    return float((found[:, :, None] == truth[:, None, :]).any(1).sum()) / truth.numel()


def codes(vectors: torch.Tensor, queries: torch.Tensor) -> None:
    """The share of the true top-10 among the best R rows by the asymmetric score."""
    truth = top10(vectors, queries)
    sample = vectors[:20_000]
    for bits, kind in (
        (128, "random"),
        (128, "itq"),
        (256, "random"),
        (256, "itq"),
        (384, "random"),
        (512, "random"),
    ):
        rotation = fit_rotation(sample, bits, kind, torch.Generator().manual_seed(0))
        scores = (queries @ rotation) @ torch.sign(vectors @ rotation).t()
        shares = [recall(scores.topk(r, 1).indices, truth) for r in (32, 64, 128, 256, 512)]
        print(f"{bits} bits {kind}: R 32..512 " + " ".join(f"{s:.3f}" for s in shares), flush=True)
    gaussian = torch.randn(vectors.shape[1], 256, generator=torch.Generator().manual_seed(0))
    scores = (queries @ gaussian) @ torch.sign(vectors @ gaussian).t()
    shares = [recall(scores.topk(r, 1).indices, truth) for r in (32, 64, 128, 256, 512)]
    print("256 bits gaussian: R 32..512 " + " ".join(f"{s:.3f}" for s in shares), flush=True)


def coverage(vectors: torch.Tensor) -> None:
    """The share of a vector's true 10 nearest that share a partition with it."""
    picked = torch.randperm(len(vectors), generator=torch.Generator().manual_seed(0))[:2000]
    nearest = (vectors[picked] @ vectors.t()).topk(K + 1, 1).indices[:, 1:]  # [2000, 10]
    sample = vectors[:20_000]

    def shared(parts: torch.Tensor) -> float:  # parts [N, t]
        mine, theirs = parts[picked], parts[nearest]  # [2000, t], [2000, 10, t]
        return float(
            (mine[:, None, :, None] == theirs[:, :, None, :]).any(-1).any(-1).float().mean()
        )

    for partition_size in (8192, 820):
        for overlap in (2, 4):
            count = round(len(vectors) * overlap / partition_size)
            line = f"{count} partitions (overlap {overlap}):"
            for bits in (128, 256):
                generator = torch.Generator().manual_seed(0)
                rotation = fit_rotation(sample, bits, "random", generator)
                centroids = binary_kmeans(encode(sample, rotation), count, generator)
                parts = nearest_codes(encode(vectors, rotation), centroids, overlap)
                line += f" binary k-means {bits} bits {shared(parts):.3f}"
            kmeans = faiss.Kmeans(vectors.shape[1], count, niter=10, spherical=True, seed=0)
            kmeans.train(sample.numpy())
            nearest_centroid = faiss.IndexFlatIP(vectors.shape[1])
            nearest_centroid.add(kmeans.centroids)
            parts = torch.from_numpy(nearest_centroid.search(vectors.numpy(), overlap)[1])
            print(f"{line} float k-means {shared(parts):.3f}", flush=True)


def graph(vectors: torch.Tensor, queries: torch.Tensor, settings: dict) -> None:
    """One build; its graph searched by the float vectors (faiss walking our graph as the only
    level of an HNSWFlat) and by the codes (BinaryGraph.search)."""
    truth = top10(vectors, queries)
    began = time.perf_counter()
    index = BinaryGraph(**settings).build(vectors)
    line = f"{settings} build {time.perf_counter() - began:.0f} s:"
    floats = faiss.IndexHNSWFlat(
        vectors.shape[1], index.graph.shape[1] // 2, faiss.METRIC_INNER_PRODUCT
    )
    floats.storage.add(vectors.numpy())
    floats.ntotal = len(vectors)
    hnsw = floats.hnsw
    faiss.copy_array_to_vector(np.ones(len(vectors), dtype=np.int32), hnsw.levels)
    hnsw.prepare_level_tab(len(vectors), True)
    links = faiss.rev_swig_ptr(hnsw.neighbors.data(), hnsw.neighbors.size())
    links[:] = index.graph.numpy().reshape(-1)
    hnsw.entry_point, hnsw.max_level = int(index.medoids[0]), 0
    for ef in EFS:
        hnsw.efSearch = ef
        by_floats = torch.from_numpy(floats.search(queries.numpy(), K)[1])
        by_codes = index.search(queries, K, ef=ef)[1]
        line += (
            f" ef {ef} floats {recall(by_floats, truth):.3f} codes {recall(by_codes, truth):.3f};"
        )
    print(line, flush=True)


def speed(vectors: torch.Tensor, queries: torch.Tensor, settings: dict) -> None:
    """Recall@10 and QPS over ef of graphs built at 256 and 512 bits, each searched (by faiss,
    with the re-rank) with all its links and with only the nearest few of its near links plus
    its random ones; all variants of one ef timed interleaved, 3 repeats, the median."""
    truth = top10(vectors, queries)
    variants = {}
    for bits in (256, 512):
        began = time.perf_counter()
        index = BinaryGraph(**{**settings, "num_bits": bits}).build(vectors)
        print(f"{bits} bits: build {time.perf_counter() - began:.0f} s", flush=True)
        near = index.near_degree
        for kept in (near, 44, 36, 28) if bits == 256 else (near,):
            links = torch.cat([index.graph[:, :kept], index.graph[:, near:]], 1).contiguous()
            mirror = FaissSignGraph(index.codes, links, int(index.medoids[0]))
            variants[f"{bits} bits, {links.shape[1]} links"] = (index, mirror)
    for ef in (64, 96, 128, 192, 256, 384):
        line = f"ef {ef}:"
        for name, (index, mirror) in variants.items():
            index._faiss = mirror  # the search walks this mirror of the graph
            index.search(queries[:64], K, ef=ef)
            rates = []
            for _ in range(3):
                began = time.perf_counter()
                found = index.search(queries, K, ef=ef)[1]
                rates.append(len(queries) / (time.perf_counter() - began))
            line += f" {name} {recall(found, truth):.3f} ({sorted(rates)[1]:.0f} QPS);"
        print(line, flush=True)


if __name__ == "__main__":
    main()
