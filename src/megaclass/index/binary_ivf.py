"""``BinaryIVF``: binary codes of the class weights in an inverted file, searched by Hamming
distance.

Each class is stored twice, compactly:
- its **list**: the nearest centroid (by cosine) of a coarse quantizer, spherical k-means on the
  normalised weights, about sqrt(C) lists;
- its **code**: the signs of a rotation of its normalised weight (``megaclass.index.binary_codes``:
  random orthogonal or ITQ), ``num_bits`` bits packed into int64 words.

``search(queries, k, nprobe)`` ranks the classes of the ``nprobe`` lists nearest to each query by
the Hamming distance between codes (XOR, then a bit-parallel popcount: plain int64 tensor ops, on
CPU and GPU alike), optionally re-ranks the best ``rerank`` of them by their exact cosine, and
returns, per query, ``k`` classes with a score that estimates their cosine: ``cos(pi h / bits)``
for Hamming distance ``h`` (the angle estimate of sign random projections), or the exact cosine
after a re-rank. ``update(rows)`` re-encodes and re-assigns rows whose weights changed, so the index
stays fresh between full rebuilds (``build``, which also retrains the quantizer and rotation).

The index holds the rows of one weight matrix: in a sharded head each rank indexes its own shard.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from megaclass.index.binary_codes import (
    WORD_BITS,
    angle_scores,
    check_code_settings,
    encode,
    exact_rerank,
    fit_rotation,
    popcount_,
)
from megaclass.index.faiss_engines import FaissHammingLists, faiss_available
from megaclass.index.ivf_graph import nearest_lists, spherical_kmeans
from megaclass.logs import ProgressLog

BACKENDS = ("auto", "torch", "faiss")
_TRAIN_POINTS_PER_LIST = 64  # k-means sample per list
_ITQ_SAMPLE = 50_000
_PAIRS_PER_BLOCK = 1 << 17  # (query, row) pairs scored at once: a few MB, cache-resident
_BUILD_ROWS = 1 << 16  # rows encoded and assigned at once by build
_log = logging.getLogger("megaclass.index")
_NO_KEY = torch.iinfo(torch.int64).max


class BinaryIVF:
    """An inverted file of binary codes over the rows of ``weight`` (see the module docstring).

    num_bits: code length, a multiple of 64.
    num_lists: coarse lists; 0 = round(sqrt(rows)).
    rotation: ``"random"`` (orthogonal, in blocks of dim) or ``"itq"`` (each block learned).
    backend: the Hamming scan: ``"torch"`` (tensor ops, any device), ``"faiss"`` (CPU, faiss's
        IndexBinaryIVF over the same codes and lists: faster, ``docs/benchmarks.md``) or ``"auto"``
        (faiss for CPU weights when it is installed). ``self.backend`` says which is used.
    """

    def __init__(
        self,
        num_bits: int = 128,
        num_lists: int = 0,
        rotation: str = "random",
        seed: int = 0,
        matmul_dtype: torch.dtype = torch.float32,
        backend: str = "auto",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "faiss" and not faiss_available():
            raise ValueError("backend 'faiss' needs faiss (pip install faiss-cpu)")
        check_code_settings(num_bits, rotation)
        if num_lists < 0:
            raise ValueError(f"num_lists must be >= 0 (0: sqrt of the rows), got {num_lists}")
        self.num_bits = num_bits
        self.num_lists = num_lists
        self.rotation_kind = rotation
        self.seed = seed
        self.matmul_dtype = matmul_dtype
        self.requested_backend = backend
        self.backend = "torch" if backend == "auto" else backend  # decided at build
        self._faiss: FaissHammingLists | None = None
        self.weight: torch.Tensor | None = None  # [C, D], the indexed rows (not a copy)
        self.rotation: torch.Tensor | None = None  # [D, num_bits]
        self.centroids: torch.Tensor | None = None  # [L, D] unit
        self.codes: torch.Tensor | None = None  # [C, num_bits / 64] int64
        self.lists: torch.Tensor | None = None  # [C] int64, each row's list
        self._members: tuple[torch.Tensor, ...] | None = None  # see _lists_members

    @torch.no_grad()
    def build(self, weight: torch.Tensor, train: bool = True) -> BinaryIVF:
        """Index every row of ``weight`` [C, D] (kept by reference: ``update`` re-reads it).

        train: fit a new coarse quantizer and rotation; False keeps those of the last build.
        Logs its progress to ``megaclass.index`` (see ``megaclass.logs``) when it takes long.
        """
        if weight.dim() != 2 or len(weight) == 0:
            raise ValueError(f"weight must be [rows >= 1, dim], got {tuple(weight.shape)}")
        self.weight = weight.detach()
        if train or self.centroids is None:
            generator = torch.Generator().manual_seed(self.seed)
            sample = self._training_sample(generator)
            self.centroids = self._coarse_quantizer(sample, generator)
            self.rotation = self._fit_rotation(sample, generator)
        elif self.rotation.shape[0] != weight.shape[1]:
            raise ValueError(
                f"weight has dim {weight.shape[1]}, the trained index {self.rotation.shape[0]}"
            )
        self.codes, self.lists = self._encode_and_assign(self.weight)
        self._members = None
        if self.requested_backend == "auto":
            on_cpu = self.weight.device.type == "cpu"
            self.backend = "faiss" if on_cpu and faiss_available() else "torch"
        self._faiss = None
        if self.backend == "faiss":
            self._faiss = FaissHammingLists(
                self.codes, self.lists, len(self.centroids), self.num_bits
            )
        return self

    @torch.no_grad()
    def update(self, rows: torch.Tensor) -> None:
        """Re-encode and re-assign ``rows`` [n] of the indexed weight after they changed."""
        self._check_built()
        rows = rows.to(self.codes.device)
        vectors = self.weight.index_select(0, rows)
        codes, lists = self.encode(vectors), self.assign(vectors, 1)[:, 0]
        self.codes[rows], self.lists[rows] = codes, lists
        self._members = None
        if self._faiss is not None:
            self._faiss.replace(rows, codes, lists)

    @torch.no_grad()
    def encode(self, vectors: torch.Tensor) -> torch.Tensor:
        """Packed sign codes: vectors [n, D] -> int64 [n, num_bits / 64]."""
        self._check_trained()
        return encode(vectors, self.rotation)

    @torch.no_grad()
    def assign(self, vectors: torch.Tensor, nprobe: int) -> torch.Tensor:
        """The ``nprobe`` nearest lists of each vector, nearest first: [n, D] -> [n, nprobe]."""
        self._check_trained()
        nprobe = min(nprobe, len(self.centroids))
        unit = F.normalize(vectors.float(), dim=1)
        return nearest_lists(unit, self.centroids, nprobe, self.matmul_dtype)

    @torch.no_grad()
    def search(
        self,
        queries: torch.Tensor,
        k: int,
        nprobe: int = 1,
        rerank: int = 0,
        probes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best rows for each query among the rows of its ``nprobe`` nearest lists.

        queries [Q, D] -> (scores [Q, k] fp32, rows [Q, k] int64), best first; -inf and -1 where
        fewer than k rows were probed. Rows are ranked by Hamming distance (ties: lower row
        first with the torch backend, any order with faiss); with ``rerank`` > 0 the best
        max(rerank, k) of them are re-ranked by exact cosine.
        probes [Q, nprobe]: the lists to search, if already known (``assign(queries, nprobe)``).
        """
        self._check_built()
        if k < 1 or nprobe < 1 or rerank < 0:
            raise ValueError(f"need k >= 1, nprobe >= 1, rerank >= 0; got {k}, {nprobe}, {rerank}")
        if probes is None:
            probes = self.assign(queries, nprobe)  # [Q, p]
        query_codes = self.encode(queries)  # [Q, W]
        shortlist = max(k, rerank)
        scores = torch.full((len(queries), k), float("-inf"), device=queries.device)
        rows = torch.full((len(queries), k), -1, dtype=torch.int64, device=queries.device)
        for block in self._query_blocks(probes):
            if self._faiss is None:
                distances, found = self._hamming_topk(probes[block], query_codes[block], shortlist)
            else:
                distances, found = self._faiss.search(
                    query_codes[block], probes[block], shortlist, self.num_bits
                )
            if rerank:
                block_scores, found = exact_rerank(self.weight, queries[block], found, k)
            else:
                distances, found = distances[:, :k], found[:, :k]
                block_scores = angle_scores(distances, self.num_bits)
                block_scores[found < 0] = float("-inf")
            scores[block, : found.shape[1]] = block_scores
            rows[block, : found.shape[1]] = found
        return scores, rows

    def _hamming_topk(self, probes, query_codes, count):
        """Per query, the ``count`` rows of its probed lists nearest in Hamming distance.

        probes [q, p], query_codes [q, W] -> (distances [q, c] int64, rows [q, c], -1 padded)
        with c = min(count, most rows probed by one query of the block).
        """
        order, offsets, sorted_codes = self._lists_members()
        sizes = (offsets[1:] - offsets[:-1])[probes].flatten()  # [q * p]
        per_query = sizes.view(probes.shape).sum(1)  # [q]
        # Every (query, probed row) pair, flat: the row's position in list order, so that each
        # probed list is read as one contiguous run of codes.
        run_first_pair = torch.cumsum(sizes, 0) - sizes
        pair_position = torch.arange(int(sizes.sum()), device=probes.device) + (
            offsets[:-1][probes].flatten() - run_first_pair
        ).repeat_interleave(sizes)
        pair_query = torch.arange(len(probes), device=probes.device).repeat_interleave(per_query)
        words = sorted_codes.index_select(0, pair_position)  # [T, W]
        words ^= query_codes.repeat_interleave(per_query, dim=0)
        distances = popcount_(words).sum(1)  # [T]
        pair_rows = order.index_select(0, pair_position)
        # Pad to [q, most probed]; the key (distance, row) breaks ties by row.
        first_pair = torch.cumsum(per_query, 0) - per_query  # [q]
        width = max(int(per_query.max()), 1)
        keys = torch.full((len(probes), width), _NO_KEY, device=probes.device)
        position = torch.arange(len(pair_rows), device=probes.device) - first_pair[pair_query]
        keys[pair_query, position] = distances * len(order) + pair_rows
        best = keys.topk(min(count, width), dim=1, largest=False).values  # sorted, ascending
        missing = best == _NO_KEY
        found = torch.where(missing, -1, best % len(order))
        return torch.where(missing, self.num_bits, best // len(order)), found

    def _query_blocks(self, probes: torch.Tensor):
        """Slices of queries whose (query, row) pairs stay within ``_PAIRS_PER_BLOCK`` (one
        slice for faiss, which bounds its own memory)."""
        if self._faiss is not None:
            yield slice(None)
            return
        _, offsets, _ = self._lists_members()
        probed = (offsets[1:] - offsets[:-1])[probes].sum(1)  # [Q]
        per_block = max(1, _PAIRS_PER_BLOCK // max(1, int(probed.max()) if len(probed) else 1))
        for start in range(0, len(probes), per_block):
            yield slice(start, start + per_block)

    def _encode_and_assign(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes [C, num_bits / 64] and nearest lists [C] of every row, a block of rows at a
        time."""
        codes = torch.empty(
            len(weight), self.num_bits // WORD_BITS, dtype=torch.int64, device=weight.device
        )
        lists = torch.empty(len(weight), dtype=torch.int64, device=weight.device)
        progress = ProgressLog(_log, "binary IVF index", len(weight))
        for start in range(0, len(weight), _BUILD_ROWS):
            block = weight[start : start + _BUILD_ROWS]
            codes[start : start + len(block)] = self.encode(block)
            lists[start : start + len(block)] = self.assign(block, 1)[:, 0]
            progress.update(start + len(block))
        progress.finish()
        return codes, lists

    def _lists_members(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows sorted by list [C], each list's offsets in them [L + 1] and the codes in that
        order [C, W] (re-sorted lazily after updates)."""
        if self._members is None:
            order = torch.argsort(self.lists, stable=True)
            counts = torch.bincount(self.lists, minlength=len(self.centroids))
            offsets = torch.zeros(len(counts) + 1, dtype=torch.int64, device=counts.device)
            torch.cumsum(counts, 0, out=offsets[1:])
            self._members = (order, offsets, self.codes[order])
        return self._members

    def _training_sample(self, generator: torch.Generator) -> torch.Tensor:
        """Normalised rows for k-means and ITQ: [n, D]."""
        num_lists = self._num_lists()
        size = min(len(self.weight), max(_TRAIN_POINTS_PER_LIST * num_lists, _ITQ_SAMPLE))
        pick = torch.randperm(len(self.weight), generator=generator)[:size]
        return F.normalize(self.weight[pick.to(self.weight.device)].float(), dim=1)

    def _num_lists(self) -> int:
        return self.num_lists or max(1, round(math.sqrt(len(self.weight))))

    def _coarse_quantizer(self, sample: torch.Tensor, generator: torch.Generator):
        points = sample[: _TRAIN_POINTS_PER_LIST * self._num_lists()]
        return spherical_kmeans(
            points, self._num_lists(), generator, matmul_dtype=self.matmul_dtype
        )

    def _fit_rotation(self, sample: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return fit_rotation(sample, self.num_bits, self.rotation_kind, generator)

    def _check_trained(self) -> None:
        if self.rotation is None:
            raise RuntimeError("BinaryIVF is empty: call build(weight) first")

    def _check_built(self) -> None:
        if self.codes is None:
            raise RuntimeError("BinaryIVF is empty: call build(weight) first")
