"""What the server ranks classes with: a ``Searcher`` over the exported class rows.

- ``ExactSearch``: every class scored (``ClassifierHead.predict_topk``), chunk by chunk;
- ``HnswSearch``: the export's ``FloatHNSW`` (faiss), a beam of ``ef`` float rows;
- ``GraphSearch``: the export's ``BinaryGraph``, a beam of ``ef`` codes re-ranked by the exact
  cosine against the memory-mapped class rows.
The index searches are for heads that score by cosine. All answer with the head's scores:
cosine x scale for a cosine head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from megaclass.heads import ClassifierHead
from megaclass.index import BinaryGraph, FloatHNSW
from megaclass.inference import INDEX_FILES


class Searcher(Protocol):
    def search(self, embeddings: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """embeddings [N, D] -> (class ids [N, k], scores [N, k]), best first."""
        ...

    def describe(self) -> dict:
        """The search and its settings, for ``/v1/info``."""
        ...


class ExactSearch:
    def __init__(self, head: ClassifierHead) -> None:
        self.head = head

    def search(self, embeddings: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores, ids = self.head.predict_topk(embeddings, k)
        return ids, scores

    def describe(self) -> dict:
        return {"kind": "exact"}


class _IndexSearch:
    """An index's top-k; scores are its cosines x ``scale``. ``ef`` is raised to ``k`` for
    requests asking for more."""

    def __init__(self, index: FloatHNSW | BinaryGraph, scale: float, ef: int) -> None:
        if ef < 1:
            raise ValueError(f"ef must be >= 1, got {ef}")
        self.index, self.scale, self.ef = index, scale, ef

    def search(self, embeddings: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores, ids = self.index.search(embeddings, k, ef=max(self.ef, k))
        return ids, scores * self.scale


class HnswSearch(_IndexSearch):
    @classmethod
    def from_export(cls, folder: Path, scale: float, ef: int) -> HnswSearch:
        return cls(FloatHNSW.load(folder / INDEX_FILES["hnsw"]), scale, ef)

    def describe(self) -> dict:
        return {
            "kind": "hnsw",
            "ef": self.ef,
            "engine": "faiss",
            "links": self.index.links,
            "bytes_per_class": self.index.bytes_per_vector,
        }


class GraphSearch(_IndexSearch):
    @classmethod
    def from_export(cls, folder: Path, scale: float, ef: int) -> GraphSearch:
        """The index of an export folder, re-ranking with its memory-mapped class rows."""
        weights = np.load(folder / "class_weights.npy", mmap_mode="c")  # copy-on-write: writable
        path = folder / INDEX_FILES["binary_graph"]
        return cls(BinaryGraph.load(path, vectors=torch.from_numpy(weights)), scale, ef)

    def describe(self) -> dict:
        settings = self.index.settings
        return {
            "kind": "binary_graph",
            "ef": self.ef,
            "engine": self.index.backend,
            "num_bits": settings.num_bits,
            "degree": settings.degree,
            "bytes_per_class": self.index.bytes_per_vector,
        }


SEARCHERS = {"hnsw": HnswSearch, "binary_graph": GraphSearch}  # by the export's index kind
