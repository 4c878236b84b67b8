"""The class KNN graph: for every class, its ``k`` nearest classes by cosine of the weights.

Built exactly and blockwise: no [classes, classes] matrix is ever formed, only
[query block, chunk] blocks of similarities with a running top-k. Sharded: each rank finds the
neighbours of its own classes among the classes of every rank, receiving one shard at a time.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megaclass.distributed import rank_and_size, shard_range
from megaclass.functional import shard_topk

_QUERY_BLOCK = 4096


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

    Nearest first, never the class itself; -1 where fewer than ``k`` other classes exist.
    Collectives on ``group``: one broadcast of each rank's normalised shard [C_r, D] from that
    rank, one shard at a time, so a rank holds at most two shards at once.
    """
    rank, world_size = rank_and_size(group)
    start, _ = shard_range(num_classes, world_size, rank)
    mine = F.normalize(weight.detach().float(), dim=1)  # [C_local, D]
    best_scores = torch.full((len(mine), k), float("-inf"), device=weight.device)
    best_ids = torch.full((len(mine), k), -1, dtype=torch.int64, device=weight.device)
    own_ids = torch.arange(start, start + len(mine), device=weight.device)[:, None]
    for source in range(world_size):
        source_start, source_stop = shard_range(num_classes, world_size, source)
        if source == rank:
            keys = mine
        else:
            keys = torch.empty(source_stop - source_start, mine.shape[1], device=weight.device)
        if group is not None:
            dist.broadcast(keys, src=dist.get_global_rank(group, source), group=group)
        if len(keys) == 0:
            continue
        for block in range(0, len(mine), _QUERY_BLOCK):
            rows = slice(block, block + _QUERY_BLOCK)
            scores, found = shard_topk(
                mine[rows],
                keys,
                k + 1,
                normalize=False,
                chunk_size=chunk_size,
                matmul_dtype=matmul_dtype,
            )
            ids = found + source_start
            scores = scores.masked_fill(ids == own_ids[rows], float("-inf"))
            merged = torch.cat([best_scores[rows], scores], dim=1)
            merged_ids = torch.cat([best_ids[rows], ids], dim=1)
            top, order = merged.topk(k, dim=1)
            best_scores[rows] = top
            best_ids[rows] = merged_ids.gather(1, order).masked_fill(top == float("-inf"), -1)
    return best_ids
