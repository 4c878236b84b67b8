"""Watching a run for collapse and divergence.

A sampled softmax on a backbone whose embeddings lose their spread (all of a batch's embeddings
turning towards one direction) can train to chance while its loss looks merely high (see
``docs/stability.md``). The loop measures, at each log step, how spread out the global batch's
embeddings are and how the loss compares with its first logged value, writes both to
``metrics.jsonl``, and stops a run that has collapsed or diverged with a message saying what was
seen and what to try.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

COLLAPSED_RANK = 2.0  # effective rank of a batch's embeddings at or below which they collapsed
COLLAPSED_COSINE = 0.9  # mean pairwise cosine of a batch's embeddings above which they collapsed
COLLAPSED_FOR_STEPS = 10  # steps the embeddings stay collapsed before the run is stopped
DIVERGED_LOSS_RATIO = 1.5  # a window's loss over the first window's: diverged at or above


class TrainingCollapsed(RuntimeError):
    """The run collapsed or diverged and was stopped; checkpoints written before are kept."""


@torch.no_grad()
def embedding_spread(embeddings: torch.Tensor, group: dist.ProcessGroup | None) -> dict:
    """How spread out the global batch's embeddings are (this rank's [B_local, D]; exact over all
    ranks: one all_reduce SUM of D * D + D + 1 floats on ``group``).

    embedding_cosine: mean cosine between two different embeddings of the batch (0 for
        directions spread evenly, 1 when they all coincide);
    embedding_rank: effective rank, exp of the entropy of the eigenvalues of the embeddings'
        second-moment matrix (after normalisation), from 1 (one direction) to D.
    """
    unit = F.normalize(embeddings.detach().float(), dim=1)  # [B_local, D]
    dim = unit.shape[1]
    sums = torch.cat([(unit.t() @ unit).reshape(-1), unit.sum(0), unit.new_tensor([len(unit)])])
    if group is not None:
        dist.all_reduce(sums, group=group)
    second, total, count = sums[: dim * dim].view(dim, dim), sums[dim * dim : -1], float(sums[-1])
    cosine = (float(total @ total) - count) / max(count * (count - 1), 1.0)
    eigen = torch.linalg.eigvalsh(second.double()).clamp_min(0)
    shares = eigen / eigen.sum().clamp_min(1e-30)
    entropy = -float((shares * shares.clamp_min(1e-30).log()).sum())
    return {"embedding_cosine": cosine, "embedding_rank": math.exp(entropy)}


@dataclass
class HealthWatch:
    """Decides, at each log step, whether a run has collapsed or diverged.

    Nothing is judged during the learning-rate warm-up, where even a healthy run's loss may rise
    and its embeddings bunch up before they spread. After it, a run has *diverged* when a log
    window's mean loss is ``DIVERGED_LOSS_RATIO`` times the first window's or more, and has
    *collapsed* when its batch's embeddings have collapsed (effective rank <= ``COLLAPSED_RANK``,
    or a quarter of the embedding width if that is less, or mean pairwise cosine >=
    ``COLLAPSED_COSINE``) at every log step over ``COLLAPSED_FOR_STEPS`` steps or more. The loss
    alone does not tell a collapse: a sampled softmax's loss can keep falling while its
    embeddings stay collapsed and held-out accuracy stays at chance.
    """

    warmup_steps: int
    embedding_dim: int
    first_loss: float | None = None
    collapsed_since: int | None = None  # the first log step of the current collapse

    def check(self, step: int, loss: float, spread: dict) -> str | None:
        """``loss``: the mean loss of the window ending at ``step`` (steps done); ``spread``:
        ``embedding_spread`` of the window's last batch. Returns what went wrong, or None. Adds
        ``loss_vs_first`` to ``spread``."""
        if self.first_loss is None:
            self.first_loss = loss
        ratio = loss / self.first_loss if self.first_loss > 0 else 1.0
        spread["loss_vs_first"] = ratio
        if step <= self.warmup_steps:
            return None
        if ratio >= DIVERGED_LOSS_RATIO:
            return (
                f"the loss diverged: {loss:.3g} over the last steps, {ratio:.2f} times its first "
                f"logged value {self.first_loss:.3g}"
            )
        rank, cosine = spread["embedding_rank"], spread["embedding_cosine"]
        narrow = rank <= min(COLLAPSED_RANK, self.embedding_dim / 4)
        collapsed = narrow or cosine >= COLLAPSED_COSINE
        if not collapsed:
            self.collapsed_since = None
        elif self.collapsed_since is None:
            self.collapsed_since = step
        if collapsed and step - self.collapsed_since >= COLLAPSED_FOR_STEPS:
            return (
                f"the embeddings collapsed: a batch's embeddings have a mean pairwise cosine of "
                f"{cosine:.2f} and an effective rank of {rank:.1f} (loss "
                f"{loss:.3g}, first {self.first_loss:.3g})"
            )
        return None


def collapse_advice(step: int, what: str, run_dir) -> str:
    """The message of a stopped run: what was seen, what to try."""
    return (
        f"step {step}: {what}; stopped (checkpoints written before are kept; the indicators are "
        f"in {run_dir}/metrics.jsonl). Try: a lower optim.lr or a longer optim.warmup_steps; a "
        f"BatchNorm1d on your backbone's embedding (the built-in MLP has one); a larger "
        f"budget (head.knn.budget, head.random.rate), or head.sampler = 'full' to compare; "
        f"train.stop_on_collapse = false trains on regardless."
    )
