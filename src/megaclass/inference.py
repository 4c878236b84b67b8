"""A trained model for prediction: its backbone and its class rows, loaded from an export
(``megaclass export``) or, through ``megaclass.load_run``, from a run folder's newest
checkpoint; on one process, or with the class rows sharded over a process group.

An export folder holds:
- ``manifest.json``: the ``ModelDescription`` (classes, embedding width, how scores are computed,
  the inputs the backbone takes, the backbone's factory and arguments) and the training step;
- ``backbone.safetensors``: the backbone's weights;
- ``class_weights.npy``: float32 [num_classes, dim], row i = class i; ``class_ids.npy``: int64
  [num_classes], 0..num_classes-1;
- for a cosine head, the search index over the class rows that ``megaclass serve`` uses (the
  manifest's ``index`` entry names it, ``INDEX_FILES``): ``index.faiss``, a ``FloatHNSW`` (the
  default), or ``index.safetensors``, a ``BinaryGraph``.
Nothing is unpickled: JSON, safetensors and plain ``.npy`` arrays only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megaclass.distributed import all_gather_ints, gather_rows, rank_and_size, shard_range
from megaclass.functional.margins import NormSoftmax, Softmax
from megaclass.heads import ClassifierHead
from megaclass.logs import ProgressLog
from megaclass.models import BackboneSpec
from megaclass.samplers import Full

FORMAT = 1
INDEX_FILES = {"hnsw": "index.faiss", "binary_graph": "index.safetensors"}  # search indexes
INDEX_KINDS = ("auto", *INDEX_FILES, "none")
INPUT_DTYPES = ("float32", "int64")
_log = logging.getLogger("megaclass.inference")


@dataclass(frozen=True)
class ModelDescription:
    """What rebuilds a trained model without its training configuration or data."""

    num_classes: int
    embedding_dim: int
    backbone: BackboneSpec
    normalize: bool  # embeddings and class rows L2-normalised before scoring (cosine margins)
    scale: float  # scores are cosine x scale when normalised, else dot products (scale 1)
    input_dtype: str  # "float32": feature rows [N, input_dim]; "int64": item histories [N, L]
    input_dim: int  # features per row, or the history length L

    def to_json(self) -> dict:
        return {"format": FORMAT, **asdict(self), "backbone": self.backbone.to_json()}

    @classmethod
    def from_json(cls, values: dict, source: str) -> ModelDescription:
        if values.get("format") != FORMAT:
            raise ValueError(
                f"{source}: format {values.get('format')!r}, this megaclass reads {FORMAT}"
            )
        try:
            fields = {k: values[k] for k in cls.__dataclass_fields__}
        except KeyError as missing:
            raise ValueError(f"{source}: no {missing} entry") from None
        fields["backbone"] = BackboneSpec.from_json(fields["backbone"])
        if fields["input_dtype"] not in INPUT_DTYPES:
            raise ValueError(f"{source}: input_dtype must be one of {INPUT_DTYPES}")
        return cls(**fields)


def read_description(path: Path) -> dict:
    """The JSON object in ``path`` (``model.json`` or ``manifest.json``)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


@dataclass(frozen=True)
class Predictions:
    """ids [N, k]: global class ids, best first; scores [N, k]: their scores (see
    ``ModelDescription.scale``)."""

    ids: torch.Tensor
    scores: torch.Tensor


class TrainedModel:
    """A backbone and a head with every class, for ``embed`` and ``predict``.

    With a process group the class rows are sharded over it: ``predict`` is then collective,
    every rank passing its own inputs (any number of rows, also none) and getting its own rows'
    predictions; ``embed`` is not, except for a backbone that ties its input item vectors to the
    class rows (``SASRec`` with ``tie_item_embeddings``), which looks them up across the ranks:
    sharded, such a model needs the same number of non-empty batches on every rank.
    """

    def __init__(
        self,
        description: ModelDescription,
        group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.description = description
        self.group = group
        margin = NormSoftmax(description.scale) if description.normalize else Softmax()
        self.head = ClassifierHead(
            description.num_classes,
            description.embedding_dim,
            margin=margin,
            sampler=Full(),
            process_group=group,
            initialize=False,  # both callers load the rows: load_export, load_run
            device=device,
        )
        self.head.eval()
        self.backbone = description.backbone.build(item_lookup=self.head.lookup).to(device)
        self.backbone.eval()

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @torch.no_grad()
    def embed(self, inputs, batch_size: int = 1024) -> torch.Tensor:
        """inputs [N, input_dim] (feature rows, or item histories for a sequence backbone; a
        tensor or an array, also memory-mapped) -> embeddings [N, D], a sequence backbone's
        output at the last position."""
        num_rows = self._checked_shape(inputs)
        parts = [
            self._embed_batch(self._batch(inputs, start, batch_size))
            for start in range(0, num_rows, batch_size)
        ]
        if not parts:
            return torch.zeros(0, self.description.embedding_dim, device=self.device)
        return torch.cat(parts)

    @torch.no_grad()
    def predict(
        self,
        inputs,
        k: int = 10,
        batch_size: int = 1024,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> Predictions:
        """The ``k`` best classes of each input, exactly (every class scored).

        inputs [N, input_dim] (as ``embed`` takes them) -> ``Predictions`` [N, k].
        ``on_batch(done, total)`` is called after each batch. Collective over the group when
        sharded (see the class): the ranks run the same number of batches.
        """
        if not 1 <= k <= self.description.num_classes:
            raise ValueError(f"k must be in [1, {self.description.num_classes}], got {k}")
        num_rows = self._checked_shape(inputs)
        num_batches = max(n for (n,) in all_gather_ints([-(-num_rows // batch_size)], self.group))
        ids, scores = [], []
        for number in range(num_batches):
            batch = self._batch(inputs, number * batch_size, batch_size)
            top_scores, top_ids = self.head.predict_topk(self._embed_batch(batch), k)
            ids.append(top_ids)
            scores.append(top_scores)
            if on_batch is not None:
                on_batch(number + 1, num_batches)
        if not ids:
            empty = torch.zeros(0, k, device=self.device)
            return Predictions(empty.long(), empty)
        return Predictions(torch.cat(ids), torch.cat(scores))

    def _embed_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """batch [n, input_dim] -> [n, D]; an empty batch gives [0, D] without the backbone."""
        if len(batch) == 0:
            return torch.zeros(0, self.description.embedding_dim, device=self.device)
        out = self.backbone(batch.to(self.device))
        return (out[:, -1] if out.dim() == 3 else out).float()

    def _checked_shape(self, inputs) -> int:
        """The number of input rows, after checking their shape and kind."""
        want = self.description
        shape, dtype = tuple(inputs.shape), str(inputs.dtype).removeprefix("torch.")
        if len(shape) != 2 or shape[1] != want.input_dim:
            raise ValueError(
                f"inputs must be [N, {want.input_dim}] ({want.input_dtype}), got {list(shape)}"
            )
        integer = dtype.startswith(("int", "uint"))
        if integer != (want.input_dtype == "int64"):
            raise ValueError(f"inputs must be {want.input_dtype}, got {dtype}")
        return shape[0]

    def _batch(self, inputs, start: int, size: int) -> torch.Tensor:
        """Rows [start, start + size) of inputs as a tensor (int64 item ids or float32
        features); NaN or inf in features is refused, naming the row."""
        rows = inputs[start : start + size]
        batch = rows if torch.is_tensor(rows) else torch.from_numpy(np.array(rows))
        if self.description.input_dtype == "int64":
            return batch.long()
        batch = batch.float()
        bad = ~torch.isfinite(batch).all(dim=1)
        if bool(bad.any()):
            raise ValueError(f"input row {start + int(bad.nonzero()[0, 0])} holds NaN or inf")
        return batch


def load_export(
    folder: str | Path,
    group: dist.ProcessGroup | None = None,
    device: torch.device | str | None = None,
) -> TrainedModel:
    """The model of an export folder (see the module); with ``group``, each rank holds its
    shard of the class rows, read from the memory-mapped ``class_weights.npy``."""
    folder = Path(folder)
    manifest = folder / "manifest.json"
    model = TrainedModel(
        ModelDescription.from_json(read_description(manifest), str(manifest)), group, device
    )
    weights = _open_npy(folder / "class_weights.npy")
    want = (model.description.num_classes, model.description.embedding_dim)
    if weights.shape != want or weights.dtype != np.float32:
        raise ValueError(
            f"{folder / 'class_weights.npy'}: expected float32 {list(want)}, got "
            f"{weights.dtype} {list(weights.shape)}"
        )
    start, stop = model.head.class_range
    model.head.weight.data.copy_(torch.from_numpy(np.array(weights[start:stop])))
    model.backbone.load_state_dict(_read_safetensors(folder / "backbone.safetensors"))
    return model


def write_export(
    folder: str | Path,
    description: ModelDescription,
    step: int,
    backbone_state: dict[str, torch.Tensor],
    class_rows: Callable[[np.ndarray], None],
) -> Path:
    """Write an export folder: ``class_rows(weights)`` fills the memory-mapped float32
    [num_classes, dim] array (shard by shard, so the rows are never all in memory)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shape = (description.num_classes, description.embedding_dim)
    weights = np.lib.format.open_memmap(
        folder / "class_weights.npy", mode="w+", dtype=np.float32, shape=shape
    )
    class_rows(weights)
    weights.flush()
    del weights
    np.save(folder / "class_ids.npy", np.arange(description.num_classes, dtype=np.int64))
    tensors = {name: value.detach().cpu().contiguous() for name, value in backbone_state.items()}
    save_file(tensors, str(folder / "backbone.safetensors"))
    manifest = {**description.to_json(), "step": step}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def write_search_index(folder: str | Path, kind: str) -> Path:
    """Build the search index ``kind`` (``INDEX_FILES``: a faiss float HNSW or a
    ``BinaryGraph``, default settings) over an export's class rows, save it beside them and name
    it in the manifest. Only for a cosine head: both rank by cosine, which is not the order of
    a dot-product head's scores."""
    from megaclass.index import BinaryGraph, FloatHNSW

    if kind not in INDEX_FILES:
        raise ValueError(f"the search index must be one of {tuple(INDEX_FILES)}, got {kind!r}")
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    manifest = read_description(manifest_path)
    if not manifest.get("normalize"):
        raise ValueError(
            f"{folder}: the head scores by dot product; a search index ranks by cosine "
            "(export with --index none)"
        )
    weights = np.load(folder / "class_weights.npy", mmap_mode="c")
    path = folder / INDEX_FILES[kind]
    _log.info("building the %s index over %d classes", kind, len(weights))
    if kind == "hnsw":
        FloatHNSW.build(weights).save(path)
    else:
        BinaryGraph().build(torch.from_numpy(weights)).save(path)
    manifest["index"] = {"kind": kind, "file": INDEX_FILES[kind]}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def predict_file(
    model: TrainedModel,
    input_path: str | Path,
    k: int,
    output: str | Path | None,
    batch_size: int = 1024,
    on_batch: Callable[[int, int], None] | None = None,
) -> Predictions | None:
    """Predict every row of the ``.npy`` file ``input_path`` (read memory-mapped, batch by
    batch); with a sharded model each rank predicts a contiguous share of the rows and rank 0
    gathers them. Progress: ``on_batch(done, total)``, or by default logged to
    ``megaclass.inference`` when it takes long (``megaclass.logs.ProgressLog``).

    Output: ``.npy``: a structured array with fields ``ids`` int64 [k] and ``scores`` float32
    [k] per row; ``.jsonl``: one ``{"ids": [...], "scores": [...]}`` per row; None: returned
    only. Returns the predictions of every row on rank 0, None on the other ranks.
    """
    if output is not None and Path(output).suffix not in (".npy", ".jsonl"):
        raise ValueError(f"the output must end in .npy or .jsonl, got {output}")
    inputs = _open_npy(Path(input_path))
    rank, world_size = rank_and_size(model.group)
    start, stop = shard_range(len(inputs), world_size, rank)
    local_batch = -(-batch_size // world_size)
    progress = ProgressLog(_log, "predict", -(-(stop - start) // local_batch), "batches")
    on_batch = on_batch or (lambda done, total: progress.update(done))
    found = model.predict(inputs[start:stop], k, local_batch, on_batch)
    progress.finish()
    if model.group is not None:
        sizes = [n for (n,) in all_gather_ints([stop - start], model.group)]
        found = Predictions(
            gather_rows(found.ids, sizes, model.group),
            gather_rows(found.scores, sizes, model.group),
        )
        if rank != 0:
            return None
    if output is not None:
        _write_predictions(found, Path(output))
    return found


def _write_predictions(found: Predictions, path: Path) -> None:
    ids, scores = found.ids.cpu().numpy(), found.scores.cpu().float().numpy()
    if path.suffix == ".npy":
        k = ids.shape[1]
        table = np.empty(len(ids), dtype=[("ids", np.int64, (k,)), ("scores", np.float32, (k,))])
        table["ids"], table["scores"] = ids, scores
        np.save(path, table)
        return
    with open(path, "w") as f:
        for row_ids, row_scores in zip(ids.tolist(), scores.tolist(), strict=True):
            f.write(json.dumps({"ids": row_ids, "scores": row_scores}) + "\n")


def _open_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except (ValueError, OSError) as error:
        raise ValueError(f"cannot read {path} as a .npy array: {error}") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from None
