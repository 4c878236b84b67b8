"""Retrieval recall of BinaryIVF on a trained model's class weights. Usage:
    ann_recall.py RUN OUT_JSON [--k 10] [--retrieved N] [--nprobes 1,2,4,8,16] [--queries 2048]

RUN is a run folder (a checkpoint of a trained model, any data source). The queries
are the backbone's embeddings of held-out samples; the truth is each query's exact top-k classes
by cosine over all class weights (the logits of a cosine-margin head). For each code length,
rotation, nprobe and re-rank depth it records recall@k and the search time of the whole query
set (2 threads), and the same for faiss's IndexBinaryIVF (its own binary k-means quantizer, over
the same codes) when faiss is installed. With ``--retrieved N`` each query retrieves N classes
(as the ANN softmax retrieves ``k`` per sample) and recall is the share of the true top-k among
them.
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from megaclass.bench.machine import machine_info
from megaclass.index import BinaryIVF
from megaclass.train.checkpoint import latest_checkpoint, load_checkpoint
from megaclass.train.config import load_config
from megaclass.train.loop import build_model

SETTINGS = [(64, "random", 0), (128, "random", 0), (128, "itq", 0), (128, "random", 100)]


@torch.no_grad()
def trained_weights_and_queries(run: Path, num_queries: int):
    config = load_config(str(run / "config.toml"))
    model = build_model(config, None)
    state, _ = load_checkpoint(latest_checkpoint(run), model.head)
    model.backbone.load_state_dict(state.backbone)
    model.backbone.eval()
    embeddings = []
    for inputs, _ in model.dataset.eval_batches(1024):
        embeddings.append(model.backbone(inputs))
        if sum(len(e) for e in embeddings) >= num_queries:
            break
    return model.head.weight.detach().float(), torch.cat(embeddings)[:num_queries]


def exact_topk(weight, queries, k):
    unit = F.normalize(weight, dim=1)
    return torch.cat(
        [(F.normalize(q, dim=1) @ unit.t()).topk(k, dim=1).indices for q in queries.split(256)]
    )


def recall(found, truth):
    """recall@k: the share of the true top-k found; and the share of queries whose true
    nearest class is among those found."""
    hits = (found[:, :, None] == truth[:, None, :]).any(2).sum()
    nearest = (found == truth[:, :1]).any(1).float().mean()
    return float(hits) / truth.numel(), float(nearest)


def timed(fn, *args):
    began = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - began


def measure(weight, queries, truth, retrieved, nprobes):
    records = []
    for bits, rotation, rerank in SETTINGS:
        index, build_s = timed(BinaryIVF(bits, rotation=rotation).build, weight)
        for nprobe in nprobes:
            (_, found), seconds = timed(index.search, queries, retrieved, nprobe, rerank)
            records.append(
                {
                    "backend": f"BinaryIVF ({index.backend} scan)",
                    "bits": bits,
                    "rotation": rotation,
                    "rerank": rerank,
                    "nprobe": nprobe,
                    **dict(zip(("recall", "nearest_found"), recall(found, truth), strict=True)),
                    "search_ms": seconds * 1e3,
                    "build_s": build_s,
                }
            )
            print(records[-1], flush=True)
    records += measure_faiss(weight, queries, truth, retrieved, nprobes)
    return records


def measure_faiss(weight, queries, truth, retrieved, nprobes):
    try:
        import faiss
    except ImportError:
        print("faiss not installed: no faiss comparison")
        return []
    import numpy as np

    index = BinaryIVF(128).build(weight)
    codes = index.codes.numpy().view(np.uint8)  # [C, 16]: the same sign codes
    query_codes = index.encode(queries).numpy().view(np.uint8)
    lists = len(index.centroids)
    faiss_index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(128), 128, lists)
    began = time.perf_counter()
    faiss_index.train(codes)
    faiss_index.add(codes)
    build_s = time.perf_counter() - began
    records = []
    for nprobe in nprobes:
        faiss_index.nprobe = nprobe
        (_, found), seconds = timed(faiss_index.search, query_codes, retrieved)
        records.append(
            {
                "backend": "faiss IndexBinaryIVF",
                "bits": 128,
                "rotation": "random",
                "rerank": 0,
                "nprobe": nprobe,
                **dict(
                    zip(
                        ("recall", "nearest_found"),
                        recall(torch.from_numpy(found), truth),
                        strict=True,
                    )
                ),
                "search_ms": seconds * 1e3,
                "build_s": build_s,
            }
        )
        print(records[-1], flush=True)
    return records


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--k", type=int, default=10, help="true nearest classes per query")
    parser.add_argument("--retrieved", type=int, default=0, help="classes retrieved (0: k)")
    parser.add_argument("--nprobes", default="1,2,4,8,16", help="comma-separated nprobe values")
    parser.add_argument("--queries", type=int, default=2048)
    args = parser.parse_args()
    torch.set_num_threads(2)
    try:
        import faiss

        faiss.omp_set_num_threads(2)
    except ImportError:
        pass
    weight, queries = trained_weights_and_queries(args.run, args.queries)
    truth = exact_topk(weight, queries, args.k)
    retrieved = args.retrieved or args.k
    nprobes = [int(p) for p in args.nprobes.split(",")]
    records = measure(weight, queries, truth, retrieved, nprobes)
    summary = {
        "run": str(args.run),
        "num_classes": len(weight),
        "queries": len(queries),
        "k": args.k,
        "retrieved": retrieved,
        "machine": machine_info("cpu"),
        "records": records,
    }
    args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
