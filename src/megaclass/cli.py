"""The ``megaclass`` command line: the only place that reads argv."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from megaclass.train import Interrupted, NonFiniteLoss, TrainingCollapsed

    try:
        with _library_messages_on_stderr():
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


class _ShortFormatter(logging.Formatter):
    """INFO: the message alone; WARNING and above: ``megaclass: warning: message``."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"megaclass: {record.levelname.lower()}: {message}"
        return message


@contextlib.contextmanager
def _library_messages_on_stderr():
    """Within the block, the library's messages (logger "megaclass", INFO and above: progress
    of long builds, what the data holds, warnings) go to stderr, on rank 0 only under torchrun.
    Only the "megaclass" logger is changed (never the root logger), and only meanwhile."""
    logger = logging.getLogger("megaclass")
    rank0 = os.environ.get("RANK", "0") == "0"
    handler = logging.StreamHandler(sys.stderr) if rank0 else logging.NullHandler()
    handler.setFormatter(_ShortFormatter())
    level = logger.level
    logger.addHandler(handler)
    if rank0:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


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
    ("--graph-build", ("head.knn.build",), str, ("auto", "exact", "ivf", "binary_graph")),
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
    from megaclass import __version__

    parser = argparse.ArgumentParser(
        prog="megaclass", description="Train classifiers with millions of classes."
    )
    parser.add_argument("--version", action="version", version=f"megaclass {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train (the built-in default on the synthetic catalogue without arguments)",
        description="Train a model. Under torchrun the same command runs hybrid parallel.",
    )
    _add_config_arguments(train, "TOML file (every key: docs/config.md)")
    train.add_argument("--run-dir", default=None, help="run folder (default runs/<name>)")
    train.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue this run from its newest checkpoint with its own config.toml; --set may "
        "change only the keys that can change mid-run, e.g. train.steps to extend it",
    )
    train.set_defaults(run=_train)
    evaluate = commands.add_parser(
        "eval",
        help="held-out metrics of a run's newest checkpoint",
        description="Evaluate a run's newest checkpoint on its held-out data (every class "
        "scored); prints the metrics and writes RUN_DIR/eval.json.",
    )
    evaluate.add_argument("run_dir", help="the run folder")
    evaluate.set_defaults(run=_eval)
    export = commands.add_parser(
        "export",
        help="write a run's model as an export folder",
        description="Write a run's newest checkpoint as an export folder: manifest.json, "
        "backbone.safetensors, class_weights.npy, class_ids.npy and, with --index, the graph "
        "index megaclass serve searches (docs/training.md, docs/serving.md).",
    )
    export.add_argument("run_dir", help="the run folder")
    export.add_argument("out", help="the export folder to write")
    export.add_argument(
        "--index",
        choices=("auto", "hnsw", "binary_graph", "none"),
        default="auto",
        help="the search index to build for megaclass serve: hnsw (faiss), binary_graph, none "
        "(exact search), or auto (default: hnsw for a cosine head when faiss is installed, "
        "else none; docs/serving.md)",
    )
    export.set_defaults(run=_export)
    predict = commands.add_parser(
        "predict",
        help="top-k classes of every row of a .npy file",
        description="Predict the k best classes of every input row with a trained run or export "
        "(every class scored). Under torchrun the class rows are sharded over the ranks.",
    )
    predict.add_argument("model", metavar="RUN_DIR", help="a run folder or an export folder")
    predict.add_argument(
        "--input",
        required=True,
        metavar="FILE.npy",
        help="inputs as the backbone takes them: float32 [N, F] features, or int64 [N, L] item "
        "histories for a sequence backbone",
    )
    predict.add_argument("--k", type=int, default=10, help="classes per input (default 10)")
    predict.add_argument(
        "--output",
        default=None,
        metavar="OUT",
        help="OUT.npy (structured array, fields ids and scores) or OUT.jsonl (one "
        '{"ids": [...], "scores": [...]} per line); default: JSON lines on stdout',
    )
    predict.add_argument("--batch-size", type=int, default=1024, help="rows per batch")
    predict.set_defaults(run=_predict)
    serve = commands.add_parser(
        "serve",
        help="serve an export over HTTP",
        description="Serve an export folder (megaclass export) over HTTP: POST /v1/predict, "
        "POST /v1/search, GET /v1/info, GET /healthz (wire format: docs/serving.md; OpenAPI at "
        '/openapi.json). Needs pip install "megaclass[serve]".',
    )
    serve.add_argument("export", metavar="EXPORT_DIR", help="a folder written by megaclass export")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument(
        "--max-batch", type=int, default=256, help="rows of concurrent requests run together"
    )
    serve.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="how long a batch waits for more requests (default 0: a batch is what queued while "
        "the previous one ran, which measured lower latency; docs/serving.md)",
    )
    serve.add_argument(
        "--search",
        choices=("auto", "exact", "hnsw", "binary_graph"),
        default="auto",
        help="how classes are ranked: the export's index (hnsw or binary_graph), every class "
        "scored, or auto (the export's index when it has one)",
    )
    serve.add_argument(
        "--ef",
        type=int,
        default=256,
        help="index search: the beam (default 256: recall@10 0.95 with the HNSW on 10^6 trained "
        "class rows; docs/serving.md)",
    )
    serve.add_argument(
        "--timeout-s", type=float, default=10.0, help="a request's deadline (then 503)"
    )
    serve.set_defaults(run=_serve)
    config = commands.add_parser(
        "config",
        help="print the resolved configuration as TOML",
        description="Print the configuration that --config and --set resolve to, as TOML with "
        "each key's meaning; megaclass train --config reads it back.",
    )
    _add_config_arguments(config, "TOML file (every key: docs/config.md)")
    config.set_defaults(run=_config)
    plot = commands.add_parser(
        "plot",
        help="draw runs' metrics against steps into an image",
        description="Draw the training loss, the held-out metrics, samples/s and active classes "
        "of runs against steps, one panel each, the runs overlaid (needs matplotlib: "
        'pip install "megaclass[plot]").',
    )
    plot.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run folders with a metrics.jsonl"
    )
    plot.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="FILE.png",
        help="the image to write; its suffix picks the format (.png, .svg, .pdf)",
    )
    plot.set_defaults(run=_plot)
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
        help="build time and recall@k of the class KNN graph builds (exact, IVF, binary graph)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    graph.add_argument(
        "--num-classes", type=int, default=100_000, help="classes (random unit vectors)"
    )
    graph.add_argument("--dim", type=int, default=128, help="width of the class vectors")
    graph.add_argument("--k", type=int, default=32, help="neighbours per class")
    graph.add_argument("--nprobe", default="1,2,4,8", help="comma-separated IVF nprobe values")
    graph.add_argument(
        "--no-exact", action="store_true", help="skip timing the exact build (C^2 D work)"
    )
    graph.add_argument("--queries", type=int, default=2000, help="classes whose recall is measured")
    graph.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"], help="build products")
    graph.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
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
    if args.num_classes is not None and args.num_classes < 1:
        raise ValueError(f"--num-classes: num_classes must be >= 1, got {args.num_classes}")
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
    import gc
    from pathlib import Path

    import torch.distributed

    from megaclass.process import tune_process
    from megaclass.train import init_distributed, load_config, resumed_config, train

    if args.resume:
        if args.config:
            raise ValueError("--resume continues a run with its own config.toml; drop --config")
        run_dir = Path(args.resume)
        config = resumed_config(run_dir, args.overrides)
    else:
        config = load_config(args.config, args.overrides)
        run_dir = Path(args.run_dir) if args.run_dir else _free_run_dir(Path("runs") / config.name)
        if (run_dir / "checkpoints").is_dir():
            raise ValueError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose "
                "another --run-dir"
            )
    tune_process(keep_freed=True, huge_pages=True)  # train() sets train.threads itself
    group = init_distributed()  # under torchrun: made here, so closed here
    train(config, run_dir, resume=bool(args.resume))
    if group is not None:  # before the interpreter's teardown, which gloo's threads can abort
        gc.collect()  # the run's objects (cycles) that hold the group go first
        torch.distributed.destroy_process_group()
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

    print(f"wrote {export_run(args.run_dir, args.out, args.index)}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from megaclass.train.plot import plot_runs

    print(f"wrote {plot_runs(args.run_dirs, args.output)}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import json

    import torch.distributed

    from megaclass.inference import predict_file
    from megaclass.train import init_distributed, load_run

    group = init_distributed()
    try:
        model = load_run(args.model, group)
        found = predict_file(model, args.input, args.k, args.output, args.batch_size)
        if group is not None:
            torch.distributed.barrier(group)  # no rank leaves while rank 0 writes
    finally:
        if group is not None:
            torch.distributed.destroy_process_group()
    if found is None:  # not rank 0
        return 0
    if args.output:
        print(f"wrote {args.output}: {len(found.ids):,} rows, top {args.k}", file=sys.stderr)
    else:
        for ids, scores in zip(found.ids.tolist(), found.scores.tolist(), strict=True):
            print(json.dumps({"ids": ids, "scores": scores}))
    return 0


def _config(args: argparse.Namespace) -> int:
    from megaclass.train import load_config
    from megaclass.train.reference import explained_toml

    print(explained_toml(load_config(args.config, args.overrides)), end="")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from megaclass.serve.server import serve

    serve(
        args.export,
        args.host,
        args.port,
        max_rows=args.max_batch,
        max_wait_s=args.max_wait_ms / 1e3,
        search=args.search,
        ef=args.ef,
        timeout_s=args.timeout_s,
    )
    return 0
