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


# megaclass bench heads: flag, the config keys it sets, type, choices
_BENCH_SHORTCUTS = (
    ("--num-classes", ("data.num_classes",), int, None),
    ("--dim", ("model.embedding_dim",), int, None),
    ("--batch", ("train.batch_size",), int, None),
    ("--dtype", ("head.matmul_dtype",), str, ("auto", "fp32", "bf16")),
    ("--margin", ("head.margin",), str, ("softmax", "cosface", "arcface")),
    ("--chunk-size", ("head.chunk_size",), int, None),
    ("--budget", ("head.knn.budget", "head.random.rate"), float, None),  # random: if <= 1
    ("--knn-k", ("head.knn.k",), int, None),
    ("--refresh-every", ("head.knn.refresh_every", "head.ann.refresh_every"), int, None),
    ("--graph-build", ("head.knn.build",), str, ("auto", "exact", "ivf")),
    ("--nprobe", ("head.knn.nprobe",), int, None),
    ("--ann-k", ("head.ann.k",), int, None),
    ("--group-size", ("head.ann.group_size",), int, None),
    ("--ann-nprobe", ("head.ann.nprobe",), int, None),
    ("--ann-bits", ("head.ann.num_bits",), int, None),
    ("--rerank", ("head.ann.rerank",), int, None),
    ("--ann-search", ("head.ann.search",), str, ("ivf", "exact")),
    ("--ann-uniform", ("head.ann.uniform",), float, None),
    ("--optimizer", ("optim.head_optimizer",), str, ("sgd", "rowadagrad")),
)


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _toml_literal(value) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


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
    _add_config_arguments(train, "TOML file (every key: docs/config.md)")
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
    _add_config_arguments(heads, "TOML run config whose head is timed")
    heads.add_argument(
        "--heads", default="naive,full", help="comma-separated: naive, full, random, knn, ann"
    )
    heads.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    heads.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    shortcuts = heads.add_argument_group(
        "shortcuts", "each sets a config key (default: the config's value)"
    )
    for flag, keys, kind, choices in _BENCH_SHORTCUTS:
        shortcuts.add_argument(
            flag, type=kind, choices=choices, default=None, help=" and ".join(keys)
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


def _add_config_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    parser.add_argument("--config", default=None, help=config_help)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.steps=100 (repeatable; applied last)",
    )


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
    from megaclass.train import load_config

    tune_process(keep_freed=False, huge_pages=True)  # each head keeps freed memory or not

    heads = tuple(h.strip() for h in args.heads.split(",") if h.strip())
    if args.budget is not None and args.budget > 1 and "random" in heads:
        raise ValueError(f"--budget {args.budget:g} is a count; random takes a rate <= 1")
    shortcuts = [
        f"{key}={_toml_literal(value)}"
        for flag, keys, _, _ in _BENCH_SHORTCUTS
        if (value := getattr(args, _dest(flag))) is not None
        for key in keys
        if not (key == "head.random.rate" and value > 1)  # a count: knn's budget only
    ]
    config = bench_heads.HeadBenchConfig(
        run=load_config(args.config, shortcuts + args.overrides),
        heads=heads,
        steps=args.steps,
        warmup=args.warmup,
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
