"""Pure tensor math: margins on cosine logits and the chunked (streaming) softmax cross entropy."""

from megaclass.functional import margins
from megaclass.functional.chunked_softmax import (
    ShardLogSumExp,
    ShardTargets,
    shard_logsumexp,
    shard_softmax_backward,
    shard_targets,
    shard_topk,
)

__all__ = [
    "ShardLogSumExp",
    "ShardTargets",
    "margins",
    "shard_logsumexp",
    "shard_softmax_backward",
    "shard_targets",
    "shard_topk",
]
