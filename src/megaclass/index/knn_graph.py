"""The class KNN graph: for every class, its ``k`` nearest classes by cosine of the weights.

Built exactly and blockwise: no [classes, classes] matrix is ever formed, only
[query block, chunk] blocks of similarities with a running top-k. Sharded: each rank finds the
neighbours of its own classes among the classes of every rank, receiving one shard at a time.
Graphs hold int32 global class ids (4 bytes per edge: 10^7 classes x 32 neighbours = 1.3 GB).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megaclass.distributed import rank_and_size, shard_range
from megaclass.functional import shard_topk
from megaclass.logs import ProgressLog

_QUERY_BLOCK = 4096
_log = logging.getLogger("megaclass.index")


@torch.no_grad()
def build_knn_graph(
    weight: torch.Tensor,
    num_classes: int,
    k: int,
    group: dist.ProcessGroup | None,
    *,
    chunk_size: int = 8192,
    matmul_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Neighbours of this rank's classes: weight [C_local, D] -> global class ids [C_local, k].

    Exact. Nearest first, never the class itself; -1 where fewer than ``k`` other classes exist.
    Collectives on ``group``: one broadcast of each rank's normalised shard [C_r, D] from that
    rank, one shard at a time, so a rank holds at most two shards at once.
    Logs its progress to ``megaclass.index`` (see ``megaclass.logs``) when it takes long.
    """
    mine = F.normalize(weight.detach().float(), dim=1)  # [C_local, D]
    found = RunningTopK(len(mine), k, shard_start(num_classes, group), weight.device)
    progress = ProgressLog(_log, "class graph", num_classes)
    for source_start, keys, _ in shards(mine, None, num_classes, group):
        for block in range(0, len(mine), _QUERY_BLOCK):
            stop = min(block + _QUERY_BLOCK, len(mine))
            rows = torch.arange(block, stop, device=mine.device)
            scores, columns = shard_topk(
                mine[rows],
                keys,
                k + 1,
                normalize=False,
                chunk_size=chunk_size,
                matmul_dtype=matmul_dtype,
            )
            found.offer(rows, scores, columns + source_start)
            progress.update(compared_classes(source_start, len(keys), stop / len(mine)))
    progress.finish()
    return found.graph()


def compared_classes(source_start: int, source_size: int, share_done: float) -> float:
    """Classes of every rank compared with all of this rank's so far, when the shards come in
    rank order and ``share_done`` of this rank's classes met the shard starting at
    ``source_start`` (the progress of a graph build, in classes)."""
    return source_start + source_size * share_done


class RunningTopK:
    """The best ``k`` neighbours found so far for each of ``num_rows`` classes of this shard."""

    def __init__(self, num_rows: int, k: int, class_start: int, device: torch.device) -> None:
        self.k, self.class_start = k, class_start
        self.scores = torch.full((num_rows, k), float("-inf"), device=device)  # [n, k]
        self.ids = torch.full((num_rows, k), -1, dtype=torch.int32, device=device)  # [n, k]

    def offer(self, rows: torch.Tensor, scores: torch.Tensor, ids: torch.Tensor) -> None:
        """Candidates for local rows [r]: scores [r, j], global ids [r, j] (the class itself may
        be among them; it is dropped)."""
        scores = scores.masked_fill(ids == (rows[:, None] + self.class_start), float("-inf"))
        merged = torch.cat([self.scores[rows], scores], dim=1)
        merged_ids = torch.cat([self.ids[rows], ids.to(torch.int32)], dim=1)
        top, order = merged.topk(self.k, dim=1)
        self.scores[rows] = top
        self.ids[rows] = merged_ids.gather(1, order).masked_fill(top == float("-inf"), -1)

    def graph(self) -> torch.Tensor:
        return self.ids


def shard_start(num_classes: int, group: dist.ProcessGroup | None) -> int:
    rank, world_size = rank_and_size(group)
    return shard_range(num_classes, world_size, rank)[0]


def shards(
    mine: torch.Tensor,
    tags: torch.Tensor | None,
    num_classes: int,
    group: dist.ProcessGroup | None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """Every rank's rows in turn: (first global id, rows [C_r, D], tags [C_r] or None).

    ``mine`` [C_local, D] and ``tags`` [C_local] (int64, optional) are this rank's. Collectives on
    ``group``: for each rank r, a broadcast from r of its rows and (if given) of its tags.
    """
    rank, world_size = rank_and_size(group)
    for source in range(world_size):
        start, stop = shard_range(num_classes, world_size, source)
        keys, key_tags = mine, tags
        if source != rank:
            keys = mine.new_empty(stop - start, mine.shape[1])
            key_tags = None if tags is None else tags.new_empty(stop - start)
        if group is not None:
            root = dist.get_global_rank(group, source)
            dist.broadcast(keys, src=root, group=group)
            if key_tags is not None:
                dist.broadcast(key_tags, src=root, group=group)
        if len(keys):
            yield start, keys, key_tags
