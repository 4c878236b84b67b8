"""Run configuration: nested dataclasses, loaded from TOML with dotted ``key=value`` overrides.

Every section validates itself in ``__post_init__``; mistakes raise ``ValueError`` saying what
was wrong and what is allowed. ``to_toml`` writes the resolved configuration back out.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from megaclass.functional import margins
from megaclass.heads.classifier import DEFAULT_CHUNK_SIZE
from megaclass.optim import sparse_sgd
from megaclass.plugins import load_object
from megaclass.samplers import ANN, KNN, Full, Random, Sampler

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

MARGINS = ("softmax", "normsoftmax", "cosface", "arcface", "combined")
MATMUL_DTYPES = ("auto", "fp32", "bf16")
SAMPLERS = ("full", "random", "knn", "ann")
HEAD_OPTIMIZERS = ("sgd", "rowadagrad")

# keys of earlier versions: where each went
MOVED_KEYS = {
    "head.budget": "head.knn.budget (knn) or head.random.rate (random)",
    "head.logit_correction": "head.knn.logit_correction or head.random.logit_correction",
    "head.refresh_every": "head.knn.refresh_every or head.ann.refresh_every",
    "head.knn_k": "head.knn.k",
    "head.graph_build": "head.knn.build",
    "head.nprobe": "head.knn.nprobe",
    "head.knn_random_share": "head.knn.random_share",
    "head.knn_frequent_share": "head.knn.frequent_share",
    "head.knn_walk_k": "head.knn.walk_k",
    "head.knn_fill": "head.knn.fill",
    "head.ann_k": "head.ann.k",
    "head.ann_group_size": "head.ann.group_size",
    "head.ann_nprobe": "head.ann.nprobe",
    "head.ann_bits": "head.ann.num_bits",
    "head.ann_rotation": "head.ann.rotation",
    "head.ann_rerank": "head.ann.rerank",
    "head.ann_backend": "head.ann.backend",
    "head.ann_uniform": "head.ann.uniform",
    "head.ann_search": "head.ann.search",
}


@dataclass
class DataConfig:
    """Where samples come from: the built-in synthetic catalogue or feature files."""

    source: str = "synthetic"  # "synthetic", "features" or "seqrec"
    path: str = ""  # features: folder with train_x.npy, ...; seqrec: the sequence file
    num_classes: int = 0  # 0: synthetic 1,000,000; features max label + 1; seqrec its item count
    input_dim: int = 64  # synthetic: width of the generated inputs
    family_size: int = 8  # synthetic: classes per family of near-identical products
    zipf: float = 1.0  # synthetic: Zipf exponent of class frequencies (0 = uniform)
    noise: float = 0.35  # synthetic: input noise relative to the class signal
    eval_samples: int = 10_000  # held-out samples evaluated
    max_len: int = 50  # seqrec: history length (older items dropped, shorter ones padded)
    seed: int = 0  # data generation and order

    def __post_init__(self) -> None:
        _choice("data.source", self.source, ("synthetic", "features", "seqrec"))
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.path is required with data.source = {self.source!r}")
        _at_least("data.max_len", self.max_len, 1)
        _at_least("data.num_classes", self.num_classes, 0)
        _at_least("data.input_dim", self.input_dim, 1)
        _at_least("data.family_size", self.family_size, 1)
        _at_least("data.zipf", self.zipf, 0.0)
        _at_least("data.noise", self.noise, 0.0)
        _at_least("data.eval_samples", self.eval_samples, 1)


@dataclass
class ModelConfig:
    """The backbone: ``mlp``, ``sasrec`` (item histories) or a user factory
    ``package.module:function``."""

    backbone: str = "mlp"  # "mlp", "sasrec" or "package.module:factory"
    embedding_dim: int = 128  # width of the embedding the head scores
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
    """The classifier head: margin, sampler and how its softmax is computed.

    Each built-in sampler's settings are a section of their own whose keys are the sampler's
    constructor arguments (``[head.random]``, ``[head.knn]``, ``[head.ann]``: the dataclasses
    ``Random``, ``KNN`` and ``ANN`` themselves, with their defaults and their validation); only
    the section of the sampler named by ``sampler`` is used.
    """

    margin: str = "cosface"  # "softmax", "normsoftmax", "cosface", "arcface" or "combined"
    scale: float = 32.0  # logit scale of the normalised margins
    margin_value: float = 0.2  # cosface/arcface margin; combined uses m1, m2, m3
    m1: float = 1.0  # combined: cos(m1 * theta + m2) - m3
    m2: float = 0.3  # combined
    m3: float = 0.2  # combined
    sampler: str = "knn"  # "knn", "ann", "random" (Partial FC), "full", or "package.module:Class"
    chunk_size: int = DEFAULT_CHUNK_SIZE  # classes per chunk of logits
    matmul_dtype: str = "auto"  # products: "bf16", "fp32", "auto" (bf16 where native; lse fp32)
    random: Random = field(default_factory=Random)
    knn: KNN = field(default_factory=KNN)
    ann: ANN = field(default_factory=ANN)

    def __post_init__(self) -> None:
        _choice("head.margin", self.margin, MARGINS)
        if ":" not in self.sampler:  # else a Sampler subclass, made with no arguments
            _choice("head.sampler", self.sampler, SAMPLERS)
        _choice("head.matmul_dtype", self.matmul_dtype, MATMUL_DTYPES)
        _at_least("head.chunk_size", self.chunk_size, 1)

    def build_margin(self) -> margins.Margin:
        return {
            "softmax": lambda: margins.Softmax(),
            "normsoftmax": lambda: margins.NormSoftmax(self.scale),
            "cosface": lambda: margins.CosFace(self.scale, self.margin_value),
            "arcface": lambda: margins.ArcFace(self.scale, self.margin_value),
            "combined": lambda: margins.CombinedMargin(self.scale, self.m1, self.m2, self.m3),
        }[self.margin]()

    def build_sampler(self) -> Sampler:
        """A new sampler as configured (a ``"package.module:Class"`` is made with no
        arguments); each head needs its own."""
        if ":" in self.sampler:
            sampler = load_object(self.sampler, "sampler")()
            if not isinstance(sampler, Sampler):
                raise ValueError(
                    f"head.sampler {self.sampler!r} made a {type(sampler).__name__}, not a "
                    "megaclass.samplers.Sampler"
                )
            return sampler
        if self.sampler == "full":
            return Full()
        return dataclasses.replace(getattr(self, self.sampler))


@dataclass
class OptimConfig:
    """SGD with momentum for the backbone; for the head, row-sparse SGD with momentum or row-wise
    AdaGrad (4 bytes of state per class instead of a copy of the weights). Linear warm-up, then
    cosine decay."""

    lr: float = 0.2  # peak learning rate (backbone; the head too unless head_lr)
    head_lr: float = 0.0  # 0: same as lr
    backbone_optimizer: str = "sgd"  # "sgd" (with momentum) or "adamw"
    head_optimizer: str = "sgd"  # "sgd" (SparseSGD with momentum) or "rowadagrad"
    head_row_norm: float = sparse_sgd.ROW_NORM  # sgd, cosine margin: the rows' norm (0: off)
    momentum: float = sparse_sgd.MOMENTUM  # SGD momentum (backbone and head)
    weight_decay: float = sparse_sgd.WEIGHT_DECAY  # L2 (backbone and head)
    warmup_steps: int = 20  # linear warm-up, then cosine decay to 0

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

    steps: int = 300  # training steps
    batch_size: int = 1024  # global: split over the ranks
    log_every: int = 10  # steps between metrics.jsonl records
    tensorboard: bool = False  # also write the metrics as TensorBoard scalars to <run>/tensorboard
    eval_every: int = 0  # 0: only at the end
    patience: int = 0  # evaluations without a better validation score before stopping (0: never)
    threads: int = 0  # torch threads per rank; 0 = torch's default
    stop_on_collapse: bool = True  # stop when the loss diverges or the embeddings collapse
    seed: int = 0  # model initialisation and sampling

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
    """When checkpoints are written and how many are kept (``<run>/checkpoints/``)."""

    every: int = 100  # steps between checkpoints (and one at the end)
    keep: int = 2  # newest checkpoints kept

    def __post_init__(self) -> None:
        _at_least("checkpoint.every", self.every, 1)
        _at_least("checkpoint.keep", self.keep, 1)


@dataclass
class RunConfig:
    """A whole run: its name and one section per part."""

    name: str = "default"  # run name: the run folder is runs/<name>
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
    """The defaults, updated by the TOML file at ``path``, then by ``key=value`` overrides.

    A relative ``data.path`` is taken relative to the folder of the TOML file that names it, or
    to the current folder when an override names it, and is kept absolute: a run's saved
    config.toml names the same data wherever it is read from. Whether it exists is checked when
    the data is loaded (a config may be written on another machine).
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except OSError as error:
            raise ValueError(f"cannot read config {path}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"config {path} is not valid TOML: {error}") from None
        _absolute_data_path(values, os.path.dirname(os.path.abspath(path)))
    for override in overrides:
        key, value = _parse_override(override)
        section = values
        *parents, leaf = key.split(".")
        for part in parents:
            section = section.setdefault(part, {})
            if not isinstance(section, dict):
                raise ValueError(f"--set {override}: {part} is not a section")
        section[leaf] = value
        if key == "data.path":
            _absolute_data_path(values, os.getcwd())
    return from_dict(RunConfig, values)


def _absolute_data_path(values: dict[str, Any], folder: str) -> None:
    """Make a relative ``data.path`` of ``values`` absolute, relative to ``folder``."""
    data = values.get("data")
    path = data.get("path") if isinstance(data, dict) else None
    if isinstance(path, str) and path:
        data["path"] = os.path.abspath(os.path.join(folder, os.path.expanduser(path)))


# keys that a resumed run may change (megaclass train --resume RUN_DIR --set ...): its length
# and bookkeeping, nothing that changes what the checkpoint's state means
RESUMABLE_KEYS = (
    "train.steps",
    "train.log_every",
    "train.eval_every",
    "train.patience",
    "train.threads",
    "train.stop_on_collapse",
    "train.tensorboard",
    "checkpoint.every",
    "checkpoint.keep",
)


def resumed_config(run_dir, overrides: list[str] = ()) -> RunConfig:
    """A run's own ``config.toml`` with ``overrides`` of ``RESUMABLE_KEYS`` only."""
    path = f"{run_dir}/config.toml"
    saved = load_config(path)
    config = load_config(path, overrides)
    before, after = _flat(saved), _flat(config)
    refused = [key for key in after if after[key] != before[key] and key not in RESUMABLE_KEYS]
    if refused:
        raise ValueError(
            f"a resumed run cannot change {', '.join(refused)} (its checkpoint was trained "
            f"with them); it may change {', '.join(RESUMABLE_KEYS)}. Start a new run with "
            f"--config {path} to change the others"
        )
    return config


def _flat(section, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every key of ``section`` and its subsections."""
    values = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if _is_section(f):
            values.update(_flat(value, f"{prefix}{f.name}."))
        else:
            values[f"{prefix}{f.name}"] = value
    return values


def from_dict(cls, values: dict[str, Any], prefix: str = ""):
    """Build dataclass ``cls`` from nested dicts, rejecting unknown keys and wrong types; a
    section's own validation errors are prefixed with its name."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        key = f"{prefix}{unknown[0]}"
        if key in MOVED_KEYS:
            raise ValueError(f"config key {key} is now {MOVED_KEYS[key]}")
        raise ValueError(
            f"unknown config key {key}; allowed in "
            f"{'[' + prefix.rstrip('.') + ']' if prefix else 'the top level'}: "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in values.items():
        if _is_section(fields[name]):
            if not isinstance(value, dict):
                raise ValueError(f"{prefix}{name} must be a section [{prefix}{name}]")
            section = type(fields[name].default_factory())
            kwargs[name] = from_dict(section, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", value, fields[name].type)
    try:
        return cls(**kwargs)
    except ValueError as error:
        if prefix and not str(error).startswith(prefix):
            raise ValueError(f"[{prefix.rstrip('.')}] {error}") from None
        raise


def to_toml(config: RunConfig, comment=None) -> str:
    """The configuration as TOML that ``load_config`` reads back to an equal config;
    ``comment(section_class, key)``, if given, returns the comment written after a key."""
    return "\n".join(_toml_sections(config, "", comment))


def _toml_sections(section, name: str, comment) -> list[str]:
    """``section``'s keys as a TOML table named ``name`` (the top level when empty), followed
    by its subsections' tables."""
    keys, tables = [], []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if _is_section(f):
            tables += _toml_sections(value, f"{name}.{f.name}" if name else f.name, comment)
        else:
            note = comment(type(section), f.name) if comment else None
            keys.append(f"{f.name} = {_toml_value(value)}{f'  # {note}' if note else ''}\n")
    header = f"[{name}]\n" if name else ""
    return [header + "".join(keys), *tables]


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
