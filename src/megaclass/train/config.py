"""Run configuration: nested dataclasses, loaded from TOML with dotted ``key=value`` overrides.

Every section validates itself in ``__post_init__``; mistakes raise ``ValueError`` saying what
was wrong and what is allowed. ``to_toml`` writes the resolved configuration back out.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

MARGINS = ("softmax", "normsoftmax", "cosface", "arcface", "combined")
MATMUL_DTYPES = ("fp32", "bf16")
SAMPLERS = ("full", "random", "knn", "ann")
HEAD_OPTIMIZERS = ("sgd", "rowadagrad")


@dataclass
class DataConfig:
    """Where samples come from: the built-in synthetic catalogue or feature files."""

    source: str = "synthetic"  # "synthetic", "features" or "seqrec"
    path: str = ""  # features: folder with train_x.npy, ...; seqrec: the sequence file
    num_classes: int = 1_000_000  # synthetic: classes; features: 0 = taken from the labels
    input_dim: int = 64  # synthetic: width of the generated inputs
    family_size: int = 8  # synthetic: classes per family of near-identical products
    zipf: float = 1.0  # synthetic: Zipf exponent of class frequencies (0 = uniform)
    noise: float = 0.35  # synthetic: input noise relative to the class signal
    eval_samples: int = 10_000  # held-out samples evaluated
    max_len: int = 50  # seqrec: history length (older items dropped, shorter ones padded)
    seed: int = 0

    def __post_init__(self) -> None:
        _choice("data.source", self.source, ("synthetic", "features", "seqrec"))
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.path is required with data.source = {self.source!r}")
        _at_least("data.max_len", self.max_len, 1)
        _at_least("data.num_classes", self.num_classes, 1 if self.source == "synthetic" else 0)
        _at_least("data.input_dim", self.input_dim, 1)
        _at_least("data.family_size", self.family_size, 1)
        _at_least("data.zipf", self.zipf, 0.0)
        _at_least("data.noise", self.noise, 0.0)
        _at_least("data.eval_samples", self.eval_samples, 1)


@dataclass
class ModelConfig:
    """The backbone: ``mlp``, ``sasrec`` (item histories) or a user factory
    ``package.module:function``."""

    backbone: str = "mlp"
    embedding_dim: int = 128
    hidden_dim: int = 512  # mlp
    num_layers: int = 2  # mlp, sasrec
    num_heads: int = 2  # sasrec: attention heads
    dropout: float = 0.2  # sasrec
    tie_item_embeddings: bool = False  # sasrec: the input item vectors are the head's weights

    def __post_init__(self) -> None:
        if self.backbone not in ("mlp", "sasrec") and ":" not in self.backbone:
            raise ValueError(
                "model.backbone must be 'mlp', 'sasrec' or 'package.module:factory', got "
                f"{self.backbone!r}"
            )
        if self.tie_item_embeddings and self.backbone != "sasrec":
            raise ValueError("model.tie_item_embeddings needs model.backbone = 'sasrec'")
        _at_least("model.num_heads", self.num_heads, 1)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        _at_least("model.embedding_dim", self.embedding_dim, 1)
        _at_least("model.hidden_dim", self.hidden_dim, 1)
        _at_least("model.num_layers", self.num_layers, 1)


@dataclass
class HeadConfig:
    """The classifier head: margin, sampler and how its softmax is computed."""

    margin: str = "cosface"
    scale: float = 32.0
    margin_value: float = 0.2  # cosface/arcface margin; combined uses m1, m2, m3
    m1: float = 1.0
    m2: float = 0.3
    m3: float = 0.2
    sampler: str = "knn"  # "knn", "ann", "random" (Partial FC), "full", or "package.module:Class"
    budget: float = 0.05  # random, knn: active classes, a fraction (<= 1) or a count (knn only)
    knn_k: int = 32  # knn: neighbours per class in the graph
    refresh_every: int = 150  # knn, ann: steps between graph (index) rebuilds
    graph_build: str = "auto"  # knn: "exact", "ivf" or "auto" (exact up to 2^17 classes)
    nprobe: int = 4  # knn with an IVF graph: lists each class searches
    knn_random_share: float = 0.25  # knn: share of the budget always drawn uniformly
    knn_frequent_share: float = 0.0  # knn: share of the budget for the most frequent labels
    knn_walk_k: int = 0  # knn with a frequent share: classes per sample found by a graph walk
    knn_fill: str = "frequency"  # knn: draw the rest by label "frequency" or "uniform"
    logit_correction: bool = True  # random, knn: drawn classes' logits + log(1 / draw rate)
    ann_k: int = 64  # ann: classes retrieved per sample (all shards)
    ann_group_size: int = 64  # ann: samples scored together over their candidates
    ann_nprobe: int = 8  # ann: coarse lists searched per sample
    ann_bits: int = 128  # ann: code length (multiple of 64)
    ann_rotation: str = "random"  # ann: "random" or "itq"
    ann_rerank: int = 0  # ann: candidates re-ranked by exact cosine (0: none)
    ann_backend: str = "auto"  # ann: Hamming scan, "torch", "faiss" or "auto" (faiss on CPU)
    ann_uniform: float = 0.0  # ann: share of the classes drawn uniformly per step for every group
    ann_search: str = "ivf"  # ann: "ivf" (the binary index) or "exact" (every class scored)
    chunk_size: int = 8192
    matmul_dtype: str = "bf16"

    def __post_init__(self) -> None:
        _choice("head.margin", self.margin, MARGINS)
        if ":" not in self.sampler:  # else a Sampler subclass, made with no arguments
            _choice("head.sampler", self.sampler, SAMPLERS)
        if self.sampler == "random" and not 0 < self.budget <= 1:
            raise ValueError(f"head.budget must be in (0, 1] for sampler random, got {self.budget}")
        if not self.budget > 0:
            raise ValueError(f"head.budget must be > 0, got {self.budget}")
        _at_least("head.knn_k", self.knn_k, 1)
        _at_least("head.refresh_every", self.refresh_every, 1)
        _choice("head.graph_build", self.graph_build, ("auto", "exact", "ivf"))
        _at_least("head.nprobe", self.nprobe, 1)
        if not 0 <= self.knn_random_share <= 1:
            raise ValueError(
                f"head.knn_random_share must be in [0, 1], got {self.knn_random_share}"
            )
        if not 0 <= self.knn_frequent_share <= 1 - self.knn_random_share:
            raise ValueError(
                "head.knn_frequent_share must be in [0, 1 - head.knn_random_share], got "
                f"{self.knn_frequent_share} with knn_random_share {self.knn_random_share}"
            )
        _at_least("head.knn_walk_k", self.knn_walk_k, 0)
        if self.knn_walk_k > 0 and self.knn_frequent_share == 0:
            raise ValueError(
                "head.knn_walk_k needs head.knn_frequent_share > 0 (the walks start from the "
                "most frequent classes)"
            )
        _choice("head.knn_fill", self.knn_fill, ("uniform", "frequency"))
        if self.sampler == "knn" and self.knn_fill == "frequency" and not self.logit_correction:
            raise ValueError(
                "head.knn_fill = 'frequency' needs head.logit_correction = true (for knn "
                "without the correction set head.knn_fill = 'uniform')"
            )
        for name in ("ann_k", "ann_group_size", "ann_nprobe"):
            _at_least(f"head.{name}", getattr(self, name), 1)
        if self.ann_bits < 64 or self.ann_bits % 64:
            raise ValueError(
                f"head.ann_bits must be a positive multiple of 64, got {self.ann_bits}"
            )
        _choice("head.ann_rotation", self.ann_rotation, ("random", "itq"))
        _at_least("head.ann_rerank", self.ann_rerank, 0)
        _choice("head.ann_backend", self.ann_backend, ("auto", "torch", "faiss"))
        _choice("head.ann_search", self.ann_search, ("ivf", "exact"))
        if not 0 <= self.ann_uniform <= 1:
            raise ValueError(f"head.ann_uniform must be in [0, 1], got {self.ann_uniform}")
        _choice("head.matmul_dtype", self.matmul_dtype, MATMUL_DTYPES)
        _at_least("head.chunk_size", self.chunk_size, 1)


@dataclass
class OptimConfig:
    """SGD with momentum for the backbone; for the head, row-sparse SGD with momentum or row-wise
    AdaGrad (4 bytes of state per class instead of a copy of the weights). Linear warm-up, then
    cosine decay."""

    lr: float = 0.2
    head_lr: float = 0.0  # 0: same as lr
    backbone_optimizer: str = "sgd"  # "sgd" (with momentum) or "adamw"
    head_optimizer: str = "sgd"  # "sgd" (SparseSGD with momentum) or "rowadagrad"
    head_row_norm: float = 0.3  # sgd with a cosine margin: rows kept at this norm (0: off)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 20

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        _at_least("optim.head_lr", self.head_lr, 0.0)
        _choice("optim.backbone_optimizer", self.backbone_optimizer, ("sgd", "adamw"))
        _choice("optim.head_optimizer", self.head_optimizer, HEAD_OPTIMIZERS)
        _at_least("optim.head_row_norm", self.head_row_norm, 0.0)
        if not 0 <= self.momentum < 1:
            raise ValueError(f"optim.momentum must be in [0, 1), got {self.momentum}")
        _at_least("optim.weight_decay", self.weight_decay, 0.0)
        _at_least("optim.warmup_steps", self.warmup_steps, 0)


@dataclass
class TrainConfig:
    """Length of the run, batch, logging and evaluation."""

    steps: int = 300
    batch_size: int = 1024  # global: split over the ranks
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    patience: int = 0  # evaluations without a better validation score before stopping (0: never)
    threads: int = 0  # torch threads per rank; 0 = torch's default
    stop_on_collapse: bool = True  # stop when the loss diverges or the embeddings collapse
    seed: int = 0

    def __post_init__(self) -> None:
        _at_least("train.steps", self.steps, 1)
        _at_least("train.batch_size", self.batch_size, 1)
        _at_least("train.log_every", self.log_every, 1)
        _at_least("train.eval_every", self.eval_every, 0)
        _at_least("train.patience", self.patience, 0)
        if self.patience and not self.eval_every:
            raise ValueError("train.patience needs train.eval_every > 0")
        _at_least("train.threads", self.threads, 0)


@dataclass
class CheckpointConfig:
    every: int = 100  # steps between checkpoints (and one at the end)
    keep: int = 2  # newest checkpoints kept

    def __post_init__(self) -> None:
        _at_least("checkpoint.every", self.every, 1)
        _at_least("checkpoint.keep", self.keep, 1)


@dataclass
class RunConfig:
    name: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a non-empty folder name, got {self.name!r}")


def load_config(path: str | None = None, overrides: list[str] = ()) -> RunConfig:
    """The defaults, updated by the TOML file at ``path``, then by ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except OSError as error:
            raise ValueError(f"cannot read config {path}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"config {path} is not valid TOML: {error}") from None
    for override in overrides:
        key, value = _parse_override(override)
        section = values
        *parents, leaf = key.split(".")
        for part in parents:
            section = section.setdefault(part, {})
            if not isinstance(section, dict):
                raise ValueError(f"--set {override}: {part} is not a section")
        section[leaf] = value
    return from_dict(RunConfig, values)


def from_dict(cls, values: dict[str, Any], prefix: str = ""):
    """Build dataclass ``cls`` from nested dicts, rejecting unknown keys and wrong types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown config key {prefix}{unknown[0]}; allowed in "
            f"{'[' + prefix.rstrip('.') + ']' if prefix else 'the top level'}: "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default_factory() if _is_section(fields[name]) else None
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ValueError(f"{prefix}{name} must be a section [{prefix}{name}]")
            kwargs[name] = from_dict(type(default), value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", value, fields[name].type)
    return cls(**kwargs)


def to_toml(config: RunConfig) -> str:
    """The configuration as TOML that ``load_config`` reads back to an equal config."""
    top, sections = [], []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            lines = [
                f"{g.name} = {_toml_value(getattr(value, g.name))}"
                for g in dataclasses.fields(value)
            ]
            sections.append(f"[{f.name}]\n" + "\n".join(lines) + "\n")
        else:
            top.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(top) + "\n\n" + "\n".join(sections)


def _is_section(f: dataclasses.Field) -> bool:
    return f.default_factory is not dataclasses.MISSING


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ValueError(f"--set expects key=value, got {text!r}")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string: --set data.source=features
    return key, value


def _coerce(name: str, value: Any, annotation: str) -> Any:
    expected = {"int": int, "float": float, "str": str, "bool": bool}[annotation]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(f"{name} must be {annotation}, got {value!r}")
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _at_least(name: str, value: float, low: float) -> None:
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
