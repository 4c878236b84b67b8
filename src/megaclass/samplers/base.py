"""The ``Sampler`` protocol: what ``ClassifierHead`` asks of a sampler, and the shard it serves."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megaclass.samplers.selection import Selection


@dataclass(frozen=True)
class Shard:
    """The classes one rank's head holds, and how it computes: what a sampler is bound to.

    class_range: (start, stop) global ids of this rank's rows; process_group: the head's (None:
    one process); seed: the head's (a sampler draws from ``seed`` and ``rank``); normalize:
    whether the head scores cosines (its margin normalises); chunk_size, matmul_dtype: the
    head's, for scoring every row (graph builds, exact search).
    """

    num_classes: int
    class_range: tuple[int, int]
    process_group: dist.ProcessGroup | None
    rank: int
    world_size: int
    device: torch.device
    seed: int
    normalize: bool
    chunk_size: int | None
    matmul_dtype: torch.dtype

    @property
    def num_local(self) -> int:
        return self.class_range[1] - self.class_range[0]


class Sampler(abc.ABC):
    """Decides which rows of its shard a training step scores (the active classes).

    A sampler is configured by its constructor, then bound by ``ClassifierHead`` to the head's
    shard (``bind``), after which it owns all its state: its random generator, and whatever it
    keeps (a class graph, an index, label counts). The head calls, in this order:

    - ``refresh(weight)`` before the first training step and after each optimizer step (the
      training loop does; a user's own loop calls ``head.refresh_sampler()``): builds or
      rebuilds what the sampler keeps from the weights when due, and takes in the steps since
      the last call. The only place where a sampler may change its index or graph.
    - ``select(labels, queries, weight, training)`` in each forward pass of a head in training
      mode: the step's active rows. A head in eval mode (``head.eval()``) scores every class
      and calls neither method.

    Every rank's sampler receives the same calls in the same order; collectives run only where a
    docstring says so, on ``shard.process_group``. ``state_dict()`` gives the state to
    checkpoint as three dicts of tensors: ``"class_rows"`` ([num_local, ...] per class, resharded
    to another world size on load), ``"shared"`` (the same on every rank) and ``"rank"`` (this
    rank's own, such as its generator: restored only at the same world size; missing keys keep
    their fresh values). A sampler serves one head.
    """

    shard: Shard | None = None

    def bind(self, shard: Shard) -> None:
        """Attach to ``shard`` and create the state; the head calls this once."""
        if self.shard is not None:
            raise ValueError(f"{self!r} already serves a head; give each head its own sampler")
        self.shard = shard
        self.generator = torch.Generator().manual_seed(shard.seed * 1_000_003 + shard.rank)

    @abc.abstractmethod
    def select(
        self,
        labels: torch.Tensor,
        queries: torch.Tensor,
        weight: torch.Tensor,
        training: bool,
    ) -> Selection | None:
        """This shard's active rows for a step (None: every row, the full softmax).

        labels [B]: each sample of the global batch's label as a local row of this shard, -1
        where another shard owns it or the sample is ignored; queries [B, D]: the global batch's
        embeddings as the head scores them (normalised and scaled for cosine margins); weight
        [num_local, D]: the shard's rows (detached); training: whether the step will update the
        weights (then ``refresh`` follows it).
        """

    def refresh(self, weight: torch.Tensor) -> None:  # noqa: B027 (a sampler may keep nothing)
        """Take in the training steps since the last call and rebuild from ``weight``
        [num_local, D] what is due; nothing by default."""

    def rebuild_due(self) -> str | None:
        """What the next ``refresh`` will build from scratch (for example ``"class graph (exact,
        500 classes)"``), or None."""
        return None

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"class_rows": {}, "shared": {}, "rank": {"generator": self.generator.get_state()}}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        if "generator" in state.get("rank", {}):
            self.generator.set_state(state["rank"]["generator"])
