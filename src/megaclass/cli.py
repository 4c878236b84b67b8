"""The ``megaclass`` command line: the only place that reads argv."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from megaclass.train import Interrupted, NonFiniteLoss, TrainingCollapsed

    try:
        return args.run(args)
    except ValueError as error:
        print(f"megaclass: error: {error}", file=sys.stderr)
        return 2
    except (NonFiniteLoss, TrainingCollapsed) as error:
        print(f"megaclass: {error}", file=sys.stderr)
        return 3
    except Interrupted as error:
        print(f"megaclass: {error}", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megaclass", description="Train classifiers with millions of classes."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train (the built-in default on the synthetic catalogue without arguments)",
        description="Train a model. Under torchrun the same command runs hybrid parallel.",
    )
    train.add_argument("--config", default=None, help="TOML file (see README for the keys)")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.steps=100 (repeatable)",
    )
    train.add_argument("--run-dir", default=None, help="run folder (default runs/<name>)")
    train.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue this run")
    train.set_defaults(run=_train)
    evaluate = commands.add_parser("eval", help="held-out top-1/top-5 of a run's checkpoint")
    evaluate.add_argument("run_dir")
    evaluate.set_defaults(run=_eval)
    export = commands.add_parser("export", help="write a run's weights as NumPy files")
    export.add_argument("run_dir")
    export.add_argument("out")
    export.set_defaults(run=_export)
    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(
        dest="bench", required=True
    )
    heads = bench.add_parser(
        "heads",
        help="time training steps of output layers side by side",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    heads.add_argument("--num-classes", type=int, default=100_000)
    heads.add_argument("--dim", type=int, default=128)
    heads.add_argument("--batch", type=int, default=1024)
    heads.add_argument(
        "--heads", default="naive,full", help="comma-separated: naive, full, random, knn, ann"
    )
    heads.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    heads.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    heads.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    heads.add_argument("--margin", default="softmax", choices=["softmax", "cosface", "arcface"])
    heads.add_argument("--chunk-size", type=int, default=4096, help="classes per chunk (full)")
    heads.add_argument(
        "--budget", type=float, default=0.1, help="random, knn: fraction (<= 1) or count"
    )
    heads.add_argument("--knn-k", type=int, default=32, help="knn: graph neighbours per class")
    heads.add_argument(
        "--refresh-every", type=int, default=1000, help="knn, ann: steps per graph (index) rebuild"
    )
    heads.add_argument("--graph-build", default="auto", choices=["auto", "exact", "ivf"])
    heads.add_argument("--nprobe", type=int, default=4, help="knn, ivf graph: lists per class")
    heads.add_argument("--ann-k", type=int, default=64, help="ann: classes retrieved per sample")
    heads.add_argument("--group-size", type=int, default=64, help="ann: samples per group")
    heads.add_argument("--ann-nprobe", type=int, default=8, help="ann: lists searched per sample")
    heads.add_argument("--ann-bits", type=int, default=128, help="ann: code length")
    heads.add_argument("--rerank", type=int, default=0, help="ann: candidates re-ranked exactly")
    heads.add_argument(
        "--ann-search", default="ivf", choices=["ivf", "exact"], help="ann: index or every class"
    )
    heads.add_argument(
        "--ann-uniform", type=float, default=0.0, help="ann: share of the classes drawn per step"
    )
    heads.add_argument(
        "--optimizer", default="sgd", choices=["sgd", "rowadagrad"], help="random, knn, ann"
    )
    heads.add_argument("--threads", type=int, default=None, help="torch threads per head")
    heads.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave glibc's malloc as it is for every head (default: megaclass heads keep "
        "freed memory, megaclass.process; naive never)",
    )
    heads.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    heads.add_argument("--json", default=None, metavar="OUT", help="write the records here")
    heads.set_defaults(run=_bench_heads)
    graph = bench.add_parser(
        "graph",
        help="build time and recall@k of the class KNN graph builds (exact, IVF)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    graph.add_argument("--num-classes", type=int, default=100_000)
    graph.add_argument("--dim", type=int, default=128)
    graph.add_argument("--k", type=int, default=32, help="neighbours per class")
    graph.add_argument("--nprobe", default="1,2,4,8", help="comma-separated IVF nprobe values")
    graph.add_argument(
        "--no-exact", action="store_true", help="skip timing the exact build (C^2 D work)"
    )
    graph.add_argument("--queries", type=int, default=2000, help="classes whose recall is measured")
    graph.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"], help="build products")
    graph.add_argument("--threads", type=int, default=None)
    graph.add_argument("--json", default=None, metavar="OUT", help="write the records here")
    graph.set_defaults(run=_bench_graph)
    return parser


def _bench_graph(args: argparse.Namespace) -> int:
    from megaclass.bench import graph as bench_graph
    from megaclass.process import tune_process

    tune_process(keep_freed=False, huge_pages=True)

    config = bench_graph.GraphBenchConfig(
        num_classes=args.num_classes,
        dim=args.dim,
        k=args.k,
        nprobes=tuple(int(p) for p in args.nprobe.split(",") if p),
        exact=not args.no_exact,
        queries=args.queries,
        dtype=args.dtype,
        threads=args.threads,
    )
    records = bench_graph.run_graph_bench(config, log=lambda line: print(line, flush=True))
    return _report(bench_graph.format_table(records), records, args.json)


def _bench_heads(args: argparse.Namespace) -> int:
    from megaclass.bench import heads as bench_heads
    from megaclass.process import tune_process

    tune_process(keep_freed=False, huge_pages=True)  # each head keeps freed memory or not

    config = bench_heads.HeadBenchConfig(
        num_classes=args.num_classes,
        dim=args.dim,
        batch=args.batch,
        heads=tuple(h.strip() for h in args.heads.split(",") if h.strip()),
        steps=args.steps,
        warmup=args.warmup,
        dtype=args.dtype,
        margin=args.margin,
        chunk_size=args.chunk_size,
        budget=args.budget,
        knn_k=args.knn_k,
        refresh_every=args.refresh_every,
        graph_build=args.graph_build,
        nprobe=args.nprobe,
        ann_k=args.ann_k,
        group_size=args.group_size,
        ann_nprobe=args.ann_nprobe,
        ann_bits=args.ann_bits,
        rerank=args.rerank,
        ann_search=args.ann_search,
        ann_uniform=args.ann_uniform,
        optimizer=args.optimizer,
        threads=args.threads,
        keep_freed_memory=not args.system_malloc,
        device=args.device,
    )
    records = bench_heads.run_heads(config, log=lambda line: print(line, flush=True))
    return _report(bench_heads.format_table(records), records, args.json)


def _report(table: str, records: list[dict], path: str | None) -> int:
    from megaclass.bench.machine import write_records

    print(table)
    if path:
        write_records(records, path)
        print(f"wrote {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from megaclass.process import tune_process
    from megaclass.train import load_config, train

    if args.resume:
        if args.config or args.overrides:
            raise ValueError(
                "--resume continues a run with its own config.toml; drop --config/--set"
            )
        run_dir = Path(args.resume)
        config = load_config(str(run_dir / "config.toml"))
    else:
        config = load_config(args.config, args.overrides)
        run_dir = Path(args.run_dir) if args.run_dir else _free_run_dir(Path("runs") / config.name)
        if (run_dir / "checkpoints").is_dir():
            raise ValueError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose "
                "another --run-dir"
            )
    tune_process(keep_freed=True, huge_pages=True)  # train() sets train.threads itself
    train(config, run_dir, resume=bool(args.resume))
    return 0


def _free_run_dir(base):
    """``runs/<name>``, or ``runs/<name>-2``, ``-3``, ... if it is taken."""
    candidate, number = base, 1
    while candidate.exists():
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


def _eval(args: argparse.Namespace) -> int:
    from megaclass.train import evaluate_run

    metrics = evaluate_run(args.run_dir)
    print(
        " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from megaclass.train.export import export_run

    print(f"wrote {export_run(args.run_dir, args.out)}")
    return 0
