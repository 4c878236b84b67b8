"""``FloatHNSW``: faiss's HNSW over the unit class rows, ranked by inner product (= cosine).

The engine ``megaclass serve`` uses by default: at recall@10 >= 0.95 on this project's machine
it answered more queries per second than ``BinaryGraph`` and every other engine measured
(``benchmarks/results/index.md``), at about 4x ``BinaryGraph``'s memory per vector (it holds
the float rows in RAM). Saved in faiss's own file format (no pickle); a file that is not a faiss
HNSW over inner products is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from megaclass.logs import ProgressLog

_log = logging.getLogger("megaclass.index")
_ADD_ROWS = 1 << 16  # rows normalised and added at once (memory-mapped rows are read in steps)


class FloatHNSW:
    """``build(vectors)``, ``search(queries, k, ef)``, ``save(path)`` / ``FloatHNSW.load(path)``.
    links: HNSW's M (2 M links per vector on the bottom level); ef_construction: its build beam.
    """

    def __init__(self, index) -> None:
        self.index = index

    @classmethod
    def build(
        cls, vectors: torch.Tensor | np.ndarray, links: int = 16, ef_construction: int = 100
    ) -> FloatHNSW:
        """Index vectors [N, D] (any float array; may be memory-mapped)."""
        import faiss

        if vectors.ndim != 2 or len(vectors) < 1:
            raise ValueError(f"vectors must be [rows >= 1, dim], got {tuple(vectors.shape)}")
        index = faiss.IndexHNSWFlat(vectors.shape[1], links, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        progress = ProgressLog(_log, "HNSW build", len(vectors), unit="vectors")
        for start in range(0, len(vectors), _ADD_ROWS):
            rows = torch.as_tensor(np.asarray(vectors[start : start + _ADD_ROWS]))
            index.add(np.ascontiguousarray(F.normalize(rows.float(), dim=1).numpy()))
            progress.update(start + len(rows))
        progress.finish()
        return cls(index)

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def dim(self) -> int:
        return self.index.d

    @property
    def links(self) -> int:
        """HNSW's M: the bottom level holds 2 M links per vector, the levels above M."""
        return self.index.hnsw.nb_neighbors(1)

    @property
    def bytes_per_vector(self) -> float:
        """RAM per vector: the float row and the bottom level's 2 M links (int32)."""
        return 4 * self.index.d + 4 * 2 * self.links

    def search(
        self, queries: torch.Tensor, k: int, ef: int = 64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries [Q, D] -> (cosines [Q, k] fp32, ids [Q, k] int64), best first; -inf and -1
        where fewer were found. ef: the beam, raised to k."""
        if queries.dim() != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [Q, {self.dim}], got {tuple(queries.shape)}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.index.hnsw.efSearch = max(ef, k)
        unit = np.ascontiguousarray(F.normalize(queries.float(), dim=1).cpu().numpy())
        scores, ids = self.index.search(unit, k)
        ids = torch.from_numpy(ids)
        return torch.from_numpy(scores).masked_fill_(ids < 0, float("-inf")), ids

    def save(self, path: str | Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path) -> FloatHNSW:
        import faiss

        try:
            index = faiss.read_index(str(path))
        except RuntimeError as error:
            reason = str(error).strip().rsplit(": ", 1)[-1]  # after faiss's source location
            raise ValueError(f"{path} is not a readable faiss index: {reason}") from None
        if not isinstance(index, faiss.IndexHNSWFlat) or (
            index.metric_type != faiss.METRIC_INNER_PRODUCT
        ):
            raise ValueError(f"{path} holds a {type(index).__name__}, not an inner-product HNSW")
        return cls(index)
