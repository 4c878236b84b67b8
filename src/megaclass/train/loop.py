"""The training loop: hybrid parallel (DDP backbone, class-sharded head), metrics, checkpoints."""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from megaclass import samplers
from megaclass.data import FeatureFiles, SeqRec, SyntheticCatalog
from megaclass.distributed import shard_range
from megaclass.hardware import matmul_dtype
from megaclass.heads import ClassifierHead, HeadOutput
from megaclass.inference import ModelDescription
from megaclass.models import BackboneSpec
from megaclass.optim import RowAdaGrad, SparseSGD
from megaclass.optim.rows import RowSparseOptimizer
from megaclass.train.checkpoint import (
    HeadShard,
    TrainingState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from megaclass.train.config import RunConfig, load_config, to_toml
from megaclass.train.health import (
    HealthWatch,
    TrainingCollapsed,
    collapse_advice,
    embedding_spread,
)
from megaclass.train.progress import Progress
from megaclass.train.scalars import TensorBoardScalars, require_tensorboard
from megaclass.train.tasks import Classification, NextItem, Task, prediction_rows


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving over good checkpoints."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM: a checkpoint was written and the run stopped cleanly."""


@dataclass
class Model:
    """Everything a run trains, built from a config on this rank."""

    config: RunConfig
    dataset: SyntheticCatalog | FeatureFiles | SeqRec
    backbone: torch.nn.Module  # DDP-wrapped in a group of more than one rank
    head: ClassifierHead
    group: dist.ProcessGroup | None
    task: Task  # how the data is evaluated and reported
    description: ModelDescription  # what rebuilds the trained model (the run's model.json)

    @property
    def local_rows(self) -> slice:
        """This rank's rows of each global batch."""
        start, stop = shard_range(
            self.config.train.batch_size, self.head.world_size, self.head.rank
        )
        return slice(start, stop)


def init_distributed() -> dist.ProcessGroup | None:
    """The default group: the one already set up, or under torchrun a new one (gloo on CPU, NCCL
    on GPU); None in a single process."""
    if dist.is_initialized():
        return dist.group.WORLD
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        timeout = datetime.timedelta(seconds=float(os.environ.get("MEGACLASS_TIMEOUT_S", "120")))
        dist.init_process_group(backend, timeout=timeout)
        return dist.group.WORLD
    return None


def build_model(config: RunConfig, group: dist.ProcessGroup | None) -> Model:
    data = config.data
    task = Classification()
    if data.source == "synthetic":
        dataset = SyntheticCatalog(
            data.num_classes,
            data.input_dim,
            data.family_size,
            data.zipf,
            data.noise,
            data.eval_samples,
            data.seed,
        )
    elif data.source == "seqrec":
        dataset = SeqRec(data.path, data.max_len, seed=data.seed, num_classes=data.num_classes)
        task = NextItem()
    else:
        dataset = FeatureFiles(data.path, data.num_classes, data.seed)
    device = _device()
    # the loop checks the loss instead of the embeddings, naming the step
    head = build_head(config, dataset.num_classes, group, device, check_finite=False)
    torch.manual_seed(config.train.seed)  # the same backbone initialisation on every rank
    spec = backbone_spec(config, dataset)
    backbone = spec.build(item_lookup=head.lookup).to(device)
    if group is not None:
        backbone = DistributedDataParallel(backbone, process_group=group)
    sequences = data.source == "seqrec"
    description = ModelDescription(
        num_classes=dataset.num_classes,
        embedding_dim=config.model.embedding_dim,
        backbone=spec,
        normalize=head.margin.normalize,
        scale=head.margin.scale,
        input_dtype="int64" if sequences else "float32",
        input_dim=dataset.max_len if sequences else dataset.input_dim,
    )
    return Model(config, dataset, backbone, head, group, task, description)


def build_head(
    config: RunConfig,
    num_classes: int,
    group: dist.ProcessGroup | None,
    device: torch.device,
    sampler: samplers.Sampler | None = None,
    check_finite: bool = True,
) -> ClassifierHead:
    """The head as ``config.head`` describes it (``sampler``: another in place of its own)."""
    return ClassifierHead(
        num_classes,
        config.model.embedding_dim,
        margin=config.head.build_margin(),
        sampler=sampler or config.head.build_sampler(),
        process_group=group,
        chunk_size=config.head.chunk_size,
        matmul_dtype=matmul_dtype(config.head.matmul_dtype, device),
        seed=config.train.seed,
        check_finite=check_finite,
        device=device,
    )


def backbone_spec(config: RunConfig, dataset) -> BackboneSpec:
    """The backbone ``config.model`` names, for ``dataset``'s inputs, as a rebuildable
    description (written to the run folder's ``model.json``)."""
    model = config.model
    if model.backbone == "sasrec":
        if config.data.source != "seqrec":
            raise ValueError("model.backbone = 'sasrec' needs data.source = 'seqrec'")
        kwargs = {
            "num_items": dataset.num_classes,
            "embedding_dim": model.embedding_dim,
            "max_len": dataset.max_len,
            "num_layers": model.num_layers,
            "num_heads": model.num_heads,
            "dropout": model.dropout,
        }
        return BackboneSpec("sasrec", kwargs, model.tie_item_embeddings)
    if model.backbone == "mlp" and config.data.source == "seqrec":
        raise ValueError("data.source = 'seqrec' needs model.backbone = 'sasrec' or a factory")
    kwargs = {"input_dim": dataset.input_dim, "embedding_dim": model.embedding_dim}
    if model.backbone == "mlp":
        kwargs.update(hidden_dim=model.hidden_dim, num_layers=model.num_layers)
    return BackboneSpec(model.backbone, kwargs)


def train(config: RunConfig, run_dir: str | Path, resume: bool = False) -> dict:
    """Train (or continue) a run in ``run_dir``; returns the summary written to summary.json."""
    if config.train.tensorboard:
        require_tensorboard()  # on every rank, before anything is built
    group = init_distributed()
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    trainer = Trainer(config, Path(run_dir), build_model(config, group))
    with contextlib.closing(trainer):
        start = trainer.restore() if resume else trainer.create_run_folder()
        if start >= config.train.steps:
            return trainer.already_finished(start)
        with _stop_on_signals() as stop_requested:
            steps = trainer.run(start, stop_requested)
        return trainer.finish(steps)


@dataclass
class Window:
    """The training steps since the last log record."""

    began: float = field(default_factory=time.perf_counter)
    loss: float = 0.0  # summed over the steps
    steps: int = 0
    samples: int = 0


class Trainer:
    """One run on this rank: the model, its optimizers and schedule, the log, the best score
    so far and the checkpoints. ``train`` calls ``restore`` or ``create_run_folder``, then
    ``run``, then ``finish``, and ``close`` in the end, also when the run stops with an error."""

    def __init__(self, config: RunConfig, run_dir: Path, model: Model):
        self.config, self.run_dir, self.model = config, run_dir, model
        self.rank0 = model.head.rank == 0
        self.backbone_optimizer = build_backbone_optimizer(config, model.backbone)
        self.head_optimizer = build_head_optimizer(config, model.head)
        model.head.drawn_rows = self.head_optimizer.DRAWN_ROWS
        self.health = HealthWatch(config.optim.warmup_steps, model.head.embedding_dim)
        self.tensorboard = (
            TensorBoardScalars(run_dir / "tensorboard")
            if config.train.tensorboard and self.rank0
            else None
        )
        self.best: dict = {}  # the best validation score so far: step, metrics (and test then)
        self.evaluations_since_best = 0
        self.last_metrics: dict = {}
        self.samples, self.graph_s, self.began = 0, 0.0, 0.0

    def restore(self) -> int:
        """Load the newest checkpoint; the step to continue from."""
        model = self.model
        state, shard = load_checkpoint(latest_checkpoint(self.run_dir), model.head)
        _unwrap(model.backbone).load_state_dict(state.backbone)
        self.backbone_optimizer.load_state_dict(state.backbone_optimizer)
        _restore_head(model.head, self.head_optimizer, state, shard)
        self.best = state.loop.get("best", {})
        self.evaluations_since_best = state.loop.get("evaluations_since_best", 0)
        if self.rank0:  # a resumed run may change RESUMABLE_KEYS, train.steps to extend it
            (self.run_dir / "config.toml").write_text(to_toml(self.config))
            self.write_model_json()  # runs from before model.json existed get one
        return state.step

    def already_finished(self, step: int) -> dict:
        """A resumed run whose checkpoint is at or past ``train.steps``: says so; its summary."""
        if self.rank0:
            print(
                f"{self.run_dir} has finished: its newest checkpoint is step {step} and "
                f"train.steps is {self.config.train.steps}; to train it further: megaclass train "
                f"--resume {self.run_dir} --set train.steps=N (N > {step})",
                file=sys.stderr,
            )
        summary = self.run_dir / "summary.json"
        return json.loads(summary.read_text()) if summary.exists() else {"steps": step}

    def create_run_folder(self) -> int:
        """A new run: its folder with config.toml and an empty metrics.jsonl (rank 0); step 0."""
        if self.rank0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.toml").write_text(to_toml(self.config))
            (self.run_dir / "metrics.jsonl").write_text("")
            self.write_model_json()
        return 0

    def write_model_json(self) -> None:
        """``model.json``: what ``megaclass.load_run`` rebuilds the model from."""
        text = json.dumps(self.model.description.to_json(), indent=2) + "\n"
        (self.run_dir / "model.json").write_text(text)

    def run(self, start: int, stop_requested) -> int:
        """Train from step ``start``; the steps done when it ends (fewer than ``train.steps``
        when early stopping ends it)."""
        train, model = self.config.train, self.model
        steps = train.steps
        self.progress = Progress(steps, start, train.log_every, enabled=self.rank0)
        self.progress.line(
            f"megaclass train: {model.dataset.num_classes:,} classes, {steps} steps of "
            f"{train.batch_size}, {model.head.world_size} rank(s), run folder {self.run_dir}"
            + (f", resuming at step {start}" if start else "")
        )
        self.began, window = time.perf_counter(), Window()
        self.graph_s += _refresh_sampler(model.head, start, self.progress)
        for step in range(start, steps):
            loss, out, embeddings = self.train_step(step)
            done = step + 1
            if done < steps:  # not after the last step: nothing would use what it rebuilds
                self.graph_s += _refresh_sampler(model.head, done, self.progress)
            window.loss, window.steps = window.loss + loss, window.steps + 1
            window.samples += out.num_samples
            self.samples += out.num_samples
            evaluation_due = train.eval_every and done % train.eval_every == 0
            if done % train.log_every == 0 or done == steps or evaluation_due:
                self.log(done, window, out, embeddings)
                window = Window()
            self.progress.update(done, loss=loss)
            if done % self.config.checkpoint.every == 0 and done < steps:
                self.checkpoint(done)
            if _any_rank(stop_requested(), model.group):
                path = self.checkpoint(done)
                raise Interrupted(f"interrupted after step {done}; checkpoint {path}")
            if train.patience and self.evaluations_since_best >= train.patience:
                self.progress.line(
                    f"step {done}: no better validation score in {self.evaluations_since_best} "
                    f"evaluations since step {self.best['step']}: stopping early"
                )
                return done
        return steps

    def train_step(self, step: int) -> tuple[float, HeadOutput, torch.Tensor]:
        """One optimizer step of backbone and head at the scheduled learning rate: the loss,
        the head's output and this rank's embeddings."""
        opt, model = self.config.optim, self.model
        lr_scale = _lr_scale(step, self.config.train.steps, opt.warmup_steps)
        for optimizer, base in (
            (self.backbone_optimizer, opt.lr),
            (self.head_optimizer, opt.head_lr or opt.lr),
        ):
            for group in optimizer.param_groups:
                group["lr"] = base * lr_scale
        inputs, labels = model.dataset.train_batch(
            step, self.config.train.batch_size, model.local_rows
        )
        device = model.head.weight.device
        embeddings, labels = prediction_rows(model.backbone(inputs.to(device)), labels.to(device))
        out = model.head(embeddings, labels)
        loss = out.loss.item()
        if not math.isfinite(loss):
            kept = [p.name for p in (self.run_dir / "checkpoints").glob("step-*[0-9]")]
            raise NonFiniteLoss(
                f"loss is {loss} at step {step}; stopped without saving. Last good "
                f"checkpoint: {max(kept) if kept else 'none'}"
            )
        self.backbone_optimizer.zero_grad(set_to_none=True)
        self.head_optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.backbone_optimizer.step()
        self.head_optimizer.step()
        return loss, out, embeddings

    def log(self, done: int, window: Window, out: HeadOutput, embeddings: torch.Tensor) -> None:
        """A metrics.jsonl record for the window ending at step ``done``: loss, rate, embedding
        spread, the evaluation when due; stops a run that collapsed or diverged."""
        config, model = self.config, self.model
        metrics = {
            "step": done,
            "loss": window.loss / window.steps,
            "lr": config.optim.lr
            * _lr_scale(done - 1, config.train.steps, config.optim.warmup_steps),
            "samples_per_s": window.samples / (time.perf_counter() - window.began),
            "active_classes": out.num_active,
            **embedding_spread(embeddings, model.group),
        }
        problem = self.health.check(done, metrics["loss"], metrics)
        every = config.train.eval_every
        if every and done % every == 0 and done < config.train.steps:
            self.head_optimizer.catch_up()
            metrics.update(model.task.evaluate(model))
            if not self.best or model.task.score(metrics) > model.task.score(self.best):
                self.best = _best_metrics(model, done, metrics)
                self.evaluations_since_best = 0
            else:
                self.evaluations_since_best += 1
        if self.rank0:
            self.write_record(metrics)
        self.last_metrics = metrics
        if problem and config.train.stop_on_collapse:
            raise TrainingCollapsed(collapse_advice(done, problem, self.run_dir))

    def write_record(self, record: dict) -> None:
        """Append a metrics record to metrics.jsonl and, with ``train.tensorboard``, to the
        TensorBoard scalars (rank 0)."""
        _append_jsonl(self.run_dir / "metrics.jsonl", record)
        if self.tensorboard:
            self.tensorboard.add(record)

    def close(self) -> None:
        """Close the TensorBoard event file, so that it holds every record written."""
        if self.tensorboard:
            self.tensorboard.close()

    def checkpoint(self, step: int) -> Path:
        model = self.model
        state = TrainingState(
            step,
            _unwrap(model.backbone).state_dict(),
            self.backbone_optimizer.state_dict(),
            _head_shared(model.head, self.head_optimizer),
            {"best": self.best, "evaluations_since_best": self.evaluations_since_best},
        )
        shard = _head_shard(model.head, self.head_optimizer)
        return save_checkpoint(self.run_dir, state, model.head, shard, self.config.checkpoint.keep)

    def finish(self, steps: int) -> dict:
        """The final checkpoint and evaluation; writes and returns the summary."""
        model, task = self.model, self.model.task
        total = time.perf_counter() - self.began
        self.head_optimizer.catch_up()
        path = self.checkpoint(steps)
        metrics = task.evaluate_all(model)
        best = self.best
        if not best or task.score(metrics) > task.score(best):
            best = {"step": steps, **task.epochs(model, steps), **metrics}
        summary = {
            **metrics,
            "best": best,
            "steps": steps,
            **task.epochs(model, steps),
            "total_time_s": total,
            "mean_samples_per_s": self.samples / total if total > 0 else 0.0,
            "graph_build_s": self.graph_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "world_size": model.head.world_size,
            "num_classes": model.dataset.num_classes,
            "checkpoint": str(path),
        }
        if self.rank0:
            if self.last_metrics.get("step") == steps:
                self.write_record({"step": steps, **metrics})
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.progress.line(
            f"{task.headline(metrics)}; {summary['mean_samples_per_s']:.0f} samples/s"
        )
        if best["step"] != steps:
            self.progress.line(f"best validation at step {best['step']}: {task.headline(best)}")
        return summary


def _best_metrics(model: Model, step: int, metrics: dict) -> dict:
    """A new best validation score: its metrics, with the other splits' metrics of that model."""
    others = {
        k: v
        for split in model.task.splits[1:]
        for k, v in model.task.evaluate(model, split).items()
    }
    return {"step": step, **model.task.epochs(model, step), **metrics, **others}


def _refresh_sampler(head: ClassifierHead, step: int, progress: Progress) -> float:
    """``head.refresh_sampler()`` before ``step``, with a line before and after a rebuild; the
    seconds a rebuild took (0 without one)."""
    what = head.sampler.rebuild_due()
    if what is None:
        head.refresh_sampler()
        return 0.0
    progress.line(f"step {step}: building the {what}")
    began = time.perf_counter()
    head.refresh_sampler()
    seconds = time.perf_counter() - began
    progress.line(f"step {step}: {what.split(' (')[0]} built in {seconds:.1f} s")
    return seconds


def load_trained(run_dir: str | Path, overrides: list[str] = ()) -> tuple[Model, int]:
    """A run's model as its config (with ``overrides``) builds it, with the newest checkpoint's
    weights (on this process, or sharded over the torchrun group), and that checkpoint's step."""
    run_dir = Path(run_dir)
    model = build_model(load_config(str(run_dir / "config.toml"), overrides), init_distributed())
    state, _ = load_checkpoint(latest_checkpoint(run_dir), model.head)
    _unwrap(model.backbone).load_state_dict(state.backbone)
    return model, state.step


def evaluate_run(run_dir: str | Path) -> dict:
    """Load a run's config and newest checkpoint, evaluate, write eval.json (rank 0)."""
    run_dir = Path(run_dir)
    model, step = load_trained(run_dir)
    metrics = {"step": step, **model.task.evaluate_all(model)}
    if model.head.rank == 0:
        (run_dir / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def build_backbone_optimizer(config: RunConfig, backbone: torch.nn.Module):
    """SGD with momentum, or AdamW (``optim.backbone_optimizer``; attention backbones)."""
    opt = config.optim
    if opt.backbone_optimizer == "adamw":
        return torch.optim.AdamW(backbone.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.SGD(
        backbone.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
    )


def build_head_optimizer(config: RunConfig, head: ClassifierHead) -> RowSparseOptimizer:
    """Row-sparse: with a sampler it touches only the active rows (see ``megaclass.optim``)."""
    opt = config.optim
    if opt.head_optimizer == "rowadagrad":
        return RowAdaGrad(head, lr=opt.head_lr or opt.lr, weight_decay=opt.weight_decay)
    return SparseSGD(
        head,
        lr=opt.head_lr or opt.lr,
        momentum=opt.momentum,
        weight_decay=opt.weight_decay,
        row_norm=opt.head_row_norm if head.margin.normalize else 0.0,
    )


def _head_shard(head: ClassifierHead, optimizer: RowSparseOptimizer) -> HeadShard:
    """This rank's per-class state for a checkpoint: the optimizer's and the sampler's rows,
    and the sampler's own rank state (its generator)."""
    state = optimizer.state.get(head.weight, {})
    rows = {f"optim.{name}": state[name] for name in optimizer.ROW_STATE if name in state}
    sampler = head.sampler.state_dict()
    rows.update({f"sampler.{name}": value for name, value in sampler["class_rows"].items()})
    return HeadShard(rows, {f"sampler.{name}": v for name, v in sampler["rank"].items()})


def _head_shared(head: ClassifierHead, optimizer: RowSparseOptimizer) -> dict:
    """The head's state that is the same on every rank: the optimizer's (SparseSGD's step count
    and learning-rate history) and the sampler's."""
    state = optimizer.state.get(head.weight, {})
    return {
        "optimizer": {name: v for name, v in state.items() if name not in optimizer.ROW_STATE},
        "sampler": head.sampler.state_dict()["shared"],
    }


def _restore_head(head, optimizer, state: TrainingState, shard: HeadShard) -> None:
    for name, value in state.head["optimizer"].items():
        optimizer.state[head.weight][name] = value
    for name, rows in shard.rows.items():
        if name.startswith("optim."):
            optimizer.state[head.weight][name.removeprefix("optim.")] = rows
    head.sampler.load_state_dict(
        {
            "class_rows": _unprefixed(shard.rows, "sampler."),
            "shared": state.head["sampler"],
            "rank": _unprefixed(shard.rank_state, "sampler."),
        }
    )


def _unprefixed(values: dict, prefix: str) -> dict:
    return {k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)}


def _lr_scale(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * progress))


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _unwrap(backbone: torch.nn.Module) -> torch.nn.Module:
    return backbone.module if isinstance(backbone, DistributedDataParallel) else backbone


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _any_rank(flag: bool, group) -> bool:
    """True on every rank if ``flag`` is true on any (one all_reduce MAX of a scalar)."""
    if group is None:
        return flag
    value = torch.tensor([float(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item())


@contextlib.contextmanager
def _stop_on_signals():
    """Within the block, SIGINT/SIGTERM only set a flag, checked after each step."""
    received: list[int] = []
    handlers = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handlers[sig] = signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield lambda: bool(received)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
