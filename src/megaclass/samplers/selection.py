"""What a sampler decides for a step: the active rows of a shard, and which samples score which."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SampleGroups:
    """Samplers that choose per sample (``ANN``) score each group of samples over its own
    subset of the active rows: group ``g``'s samples (rows ``members[g]`` of the global batch)
    are scored over the active rows at positions ``columns[g]``.

    members: one [b_g] int64 per group, batch rows; together a partition of the batch.
    columns: one [a_g] int64 per group, sorted positions in ``Selection.rows``; every label of a
        group's samples that this shard owns is among them.
    logit_offsets: one [a_g] fp32 (or None) per group, added to the group's logits of its
        columns (the correction of a uniform fill, as ``Selection.logit_offsets`` without
        groups), or None for none.
    """

    members: tuple[torch.Tensor, ...]
    columns: tuple[torch.Tensor, ...]
    logit_offsets: tuple[torch.Tensor | None, ...] | None = None


@dataclass(frozen=True)
class Selection:
    """A shard's active classes in one step.

    rows: [A] int64, sorted local rows.
    logit_offsets: [A] fp32, or None for none. The sampled-softmax correction for a uniform
        fill: of the ``n`` rows of the shard that were not chosen outright, ``d`` were drawn, and
        each drawn row stands for ``n / d`` of them, so its logits get ``log(n / d)`` added (0 for
        chosen rows). The sum of exponentials over the active rows is then an unbiased estimate
        of the sum over the whole shard, and the embeddings get, on average over draws, the
        gradient that the full softmax gives them. Without the correction the fill's negatives
        count ``d / n`` times too little. (A drawn row's own gradient is then taken at ``d / n``
        of its corrected value: see ``ClassifierHead``.)
    """

    rows: torch.Tensor
    logit_offsets: torch.Tensor | None = None  # without groups (groups carry their own)
    groups: SampleGroups | None = None  # None: every sample is scored over every active row
