"""Load test of ``megaclass serve`` on loopback. Usage:
    serve_load.py EXPORT_DIR OUT_JSON [--requests 2000] [--clients 1,8,64] [--ef 256]
        [--max-wait-ms 0]
        [--searches hnsw,exact] [--rows 1] [--queries FILE.npy | --run RUN_DIR]

For each search (the export's index, and the exact search) it starts the server as a
subprocess (``megaclass serve``, a free port on 127.0.0.1), waits for ``/healthz``, then for each
number of concurrent clients sends a bounded number of ``POST /v1/search`` requests (``--rows``
embeddings each, k = 10) from that many client threads (keep-alive connections of
``http.client``), and records the throughput (requests per second), the p50 / p99 latency and
the share of answers equal to the exact search's top-10 (recall@10 against exact). The
embeddings: ``--queries``, or with ``--run`` the backbone's embeddings of the run's held-out
samples (the queries of ``benchmarks/index.py``), else the export's own class rows plus noise.
Stops by itself; writes JSON and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import httpx
import numpy as np

from megaclass.bench.machine import machine_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--searches", default="hnsw,exact")
    parser.add_argument("--ef", type=int, default=256)
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="the server's batch wait")
    parser.add_argument("--rows", type=int, default=1, help="embeddings per request")
    parser.add_argument("--queries", type=Path, help="embeddings .npy [N, D]")
    parser.add_argument("--run", type=Path, help="the export's run: its held-out embeddings")
    args = parser.parse_args()
    queries = load_queries(args)
    truth = None
    records = []
    for search in args.searches.split(","):
        with Server(args.export, search, args.ef, args.max_wait_ms) as url:
            info = httpx.get(f"{url}/v1/info").json()
            answers = ask_all(url, queries, 4)  # the answers of this search, for recall
            if search == "exact":
                truth = answers
            for clients in map(int, args.clients.split(",")):
                record = load(url, queries, clients, args.requests, args.rows)
                record.update(search=search, index=info["index"], clients=clients)
                record["answers"] = answers
                records.append(record)
                print(json.dumps({k: v for k, v in record.items() if k != "answers"}))
    for record in records:
        answers = record.pop("answers")
        if truth is not None:
            record["recall_at_10_vs_exact"] = recall(answers, truth)
    result = {
        "machine": machine_info("cpu"),
        "export": str(args.export),
        "rows_per_request": args.rows,
        "max_wait_ms": args.max_wait_ms,
        "requests": args.requests,
        "records": records,
    }
    args.out.write_text(json.dumps(result, indent=1))
    write_table(result, args.out.with_suffix(".md"))


def load_queries(args) -> np.ndarray:
    if args.queries:
        return np.load(args.queries).astype(np.float32)
    if args.run:
        from ann_recall import trained_weights_and_queries

        return trained_weights_and_queries(args.run, 2000)[1].detach().numpy()
    weights = np.load(args.export / "class_weights.npy", mmap_mode="r")
    rng = np.random.default_rng(0)
    rows = weights[np.sort(rng.choice(len(weights), 2000, replace=False))]
    scale = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows + 0.5 * scale * rng.standard_normal(rows.shape) / np.sqrt(rows.shape[1])).astype(
        np.float32
    )


class Server:
    """``megaclass serve EXPORT --search S`` on a free loopback port, for a ``with`` block."""

    def __init__(self, export: Path, search: str, ef: int, max_wait_ms: float) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.command = [
            *(sys.executable, "-m", "megaclass", "serve", str(export)),
            *("--port", str(self.port), "--search", search, "--ef", str(ef)),
            *("--max-wait-ms", str(max_wait_ms)),
        ]

    def __enter__(self) -> str:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    return url
            except httpx.TransportError:
                time.sleep(0.5)
        self.process.kill()
        raise RuntimeError(f"{' '.join(self.command)} did not answer within 600 s")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def ask_all(url: str, queries: np.ndarray, clients: int) -> list[list[int]]:
    def ask(row):
        body = {"embeddings": [row.tolist()], "k": 10}
        return httpx.post(f"{url}/v1/search", json=body, timeout=60).json()["ids"][0]

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(ask, queries))


def load(url: str, queries: np.ndarray, clients: int, requests: int, rows: int) -> dict:
    """``requests`` requests from ``clients`` threads, each with its own keep-alive connection
    (the standard library's: a lighter client leaves more of the shared cores to the server),
    the bodies encoded before the clock starts."""
    per_client = max(1, requests // clients)
    address = urllib.parse.urlsplit(url)

    def bodies(number: int) -> list[bytes]:
        starts = [
            (number * per_client + i) * rows % (len(queries) - rows) for i in range(per_client)
        ]
        return [
            json.dumps({"embeddings": queries[s : s + rows].tolist(), "k": 10}).encode()
            for s in starts
        ]

    def client(encoded: list[bytes]) -> list[float]:
        latencies = []
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        for body in encoded:
            begun = time.perf_counter()
            connection.request("POST", "/v1/search", body, {"Content-Type": "application/json"})
            answer = connection.getresponse()
            text = answer.read()
            latencies.append(time.perf_counter() - begun)
            if answer.status != 200:
                raise RuntimeError(f"{answer.status}: {text[:200]!r}")
        connection.close()
        return latencies

    encoded = [bodies(number) for number in range(clients)]
    begun = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        latencies = np.concatenate(list(pool.map(client, encoded)))
    seconds = time.perf_counter() - begun
    return {
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": 1e3 * float(np.percentile(latencies, 50)),
        "p99_ms": 1e3 * float(np.percentile(latencies, 99)),
    }


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(found, truth, strict=True))
    return hits / sum(len(b) for b in truth)


def write_table(result: dict, path: Path) -> None:
    lines = [
        f"{result['machine'].get('cpu', '')}, {result['rows_per_request']} embedding(s) per "
        f"request, {result['requests']} requests per row",
        "",
        "| search | clients | requests/s | p50 ms | p99 ms | recall@10 vs exact |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["records"]:
        search = r["search"] + (f" (ef {r['index']['ef']})" if "ef" in r["index"] else "")
        lines.append(
            f"| {search} | {r['clients']} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r.get('recall_at_10_vs_exact', float('nan')):.3f} |"
        )
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
