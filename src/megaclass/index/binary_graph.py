"""``BinaryGraph``: a proximity graph over binary codes, searched by the codes and re-ranked by
the exact cosine (Binary Distributed Graph).

What it stores per vector: its code (``num_bits / 8`` bytes, ``megaclass.index.binary_codes``)
and ``degree`` neighbours (int32): 320 bytes at 512 bits and degree 64, against 512 bytes for the
float vector alone at dim 128. The float vectors are only read to re-rank the ``ef`` candidates a
search recalls, so they may stay on disk (a memory-mapped ``.npy``).

Construction, as published for the distributed graph:
1. **codes**: a rotation fitted on a sample (random orthogonal or ITQ), the sign bits of every
   vector;
2. **partitions**: binary k-means on the sample's codes; every vector joins its ``overlap``
   nearest partitions (overlap > 1 keeps the merged graph connected across partition borders);
3. **a graph per partition**: the exact k-NN of its members by ``build_distance`` (one block of
   matrix products per partition): the cosine of the float vectors (default), or the Hamming
   distance of the codes (the dot product of two sign vectors is ``bits - 2 h``);
4. **merge**: each vector's lists from its partitions are united and their nearest
   ``degree - random_edges`` kept; every such edge is offered back to its target (reverse
   edges), and each list is cut to ``degree - random_edges`` by the relative-neighbourhood rule
   of HNSW and NSG with Vamana's slack ``alpha`` (a candidate ``alpha`` times nearer to a kept
   neighbour than to the vector is dropped), which keeps long-range edges;
5. **refinement by neighbourhood propagation**: each vector's neighbours' neighbours are offered
   as candidates and the list is cut again, ``refine_rounds`` times;
6. **long links**: ``random_edges`` links per vector to uniformly drawn vectors, never pruned,
   so that the graph stays connected between well-separated clusters;
7. **search passes**: every vector searches the graph so far for itself (the search below, beam
   ``candidates``); what it finds joins its links, and step 4 runs again on those lists,
   ``search_passes`` times. On vectors whose near neighbours are scattered over many partitions
   (trained class weights at 10^6) the partition graphs hold few of them, and this is what
   finds the rest, as an insertion into an HNSW does.

Distributed: each rank holds a shard of the vectors (any sizes) and builds the partitions it
owns (partition ``p`` on rank ``p % world``). The codes (and, for the cosine build, the unit
rows) are all-gathered once, since every rank ends holding the whole index; the members then go
to their partitions' owners by all-to-all as (partition, id) pairs, and the partition graphs'
edges come back the same way. Merge, pruning, refinement and the search passes run on the rank
that holds the vector, against all codes (and unit rows) and, per round, the whole graph
(all-gathered). Every step depends on global ids only, so the graph is the same on 1, 2 or 3
ranks for the same seed; each rank ends holding the whole index. Within a rank the work is
dense tensor operations on torch's threads (the search passes: the search engine's).

Search (``search(queries, k, ef)``): a greedy beam search keeps the ``ef`` best codes found so
far and expands the best not yet expanded one until all are; codes are ranked by the
asymmetric score (the float query, rotated, against the code's sign bits: a table of 256
partial sums per code byte, ``binary_codes.score_tables``), which recalls about twice the true
neighbours that the Hamming distance to the query's own code does at the same beam. The beam is
then re-ranked by the exact cosine against the float vectors. Two engines walk the same graph:
faiss's C++ search (the graph as the only level of an ``IndexHNSWPQ`` whose quantizer reads the
code bytes as sign patterns: ``faiss_engines.FaissSignGraph``; CPU) and a batched tensor search
(any device: every query of a block advances one expansion per round, from the medoids of its
nearest partitions, with a visited bitmap per query). Measured against faiss, hnswlib and
pynndescent in ``benchmarks/results/index.md``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megaclass.distributed import all_gather_ints, exchange_rows, gather_rows, rank_and_size
from megaclass.index.binary_codes import (
    asymmetric_cosine,
    asymmetric_scores,
    check_code_settings,
    encode,
    exact_rerank,
    fit_rotation,
    hamming,
    pack_bits,
    project,
    score_tables,
    unpack_signs,
)
from megaclass.index.faiss_engines import FaissSignGraph, faiss_available
from megaclass.logs import ProgressLog

_log = logging.getLogger("megaclass.index")
_SAMPLE = 65_536  # vectors sampled to fit the rotation and the partitions
_KMEANS_ITERATIONS = 10
_ROW_BLOCK = 2048  # vectors handled at once by the partition k-NN and the pruning
_GATHERED_CODES = 1 << 19  # candidate codes gathered at once by the refinement
_EDGES_PER_ROUND = 1 << 25  # partition graph edges a rank sends back at once (800 MB)
_FOLD_BLOCK = 1 << 22  # list entries (rows x width) merged at once when edges are folded in
_CODE_BLOCK = 1 << 16  # vectors encoded or compared with the centroids at once
_SEARCH_BLOCK = 256  # queries searched at once (a visited bitmap of N / 8 bytes each)
_MUTUAL_ROWS = 1 << 21  # vectors whose lists are made mutual and pruned at once
_EMPTY = torch.iinfo(torch.int64).max  # the key of an empty beam slot
_LIST = torch.int32  # neighbour lists and their distances while building (ids < 2^31)
_COSINE_LEVELS = 1 << 14  # a cosine distance (1 - cos, 0..2) as an integer: in these steps
_SCORE_LEVELS = 1 << 12  # an asymmetric score as an integer beam key: in these steps
BACKENDS = ("auto", "torch", "faiss")
BUILD_DISTANCES = ("cosine", "hamming")
STATE_FILE = "binary_graph.safetensors"


@dataclass(frozen=True)
class GraphSettings:
    """How a ``BinaryGraph`` is built (saved with it).

    num_bits: code length, a multiple of 64.
    rotation: ``"random"`` (orthogonal, in blocks of dim) or ``"itq"`` (each block learned).
    degree: neighbours kept per vector (the graph's out-degree).
    candidates: candidates per vector offered to the pruning (from the partition graphs, the
        reverse edges and each refinement round); at least ``degree``.
    partition_size: vectors per partition aimed at (members, counting the overlap).
    overlap: partitions each vector joins (t); >= 2 keeps the graph connected across borders.
    random_edges: of the ``degree`` links, this many go to uniformly drawn vectors and are never
        pruned: the long-range edges that a graph of near neighbours lacks between
        well-separated clusters (with them the graph is connected and a search can leave a
        cluster it started in: a small-world graph); the rest are pruned near neighbours.
    alpha: the pruning's slack (Vamana): a candidate is dropped when a kept neighbour is
        ``alpha`` times nearer to it than the vector is; > 1 keeps more long edges.
    refine_rounds: rounds of neighbourhood propagation after the merge.
    search_passes: passes in which every vector searches the graph built so far (by its code's
        asymmetric score, beam ``candidates``), the vectors found join its links, and the lists
        are made mutual and pruned again: what finds a vector's true neighbours that no
        partition it joined holds; a second pass doubles the build and is what a graph searched
        far more often than built wants (``benchmarks/results/index.md``).
    entry_points: a search starts from the medoids of the query's nearest partitions, this many.
    build_distance: what the construction ranks neighbours by: ``"cosine"`` between the float
        vectors (each rank then holds all vectors' unit rows, 4 D bytes each, while it builds) or
        ``"hamming"`` between the codes (num_bits / 8 bytes each: for more vectors than fit). The
        search ranks by the codes either way; a graph built on cosines finds far more of the true
        neighbours at the same beam (``benchmarks/results/index.md``).
    seed: the sample, rotation and k-means initialisation.
    """

    num_bits: int = 512
    rotation: str = "random"
    degree: int = 64
    candidates: int = 64
    partition_size: int = 8192
    overlap: int = 2
    random_edges: int = 4
    alpha: float = 1.2
    refine_rounds: int = 0
    search_passes: int = 1
    entry_points: int = 4
    build_distance: str = "cosine"
    seed: int = 0

    def __post_init__(self) -> None:
        check_code_settings(self.num_bits, self.rotation)
        if self.degree < 1 or self.candidates < self.degree:
            raise ValueError(
                f"need degree >= 1 and candidates >= degree, got {self.degree}, {self.candidates}"
            )
        if (
            self.partition_size < 2
            or self.overlap < 1
            or self.refine_rounds < 0
            or self.search_passes < 0
        ):
            raise ValueError(
                "need partition_size >= 2, overlap >= 1, refine_rounds >= 0, search_passes >= "
                f"0; got {self.partition_size}, {self.overlap}, {self.refine_rounds}, "
                f"{self.search_passes}"
            )
        if self.random_edges < 0 or self.random_edges >= self.degree or self.alpha < 1:
            raise ValueError(
                "need 0 <= random_edges < degree and alpha >= 1, got "
                f"{self.random_edges}, {self.alpha}"
            )
        if self.entry_points < 1:
            raise ValueError(f"entry_points must be >= 1, got {self.entry_points}")
        if self.build_distance not in BUILD_DISTANCES:
            raise ValueError(
                f"build_distance must be one of {BUILD_DISTANCES}, got {self.build_distance!r}"
            )


class BinaryGraph:
    """A graph index over binary codes (see the module docstring).

    ``build(vectors)`` or ``build(shard, group)``, ``search(queries, k, ef)``, ``add(vectors)``,
    ``save(path)`` / ``BinaryGraph.load(path, vectors)`` (safetensors, no pickle).
    ``vectors``: the float vectors the search re-ranks with (kept by reference; may be
    memory-mapped); without them ``search`` ranks by Hamming distance alone.
    """

    def __init__(
        self, settings: GraphSettings | None = None, backend: str = "auto", **overrides
    ) -> None:
        if settings is not None and overrides:
            raise ValueError("give either settings or keyword overrides, not both")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "faiss" and not faiss_available():
            raise ValueError("backend 'faiss' needs faiss (pip install faiss-cpu)")
        self.settings = settings or GraphSettings(**overrides)
        self.requested_backend = backend
        self.vectors: torch.Tensor | None = None  # [N, D] float, for the exact re-rank
        self.rotation: torch.Tensor | None = None  # [D, num_bits]
        self.centroids: torch.Tensor | None = None  # [P, W] int64 codes of the partitions
        self.medoids: torch.Tensor | None = None  # [P] int64, each partition's nearest vector
        self.codes: torch.Tensor | None = None  # [N, W] int64
        self.graph: torch.Tensor | None = None  # [N, degree] int32, -1 padded
        self._faiss: FaissSignGraph | None = None  # the faiss mirror, made on first search

    @property
    def backend(self) -> str:
        """The graph search used: ``"faiss"`` (C++, CPU) or ``"torch"`` (batched tensor beam
        search, any device); ``"auto"`` picks faiss for CPU codes when it is installed."""
        if self.requested_backend != "auto":
            return self.requested_backend
        on_cpu = self.codes is None or self.codes.device.type == "cpu"
        return (
            "faiss" if on_cpu and faiss_available() and self.settings.degree % 2 == 0 else "torch"
        )

    def __len__(self) -> int:
        return 0 if self.codes is None else len(self.codes)

    @property
    def near_degree(self) -> int:
        """Links per vector to pruned near neighbours (the first columns of ``graph``)."""
        return self.settings.degree - self.settings.random_edges

    @property
    def bytes_per_vector(self) -> float:
        """Memory the index holds per vector (codes and graph; the float vectors not counted)."""
        return self.settings.num_bits / 8 + 4 * self.settings.degree

    # ---- construction -------------------------------------------------------------------

    @torch.no_grad()
    def build(self, vectors: torch.Tensor, group: dist.ProcessGroup | None = None) -> BinaryGraph:
        """Index ``vectors`` [n, D]: all of them, or with ``group`` this rank's shard (global ids
        follow rank order: rank r's rows come after those of ranks < r). Collective on
        ``group``; afterwards every rank holds the whole index (``self.vectors`` is this rank's
        shard only: pass all vectors to ``search`` by setting it, or search on one process).
        """
        if vectors.dim() != 2 or not vectors.is_floating_point():
            raise ValueError(f"vectors must be a float [rows, dim] tensor, got {vectors.shape}")
        settings = self.settings
        sizes = [row[0] for row in all_gather_ints([len(vectors)], group)]
        rank, world = rank_and_size(group)
        total, start = sum(sizes), sum(sizes[:rank])
        if total < 2:
            raise ValueError(f"BinaryGraph needs at least 2 vectors, got {total}")
        generator = torch.Generator().manual_seed(settings.seed)
        sample = _gathered_sample(vectors, sizes, start, group, generator)  # [S, D], global order
        self.rotation = fit_rotation(sample, settings.num_bits, settings.rotation, generator)
        num_parts = max(
            1, min(len(sample), round(total * settings.overlap / settings.partition_size))
        )
        self.centroids = binary_kmeans(self._encode(sample), num_parts, generator)
        mine = self._encode(vectors)  # [n, W]
        self.codes = gather_rows(mine, sizes, group)  # [N, W]
        if settings.build_distance == "hamming":
            space = BuildDistance("hamming", self.codes, settings.num_bits)
        else:
            everyone = gather_rows(F.normalize(vectors.float(), dim=1), sizes, group)  # [N, D]
            space = BuildDistance("cosine", everyone, settings.num_bits, unit=True)
        began = time.perf_counter()
        graph, dists = self._partition_lists(mine, start, sizes, group, space)
        graph, dists = self._mutual_pruned(graph, dists, start, sizes, group, space)
        for _ in range(settings.refine_rounds):
            whole = gather_rows(graph, sizes, group)
            graph, dists = self._prune(*self._propagated(start, graph, whole, space), space)
        _log.info("binary graph: partition graphs merged in %.0f s", time.perf_counter() - began)
        far = self._random_edges(start, len(graph)).to(_LIST)
        self.medoids = self._medoids()
        self.vectors = vectors if world == 1 else None
        for number in range(1, settings.search_passes + 1):
            began = time.perf_counter()
            self._set_graph(_with_far_links(graph, far), sizes, group)
            del dists  # the search pass measures its own
            graph, dists, searched = self._searched(start, graph, vectors, space)
            self.graph = self._faiss = None  # searched: not held beside the pruning's lists
            graph, dists = self._mutual_pruned(graph, dists, start, sizes, group, space)
            _log.info(
                "binary graph: search pass %d of %d in %.0f s (the search %.0f s)",
                number,
                settings.search_passes,
                time.perf_counter() - began,
                searched,
            )
        self._set_graph(_with_far_links(graph, far), sizes, group)
        return self

    def _set_graph(self, graph: torch.Tensor, sizes: list[int], group) -> None:
        """This rank's rows of the graph [n, degree] -> the whole graph, on every rank."""
        self.graph = gather_rows(graph, sizes, group).to(torch.int32)
        self._faiss = None

    def _mutual_pruned(self, graph, dists, start, sizes, group, space):
        """Lists [n, near] made mutual (every edge offered back to its target) and pruned:
        -> (ids [n, near], dists [n, near]), nearest first. By blocks of ``_MUTUAL_ROWS``
        vectors, each block's candidates gathered from a scan of the whole graph, so that the
        candidates of all vectors are never held at once."""
        whole = gather_rows(graph, sizes, group), gather_rows(dists, sizes, group)
        ids, distances = torch.empty_like(graph), torch.empty_like(dists)
        for first in range(0, len(graph), _MUTUAL_ROWS):
            block = slice(first, first + _MUTUAL_ROWS)
            candidates = _with_reverse_edges(
                graph[block],
                dists[block],
                *whole,
                start + first,
                self.settings.candidates,
                space.far,
            )
            ids[block], distances[block] = self._prune(*candidates, space)
        return ids, distances

    def _searched(self, start, graph, vectors, space):
        """A search pass's lists: each of vectors [n, D] searches the graph for itself (beam
        ``candidates``), and keeps the nearest ``near`` by ``space`` of its links graph [n, near]
        and the vectors found; by blocks of vectors, so that what the searches found is never
        held for all at once: -> (ids [n, near], dists [n, near]) nearest first, and the
        seconds spent searching."""
        nodes = torch.arange(start, start + len(graph))
        total, width = len(self.codes), graph.shape[1] + self.settings.candidates
        rows = max(1, _GATHERED_CODES // width)
        ids = torch.empty(len(graph), self.near_degree, dtype=_LIST)
        dists = torch.empty_like(ids)
        searching = 0.0
        progress = ProgressLog(_log, "binary graph search pass", len(graph), unit="vectors")
        for first in range(0, len(graph), rows):
            block = slice(first, first + rows)
            began = time.perf_counter()
            projected = project(vectors[block], self.rotation)
            found = self.recall(projected, self.settings.candidates)[1]  # [b, c], -1 padded
            searching += time.perf_counter() - began
            offered = torch.cat([graph[block], found], 1)  # [b, near + c]
            valid = (offered >= 0) & (offered != nodes[block, None])
            distances = space.between(offered.clamp_min(0), nodes[block])
            keys = torch.where(valid, distances * total + offered, _EMPTY)
            ids[block], dists[block] = _unique_nearest(keys, self.near_degree, total, space.far)
            progress.update(min(first + rows, len(graph)))
        progress.finish()
        return ids, dists, searching

    def _encode(self, vectors: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                encode(vectors[start : start + _CODE_BLOCK], self.rotation)
                for start in range(0, len(vectors), _CODE_BLOCK)
            ]
        )

    def _partition_lists(self, mine, start, sizes, group, space):
        """Each of this rank's vectors' ``near`` nearest (by ``space``) over the exact k-NN
        lists of all partitions it joined: codes mine [n, W] -> (ids [n, near] global, dists
        [n, near]), nearest first, -1 / far padded.

        Members (partition, global id) go to their partitions' owners by one all-to-all (the
        owner reads their rows from ``space``, which holds every rank's); the partition graphs'
        edges come back in rounds of at most ``_EDGES_PER_ROUND`` (the same number of rounds on
        every rank), each folded into the lists, so that memory stays bounded at 10^7 vectors."""
        _, world = rank_and_size(group)
        parts = nearest_codes(mine, self.centroids, self.settings.overlap)  # [n, t]
        ids = torch.arange(start, start + len(mine)).repeat_interleave(parts.shape[1])
        records = torch.stack([parts.flatten(), ids], 1)  # [n t, 2]: partition, id
        owner = records[:, 0] % world
        arrived = torch.cat(exchange_rows([records[owner == r] for r in range(world)], group))
        del records, owner
        arrived = arrived[torch.argsort(arrived[:, 0] * sum(sizes) + arrived[:, 1])]  # by part, id
        counts = torch.unique_consecutive(arrived[:, 0], return_counts=True)[1].tolist()
        near, far, n = self.near_degree, space.far, len(mine)
        most = max(row[0] for row in all_gather_ints([len(arrived) * near], group))
        rounds = max(1, -(-most // _EDGES_PER_ROUND))
        lists = torch.full((n, near), -1, dtype=_LIST), torch.full((n, near), far, dtype=_LIST)
        bounds = torch.tensor(sizes).cumsum(0)
        progress = ProgressLog(_log, "binary graph partitions", len(arrived), unit="vectors")
        first, done = 0, 0
        for round_ in range(rounds):
            edges = [torch.empty(0, 3, dtype=torch.int64)]
            while first < len(arrived) and first * rounds < (round_ + 1) * len(arrived):
                count = counts[done]
                members = arrived[first : first + count]
                neighbours, distances = partition_knn(space.points(members[:, 1]), near, space)
                edges.append(
                    torch.stack(
                        [
                            members[:, 1].repeat_interleave(neighbours.shape[1]),
                            members[:, 1][neighbours].flatten(),
                            distances.flatten(),
                        ],
                        1,
                    )
                )
                first, done = first + count, done + 1
                progress.update(first)
            edges = torch.cat(edges)
            holder = torch.searchsorted(bounds, edges[:, 0].contiguous(), right=True)
            back = torch.cat(exchange_rows([edges[holder == r] for r in range(world)], group))
            lists = _folded(*lists, back[:, 0] - start, back[:, 1], back[:, 2], sum(sizes), far)
        progress.finish()
        return lists

    def _random_edges(self, start: int, count: int) -> torch.Tensor:
        """``random_edges`` uniformly drawn other vectors for each of nodes [start, start +
        count): [count, random_edges] global ids, drawn per block of global ids (the same on
        any number of ranks)."""
        width, total = self.settings.random_edges, len(self.codes)
        drawn = torch.empty(count, width, dtype=torch.int64)
        for block in range(start // _CODE_BLOCK, -(-(start + count) // _CODE_BLOCK)):
            generator = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + block)
            draws = torch.randint(total - 1, (_CODE_BLOCK, width), generator=generator)
            first = block * _CODE_BLOCK
            lo, hi = max(start, first), min(start + count, first + _CODE_BLOCK)
            drawn[lo - start : hi - start] = draws[lo - first : hi - first]
        return drawn + (drawn >= torch.arange(start, start + count)[:, None])  # never itself

    def _prune(self, ids, dists, space):
        """Cut candidate lists to the near links (``degree - random_edges``) by the
        relative-neighbourhood rule.

        ids [n, M] candidates sorted nearest first (-1 padded), dists [n, M] their ``space``
        distances -> (ids [n, near], dists [n, near]), nearest first.
        A candidate is kept unless a neighbour kept before it is ``alpha`` times nearer to it
        than the node is; lists left short are filled with the nearest dropped candidates.
        """
        degree = self.near_degree
        out_ids = torch.full((len(ids), degree), -1, dtype=ids.dtype)
        out_dists = torch.full((len(ids), degree), space.far, dtype=dists.dtype)
        for first in range(0, len(ids), _ROW_BLOCK):
            block = slice(first, first + _ROW_BLOCK)
            candidates, to_node = ids[block], dists[block]  # [b, M]
            valid = (candidates >= 0) & ~_repeated(candidates)  # copies at rounded-apart distances
            points = space.points(candidates.clamp_min(0))  # [b, M, F]
            dots = torch.bmm(points, points.transpose(1, 2))  # [b, M, M], symmetric
            # closer[:, i, j]: candidate j is alpha times nearer to candidate i than the node is
            closer = dots > space.nearer_than(to_node, self.settings.alpha)[:, :, None]
            kept = torch.zeros_like(valid)
            count = torch.zeros(len(candidates), dtype=torch.int64)
            for i in range(candidates.shape[1]):
                occluded = (kept & closer[:, i]).any(1)
                take = valid[:, i] & ~occluded & (count < degree)
                kept[:, i] = take
                count += take
            spare = valid & ~kept
            chosen = kept | (spare & (spare.cumsum(1) <= (degree - count)[:, None]))
            position = torch.arange(candidates.shape[1]).expand_as(candidates)
            order = torch.where(chosen, position, position + candidates.shape[1]).argsort(1)
            order = order[:, :degree]
            picked = chosen.gather(1, order)
            width = order.shape[1]
            out_ids[block, :width] = torch.where(picked, candidates.gather(1, order), -1)
            out_dists[block, :width] = torch.where(picked, to_node.gather(1, order), space.far)
        return out_ids, out_dists

    def _propagated(self, start, graph, whole, space):
        """Candidates of this rank's vectors [n]: their neighbours and their neighbours'
        neighbours (from ``whole`` [N, degree]), nearest ``candidates`` of them by ``space``,
        nearest first."""
        n, keep = len(graph), self.settings.candidates
        out_ids = torch.full((n, keep), -1, dtype=_LIST)
        out_dists = torch.full((n, keep), space.far, dtype=_LIST)
        total = len(self.codes)
        rows = max(1, _GATHERED_CODES // (graph.shape[1] + 1) ** 2)  # vectors per block
        for first in range(0, n, rows):
            neighbours = graph[first : first + rows]  # [b, R]
            second = whole[neighbours.clamp_min(0)].masked_fill_((neighbours < 0)[:, :, None], -1)
            candidates = torch.cat([neighbours, second.flatten(1)], 1)  # [b, R + R^2]
            nodes = torch.arange(start + first, start + first + len(neighbours))
            valid = (candidates >= 0) & (candidates != nodes[:, None])
            codes = self.codes[candidates.clamp_min(0)]  # [b, c, W]
            if space.kind == "hamming":
                distances = hamming(codes, self.codes[nodes])
            else:  # the shortlist by the asymmetric score, then ordered by the exact cosine
                projected = space.points(nodes) @ self.rotation  # [b, bits]
                distances = _score_distances(score_tables(projected), _offsets(projected), codes)
            keys = torch.where(valid, distances * total + candidates, _EMPTY)
            ids, dists = _unique_nearest(keys, keep, total, space.far)
            if space.kind == "cosine":
                dists = space.between(ids.clamp_min(0), nodes).masked_fill_(ids < 0, space.far)
                dists, order = dists.sort(dim=1, stable=True)
                ids = ids.gather(1, order)
            out_ids[first : first + len(neighbours)] = ids
            out_dists[first : first + len(neighbours)] = dists
        return out_ids, out_dists

    def _medoids(self) -> torch.Tensor:
        """[P]: the vector whose code is nearest each partition's centroid (lowest id on ties)."""
        centroid_signs = unpack_signs(self.centroids)  # [P, bits]
        best = torch.full((len(self.centroids),), -math.inf)
        found = torch.zeros(len(self.centroids), dtype=torch.int64)
        for first in range(0, len(self.codes), _CODE_BLOCK):
            dots = unpack_signs(self.codes[first : first + _CODE_BLOCK]) @ centroid_signs.t()
            block_best, where = dots.max(0)  # first maximum: the lowest id
            better = block_best > best
            best = torch.where(better, block_best, best)
            found = torch.where(better, where + first, found)
        return found

    # ---- search --------------------------------------------------------------------------

    @torch.no_grad()
    def search(
        self, queries: torch.Tensor, k: int, ef: int = 64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest vectors of each query: queries [Q, D] -> (scores [Q, k] fp32, ids
        [Q, k] int64), best first; -inf and -1 where fewer were found.

        ef: the beam (candidates recalled by the asymmetric score and re-ranked), at least k.
        Scores are exact cosines when ``self.vectors`` is set, else estimated from the
        asymmetric scores (``binary_codes.asymmetric_cosine``).
        """
        self._check_built()
        if queries.dim() != 2 or queries.shape[1] != self.rotation.shape[0]:
            raise ValueError(
                f"queries must be [Q, {self.rotation.shape[0]}], got {tuple(queries.shape)}"
            )
        if not 1 <= k <= ef:
            raise ValueError(f"need 1 <= k <= ef, got k={k}, ef={ef}")
        projected = project(queries, self.rotation)  # [Q, bits]
        scores, found = self.recall(projected, ef)  # [Q, ef]
        if self.vectors is not None:
            scores, found = exact_rerank(self.vectors, queries, found, k)
        else:
            scores, found = asymmetric_cosine(scores[:, :k], projected), found[:, :k]
            scores[found < 0] = -math.inf
        if found.shape[1] < k:  # fewer vectors than k
            scores = F.pad(scores, (0, k - found.shape[1]), value=-math.inf)
            found = F.pad(found, (0, k - found.shape[1]), value=-1)
        return scores, found

    def recall(self, projected: torch.Tensor, ef: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``ef`` best codes by the asymmetric score that the graph search finds:
        projected [Q, bits] queries (``binary_codes.project``) -> (scores [Q, ef] fp32, ids
        [Q, ef]), best first, -inf and -1 where fewer were reached."""
        if self.backend == "faiss":
            if self._faiss is None:
                self._faiss = FaissSignGraph(self.codes, self.graph, int(self.medoids[0]))
            return self._faiss.search(projected, ef)
        keys, offsets = [], []
        for first in range(0, len(projected), _SEARCH_BLOCK):
            beam_keys, offset = self._beam_search(projected[first : first + _SEARCH_BLOCK], ef)
            keys.append(beam_keys)
            offsets.append(offset)
        keys, offset = torch.cat(keys), torch.cat(offsets)
        empty = keys == _EMPTY
        scores = offset[:, None] - (keys // len(self)).float() / _SCORE_LEVELS
        return scores.masked_fill_(empty, -math.inf), torch.where(empty, -1, keys % len(self))

    def _beam_search(self, projected: torch.Tensor, ef: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Beam keys ``distance * N + id`` [q, ef] (ascending, ``_EMPTY`` padded) of the best
        codes found by a greedy beam search from the nearest partitions' medoids, and the
        offsets [q] that turn distances back into scores (``_score_distances``)."""
        beam = _Beam(projected, self.codes, ef)
        offset = beam.offset
        query_codes = pack_bits(projected > 0)
        entries = nearest_codes(query_codes, self.centroids, self.settings.entry_points)
        beam.offer(self.medoids[entries])
        result = torch.empty(len(query_codes), ef, dtype=torch.int64)
        rows = torch.arange(len(query_codes))  # the query of each beam row
        while True:
            parents = beam.next_parents()  # [r], -1 where the beam is fully expanded
            live = parents >= 0
            if 2 * int(live.sum()) <= len(live):  # finished beams leave, when half have
                result[rows[~live]] = beam.keys[~live]
                if not live.any():
                    return result, offset
                rows, parents = rows[live], parents[live]
                beam.keep(live)
            neighbours = self.graph[parents.clamp_min(0)].long()  # [r, degree]
            beam.offer(neighbours.masked_fill_((parents < 0)[:, None], -1))

    @torch.no_grad()
    def add(self, vectors: torch.Tensor) -> torch.Tensor:
        """Append ``vectors`` [n, D] as ids N..N+n-1 and return those ids: each is linked to
        the nearest of ``candidates`` vectors a graph search finds (cut by the pruning rule)
        and to ``random_edges`` drawn ones,
        and offered back to them as a reverse edge. The new vectors reach one another through
        their common neighbours; after many additions a rebuild gives a better graph. The float
        vectors (for the re-rank), if set, are extended in memory; a graph built by cosine
        needs them (its links are ranked by cosine)."""
        self._check_built()
        if vectors.dim() != 2 or vectors.shape[1] != self.rotation.shape[0]:
            raise ValueError(
                f"vectors must be [n, {self.rotation.shape[0]}], got {tuple(vectors.shape)}"
            )
        if self.settings.build_distance == "cosine" and self.vectors is None:
            raise ValueError("adding to a graph built by cosine needs its float vectors set")
        first = len(self)
        _, found = self.recall(project(vectors, self.rotation), self.settings.candidates)
        self.codes = torch.cat([self.codes, self._encode(vectors)])
        if self.vectors is not None:
            self.vectors = torch.cat([self.vectors, vectors.to(self.vectors.dtype)])
        space = BuildDistance(
            self.settings.build_distance,
            self.codes if self.settings.build_distance == "hamming" else self.vectors,
            self.settings.num_bits,
        )
        new_ids = torch.arange(first, first + len(vectors))
        distances = space.between(found.clamp_min(0), new_ids).masked_fill_(found < 0, space.far)
        distances, order = distances.sort(dim=1, stable=True)
        links, link_distances = self._prune(found.gather(1, order), distances, space)  # [n, near]
        # offered back: each neighbour of a new vector gets it as a candidate
        has = links >= 0
        touched = links[has].unique()  # sorted
        targets = new_ids[:, None].expand_as(links)[has]
        near = self.near_degree
        old_links = self.graph[touched, :near].long()  # [m, near]
        old_distances = space.between(old_links.clamp_min(0), touched)
        pad = self.settings.candidates - near
        candidates = _folded(
            F.pad(old_links, (0, pad), value=-1),
            F.pad(old_distances.masked_fill_(old_links < 0, space.far), (0, pad), value=space.far),
            torch.searchsorted(touched, links[has]),
            targets,
            link_distances[has],
            len(self.codes),
            space.far,
        )
        far = self._random_edges(first, len(vectors))
        self.graph = torch.cat([self.graph, _with_far_links(links, far).to(torch.int32)])
        self.graph[touched, :near] = self._prune(*candidates, space)[0].to(torch.int32)
        self._faiss = None
        return new_ids

    def _check_built(self) -> None:
        if self.graph is None:
            raise RuntimeError("BinaryGraph is empty: call build(vectors) or load(path) first")

    # ---- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_built()
        return {
            "rotation": self.rotation,
            "centroids": self.centroids,
            "medoids": self.medoids,
            "codes": self.codes,
            "graph": self.graph,
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = {"rotation", "centroids", "medoids", "codes", "graph"} - set(state)
        if missing:
            raise ValueError(f"BinaryGraph state lacks {sorted(missing)}")
        graph, codes = state["graph"], state["codes"]
        words = self.settings.num_bits // 64
        if (
            codes.dim() != 2
            or codes.shape[1] != words
            or graph.shape
            != (
                len(codes),
                self.settings.degree,
            )
        ):
            raise ValueError(
                f"BinaryGraph state has codes {tuple(codes.shape)} and graph "
                f"{tuple(graph.shape)}; the settings want [N, {words}] and [N, "
                f"{self.settings.degree}]"
            )
        if len(graph) and (int(graph.min()) < -1 or int(graph.max()) >= len(codes)):
            raise ValueError("BinaryGraph state has edges to vectors it does not hold")
        for name in ("rotation", "centroids", "medoids", "codes", "graph"):
            setattr(self, name, state[name])
        self._faiss = None

    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` (one safetensors file; the settings in its metadata)."""
        from safetensors.torch import save_file

        state = {name: tensor.contiguous() for name, tensor in self.state_dict().items()}
        save_file(state, str(path), metadata={"settings": json.dumps(asdict(self.settings))})

    @classmethod
    def load(
        cls, path: str | Path, vectors: torch.Tensor | None = None, backend: str = "auto"
    ) -> BinaryGraph:
        """The index saved at ``path``; ``vectors`` [N, D]: the float vectors to re-rank with
        (may be memory-mapped)."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as file:
                settings = GraphSettings(**json.loads(file.metadata()["settings"]))
                names = file.keys()
                state = {name: file.get_tensor(name) for name in names}
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as error:
            raise ValueError(f"{path} is not a readable BinaryGraph file: {error}") from None
        index = cls(settings, backend)
        index.load_state_dict(state)
        if vectors is not None and vectors.shape != (len(index), index.rotation.shape[0]):
            raise ValueError(
                f"vectors are {tuple(vectors.shape)}, the index holds {len(index)} of dim "
                f"{index.rotation.shape[0]}"
            )
        index.vectors = vectors
        return index


class _Beam:
    """The search beams of a block of queries: keys ``distance * N + id`` [q, ef] ascending,
    which of them were expanded, and a visited bitmap [q, N / 8] so that no vector is scored
    twice for a query. Distances: ``_score_distances``."""

    def __init__(self, projected: torch.Tensor, codes: torch.Tensor, ef: int) -> None:
        q, self.total = len(projected), len(codes)
        self.tables, self.offset, self.codes = score_tables(projected), _offsets(projected), codes
        self.keys = torch.full((q, ef), _EMPTY, dtype=torch.int64)
        self.expanded = torch.zeros(q, ef, dtype=torch.bool)
        self.visited = torch.zeros(q, (self.total + 7) // 8, dtype=torch.uint8)

    def offer(self, candidates: torch.Tensor) -> None:
        """Score the unvisited candidates [q, c] (-1 padded, repeats allowed) and keep the
        ``ef`` nearest of beam and candidates."""
        candidates = candidates.sort(1).values
        repeat = torch.zeros_like(candidates, dtype=torch.bool)
        repeat[:, 1:] = candidates[:, 1:] == candidates[:, :-1]
        valid = (candidates >= 0) & ~repeat
        ids = candidates.clamp_min(0)
        byte, bit = ids >> 3, (ids & 7).to(torch.uint8)
        seen = self.visited.gather(1, byte).bitwise_right_shift(bit).bitwise_and_(1).bool()
        new = valid & ~seen
        marks = torch.where(new, torch.ones_like(bit).bitwise_left_shift(bit), 0)
        self.visited.scatter_add_(1, byte, marks)  # distinct new bits: adding sets them
        distances = _score_distances(self.tables, self.offset, self.codes[ids])  # [q, c]
        keys = torch.where(new, distances * self.total + ids, _EMPTY)
        merged = torch.cat([self.keys, keys], 1)
        flags = torch.cat([self.expanded, torch.zeros_like(new)], 1)
        self.keys, where = merged.topk(self.keys.shape[1], dim=1, largest=False, sorted=True)
        self.expanded = flags.gather(1, where)

    def next_parents(self) -> torch.Tensor:
        """Each beam's nearest vector not yet expanded, marked expanded: [q], -1 where none."""
        open_ = ~self.expanded & (self.keys != _EMPTY)
        position = open_.to(torch.int8).argmax(1)  # the first open slot: the nearest
        has = open_.any(1)
        self.expanded[torch.arange(len(position)), position] |= has
        return torch.where(has, self.keys[torch.arange(len(position)), position] % self.total, -1)

    def keep(self, rows: torch.Tensor) -> None:
        """Drop the beams of finished queries (rows [q] bool: the ones that stay)."""
        self.keys, self.expanded = self.keys[rows], self.expanded[rows]
        self.visited, self.tables = self.visited[rows], self.tables[rows]
        self.offset = self.offset[rows]


def _offsets(projected: torch.Tensor) -> torch.Tensor:
    """projected [q, bits] -> [q]: the highest asymmetric score any code could reach."""
    return projected.abs().sum(1)


def _score_distances(tables, offset, codes) -> torch.Tensor:
    """Asymmetric scores of codes [q, c, W] as integer distances [q, c] int64 (for keys
    ``distance * N + id``): ``offset`` [q] minus the score, in steps of ``1 / _SCORE_LEVELS``."""
    scores = asymmetric_scores(tables, codes)
    return ((offset[:, None] - scores) * _SCORE_LEVELS).round_().clamp_min_(0).long()


# ---- construction steps (pure functions of global ids and codes) -------------------------


class BuildDistance:
    """The distance the construction ranks neighbours by, as integers (merge keys are
    ``distance * N + id``): ``"hamming"`` between codes rows [N, W] int64, or ``"cosine"``
    (1 - cos) between float rows [N, D] (normalised when read unless ``unit``; may be
    memory-mapped) in steps of ``1 / _COSINE_LEVELS``. Both come from dot products of
    ``points``: +-1 sign vectors, or unit vectors."""

    def __init__(self, kind: str, rows: torch.Tensor, num_bits: int, unit: bool = False) -> None:
        self.kind, self.rows, self.num_bits, self.unit = kind, rows, num_bits, unit
        self.far = num_bits + 1 if kind == "hamming" else 2 * _COSINE_LEVELS + 1  # beyond all

    def points(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [...] (>= 0) -> points [..., F] fp32."""
        picked = self.rows.index_select(0, ids.flatten())
        if self.kind == "hamming":
            points = unpack_signs(picked)
        else:
            points = picked if self.unit else F.normalize(picked.float(), dim=1)
        return points.view(*ids.shape, -1)

    def distances(self, dots: torch.Tensor) -> torch.Tensor:
        """Dot products of points -> int64 distances."""
        if self.kind == "hamming":
            return ((self.num_bits - dots) / 2).round_().long()
        return ((1 - dots) * _COSINE_LEVELS).round_().clamp_min_(0).long()

    def nearer_than(self, distances: torch.Tensor, alpha: float) -> torch.Tensor:
        """The dot product of points above which their distance is below ``distances / alpha``
        (int64 [...] -> fp32 [...]): a comparison of dot products instead of distances."""
        if self.kind == "hamming":
            return self.num_bits - 2 * distances.float() / alpha
        return 1 - distances.float() / (alpha * _COSINE_LEVELS)

    def between(self, ids: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """Distances of rows ids [b, c] (>= 0) to rows nodes [b]: -> [b, c] int64."""
        if self.kind == "hamming":
            return hamming(self.rows[ids], self.rows[nodes])
        dots = torch.bmm(self.points(ids), self.points(nodes)[:, :, None]).squeeze(2)
        return self.distances(dots)


def binary_kmeans(codes: torch.Tensor, num_parts: int, generator: torch.Generator) -> torch.Tensor:
    """Centroid codes [P, W] of ``num_parts`` clusters of codes [n, W] by Hamming distance:
    seeded distinct starting points, then the majority bit of each cluster's members (an
    empty cluster keeps its centroid)."""
    centroids = codes[torch.randperm(len(codes), generator=generator)[:num_parts]]
    signs = unpack_signs(codes)  # [n, bits]
    for _ in range(_KMEANS_ITERATIONS):
        nearest = nearest_codes(codes, centroids, 1)[:, 0]
        sums = torch.zeros(len(centroids), signs.shape[1]).index_add_(0, nearest, signs)
        counts = torch.bincount(nearest, minlength=len(centroids))
        updated = pack_bits(sums >= 0)
        centroids = torch.where((counts > 0)[:, None], updated, centroids)
    return centroids


def nearest_codes(codes: torch.Tensor, targets: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` targets [T, W] nearest each code [n, W] by Hamming distance, nearest first,
    lower index first on ties: -> [n, min(count, T)] int64."""
    count = min(count, len(targets))
    target_signs = unpack_signs(targets).t()  # [bits, T]
    out = torch.empty(len(codes), count, dtype=torch.int64)
    for first in range(0, len(codes), _CODE_BLOCK):
        dots = unpack_signs(codes[first : first + _CODE_BLOCK]) @ target_signs  # [b, T]
        keys = (target_signs.shape[0] - dots).long() * len(targets) + torch.arange(len(targets))
        out[first : first + len(dots)] = keys.topk(count, 1, largest=False).indices
    return out


def partition_knn(
    points: torch.Tensor, k: int, space: BuildDistance
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-NN inside one partition: points [m, F] (``space.points``) -> (neighbours
    [m, k'] positions, ``space`` distances [m, k'] int64), nearest first, k' = min(k, m - 1),
    never the member itself."""
    k = min(k, len(points) - 1)
    neighbours = torch.empty(len(points), max(k, 0), dtype=torch.int64)
    distances = torch.empty(len(points), max(k, 0), dtype=torch.int64)
    if k <= 0:
        return neighbours, distances
    for first in range(0, len(points), _ROW_BLOCK):
        dots = points[first : first + _ROW_BLOCK] @ points.t()  # [b, m]
        rows = torch.arange(len(dots))
        dots[rows, rows + first] = -math.inf  # itself: after every other member
        top, found = dots.topk(k, 1)
        neighbours[first : first + len(dots)] = found
        distances[first : first + len(dots)] = space.distances(top)
    return neighbours, distances


def _gathered_sample(vectors, sizes, start, group, generator) -> torch.Tensor:
    """Up to ``_SAMPLE`` seeded rows of all ranks' vectors, normalised, in global id order (the
    same on every rank for every world size)."""
    total = sum(sizes)
    picked = torch.randperm(total, generator=generator)[: min(total, _SAMPLE)].sort().values
    holder = torch.searchsorted(torch.tensor(sizes).cumsum(0), picked, right=True)
    counts = torch.bincount(holder, minlength=len(sizes)).tolist()
    mine = picked[(picked >= start) & (picked < start + len(vectors))] - start
    rows = F.normalize(vectors[mine].float(), dim=1)
    return gather_rows(rows, counts, group)


def _with_reverse_edges(graph, dists, whole_graph, whole_dists, start, keep, far):
    """Candidates of nodes [start, start + n): the ``keep`` nearest distinct of their own lists
    graph, dists [n, R] and every edge of whole_graph, whole_dists [N, R] pointing to them,
    folded in blocks of at most ``_EDGES_PER_ROUND`` edges."""
    stop, pad = start + len(graph), keep - graph.shape[1]
    ids, distances = F.pad(graph, (0, pad), value=-1), F.pad(dists, (0, pad), value=far)
    rows = max(1, _EDGES_PER_ROUND // whole_graph.shape[1])
    for first in range(0, len(whole_graph), rows):
        block = whole_graph[first : first + rows]
        mine = (block >= start) & (block < stop)  # [b, R]
        sources = torch.arange(first, first + len(block))[:, None].expand_as(block)
        ids, distances = _folded(
            ids,
            distances,
            block[mine] - start,
            sources[mine],
            whole_dists[first : first + rows][mine],
            len(whole_graph),
            far,
        )
    return ids, distances


def _with_far_links(near: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """near [n, a] and far [n, b] links (one dtype) -> [n, a + b], a far link already in the
    row -1; a far column at a time, so that no [n, b, a] comparison is formed."""
    repeat = torch.zeros_like(far, dtype=torch.bool)
    for j in range(far.shape[1]):
        column = far[:, j, None]
        repeat[:, j] = (column == near).any(1) | (column == far[:, :j]).any(1)
    return torch.cat([near, far.masked_fill(repeat, -1)], 1)


def _folded(ids, dists, src, dst, distances, total, far):
    """Lists ids, dists [n, k] (nearest first, -1 and ``far`` padded) with the edges (src row,
    dst, distance) [E] folded in: each row's ``k`` nearest distinct. Only the rows the edges
    start from are touched, in blocks of at most ``_FOLD_BLOCK`` list entries, rows grouped by
    their number of edges (up to the next power of two): memory O(E), however skewed the
    in-degrees that reverse edges bring (a hub's thousands of edges widen only its own block)."""
    if len(src) == 0:
        return ids, dists
    order = torch.argsort(src, stable=True)
    src, keys = src[order], (distances.long() * total + dst)[order]
    rows, counts = torch.unique_consecutive(src, return_counts=True)
    starts = counts.cumsum(0) - counts  # each row's first edge
    widths = 2 ** torch.log2(counts.double()).ceil().long()
    for width in widths.unique().tolist():
        alike = (widths == width).nonzero().flatten()  # rows with width // 2 < count <= width
        step = max(1, _FOLD_BLOCK // (width + ids.shape[1]))
        for first in range(0, len(alike), step):
            block = alike[first : first + step]
            block_counts = counts[block]
            row_of_edge = torch.repeat_interleave(torch.arange(len(block)), block_counts)
            position = (
                torch.arange(len(row_of_edge))
                - (block_counts.cumsum(0) - block_counts)[row_of_edge]
            )
            offered = torch.full((len(block), width), _EMPTY, dtype=torch.int64)
            offered[row_of_edge, position] = keys[starts[block][row_of_edge] + position]
            touched = rows[block]
            held = torch.where(
                ids[touched] >= 0, dists[touched].long() * total + ids[touched], _EMPTY
            )
            nearest = _unique_nearest(torch.cat([held, offered], 1), ids.shape[1], total, far)
            ids[touched], dists[touched] = nearest[0].to(ids.dtype), nearest[1].to(dists.dtype)
    return ids, dists


def _repeated(ids: torch.Tensor) -> torch.Tensor:
    """ids [n, c], each row in order of preference -> [n, c] bool: the id came earlier in its
    row."""
    by_id = ids.sort(dim=1, stable=True)  # an id's copies stay in order of preference
    again = torch.zeros_like(ids, dtype=torch.bool)
    again[:, 1:] = by_id.values[:, 1:] == by_id.values[:, :-1]
    return torch.zeros_like(again).scatter_(1, by_id.indices, again)


def _unique_nearest(keys, keep, total, far):
    """Row-wise: the ``keep`` smallest keys ``distance * total + id`` of [n, c] with distinct
    ids (an id offered twice, at distances that rounding made differ, counts once at the
    nearer) -> (ids [n, keep], distances [n, keep]), -1 padded."""
    keys = keys.sort(1).values
    repeat = _repeated(keys % total) | (keys == _EMPTY)
    position = torch.arange(keys.shape[1]).expand_as(keys)
    first = torch.where(repeat, position + keys.shape[1], position).argsort(1)[:, :keep]
    shortlist = torch.where(repeat.gather(1, first), _EMPTY, keys.gather(1, first))
    empty = shortlist == _EMPTY
    ids = torch.where(empty, -1, shortlist % total)
    distances = torch.where(empty, far, shortlist // total)
    if ids.shape[1] < keep:
        pad = keep - ids.shape[1]
        ids = F.pad(ids, (0, pad), value=-1)
        distances = F.pad(distances, (0, pad), value=far)
    return ids, distances


@torch.no_grad()
def build_binary_graph_knn(
    weight: torch.Tensor, num_classes: int, k: int, group: dist.ProcessGroup | None, seed: int = 0
) -> torch.Tensor:
    """The class KNN graph of this rank's classes from a ``BinaryGraph`` over all ranks' rows:
    weight [C_local, D] -> global ids [C_local, k] int32, nearest first by cosine (the
    graph's pruned near links, ``degree = k + random_edges``);
    -1 where a list is short. Collective on ``group`` (``BinaryGraph.build``)."""
    settings = GraphSettings(degree=k + 4, candidates=2 * (k + 4), seed=seed)
    index = BinaryGraph(settings).build(weight.detach(), group)
    if len(index) != num_classes:
        raise ValueError(f"the shards hold {len(index)} classes, expected {num_classes}")
    rank, _ = rank_and_size(group)
    sizes = [row[0] for row in all_gather_ints([len(weight)], group)]
    start = sum(sizes[:rank])
    return index.graph[start : start + len(weight), :k].contiguous()
