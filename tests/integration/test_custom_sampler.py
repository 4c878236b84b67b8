"""A sampler from outside the package plugs into the head, the trainer and its checkpoints."""

import torch
import torch.nn.functional as F

import megaclass
from tests.integration.custom_sampler import LabelsAndEverySeventh
from tests.integration.helpers import (
    BATCH_INDEPENDENT,
    TINY,
    resume_two_ranks_on_three,
    set_args,
)
from tests.integration.helpers import megaclass as cli

CUSTOM = "head.sampler='tests.integration.custom_sampler:LabelsAndEverySeventh'"


def test_the_head_scores_what_the_sampler_selects():
    g = torch.Generator().manual_seed(0)
    head = megaclass.ClassifierHead(50, 8, sampler=LabelsAndEverySeventh())
    x, y = torch.randn(6, 8, generator=g), torch.tensor([3, 3, 11, 20, 44, 48])
    out = head(x, y)
    out.loss.backward()
    active = torch.tensor(sorted({3, 11, 20, 44, 48} | set(range(0, 50, 7))))
    assert out.num_active == len(active)
    assert torch.equal(head.weight.grad.coalesce().indices()[0], active)
    w = head.weight.detach()[active].clone().requires_grad_()
    want = F.cross_entropy(x @ w.t(), torch.searchsorted(active, y))
    want.backward()
    assert torch.allclose(out.loss, want, rtol=1e-5)
    assert torch.allclose(head.weight.grad.to_dense()[active], w.grad, rtol=1e-5, atol=1e-7)


def test_the_command_line_trains_with_it(tmp_path):
    result = cli("train", *set_args([*TINY, CUSTOM, "train.steps=3"]), "--run-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "summary.json").is_file()


def _times_scored(checkpoint) -> torch.Tensor:
    """The sampler's per-class rows of a checkpoint, over all its shards, in class order."""
    shards = [torch.load(p, weights_only=True) for p in sorted(checkpoint.glob("head-*.pt"))]
    return torch.cat([shard["rows"]["sampler.times_scored"] for shard in shards])


def test_its_checkpoints_of_two_ranks_resume_on_three(tmp_path):
    two, three = resume_two_ranks_on_three(tmp_path, [*TINY, CUSTOM, BATCH_INDEPENDENT])
    final = "checkpoints/step-00000010"
    counted = _times_scored(two / final)
    assert int(counted[::7].min()) == 9  # every seventh class, each of the 9 refreshed steps
    assert torch.equal(_times_scored(three / final), counted)
