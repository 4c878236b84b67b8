"""The class-sharded softmax with logit offsets (the sampled-softmax correction), kept and
streamed in chunks, against the dense reference."""

import pytest
import torch
import torch.nn.functional as F

from megaclass import margins
from megaclass.functional import shard_logsumexp, shard_targets
from megaclass.heads.sharded_cross_entropy import ShardSpec, sharded_cross_entropy
from tests.reference import ALL_MARGINS, reference_loss

NUM_CLASSES, DIM, BATCH = 301, 16, 23


def _problem():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(BATCH, DIM, generator=g, dtype=torch.float64)
    y = torch.randint(0, NUM_CLASSES, (BATCH,), generator=g)
    y[4] = -100
    y[7] = y[2]  # two rows with one target
    w = torch.randn(NUM_CLASSES, DIM, generator=g, dtype=torch.float64)
    offsets = torch.rand(NUM_CLASSES, generator=g, dtype=torch.float64) * 4
    offsets[::3] = 0  # scored outright
    return x, y, w, offsets


def _spec(margin, chunk_size, offsets, matmul_dtype=torch.float32):
    return ShardSpec(
        class_start=0,
        margin=margin,
        group=None,
        ignore_index=-100,
        chunk_size=chunk_size,
        matmul_dtype=matmul_dtype,
        active_rows=torch.arange(NUM_CLASSES),
        logit_offsets=offsets.float(),
    )


def _queries(x, margin):
    """What the head passes for embeddings x: ``scale * x / |x|`` for cosine margins."""
    return F.normalize(x, dim=1) * margin.scale if margin.normalize else x


def _loss_and_grads(loss_fn, x, w):
    """(loss, grad x, grad w) in float64 of loss_fn(x, w) with x and w leaves as given."""
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    loss = loss_fn(x, w)
    loss.backward()
    grad_w = w.grad.to_dense() if w.grad.is_sparse else w.grad
    return loss.detach().double(), x.grad.double(), grad_w.double()


def _against_reference(x, y, w, offsets, margin, spec):
    """(loss, grad x, grad w) of the sharded function (fp32 inputs) and of the float64 reference."""
    got = _loss_and_grads(
        lambda x, w: sharded_cross_entropy(_queries(x, margin), w, y, spec), x.float(), w.float()
    )
    want = _loss_and_grads(lambda x, w: reference_loss(x, w, y, margin, offsets=offsets), x, w)
    return got, want


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("chunk_size", [None, 7, 100])
@pytest.mark.parametrize("margin", ALL_MARGINS, ids=lambda m: repr(m))
def test_offsets_equal_the_reference_kept_and_chunked(margin, chunk_size):
    x, y, w, offsets = _problem()
    spec = _spec(margin, chunk_size, offsets)
    got, want = _against_reference(x, y, w, offsets, margin, spec)
    for name, a, b in zip(("loss", "grad queries", "grad weight"), got, want, strict=True):
        assert _rel(a, b) <= 1e-5, name


@pytest.mark.parametrize("chunk_size", [None, 64])
@pytest.mark.parametrize("scale", [16.0, 100.0], ids=["unshifted", "shifted"])
def test_offsets_with_bf16_matmuls_stay_close_to_the_reference(chunk_size, scale):
    x, y, w, offsets = _problem()
    margin = margins.CosFace(scale=scale, margin=0.35)
    spec = _spec(margin, chunk_size, offsets, torch.bfloat16)
    got, want = _against_reference(x, y, w, offsets, margin, spec)
    assert _rel(got[0], want[0]) < 1e-2
    assert _rel(got[1], want[1]) < 3e-2
    assert _rel(got[2], want[2]) < 3e-2


@pytest.mark.parametrize("chunk_size", [None, 7])
@pytest.mark.parametrize(
    "margin, magnitude, unshifted",
    [
        (margins.Softmax(), 1.0, True),
        (margins.Softmax(), 4.0, False),  # |q| |w| > 100: exp2 could overflow unshifted
        (margins.CosFace(scale=16.0, margin=0.35), 1.0, True),
        (margins.CosFace(scale=100.0, margin=0.35), 1.0, False),
    ],
)
def test_the_row_maximum_is_subtracted_exactly_when_exp2_could_leave_the_fp32_range(
    margin, magnitude, unshifted, chunk_size
):
    x, y, w, offsets = _problem()
    x = x * magnitude
    targets = shard_targets(_queries(x, margin).float(), w.float(), y.clamp_min(-1), margin)
    statistics = shard_logsumexp(
        _queries(x, margin).float(),
        w.float(),
        targets,
        normalize=margin.normalize,
        chunk_size=chunk_size,
        matmul_dtype=torch.float32,
        offsets=offsets.float(),
    )
    assert statistics.unshifted == unshifted
    assert bool((statistics.row_max == 0).all()) == unshifted
    spec = _spec(margin, chunk_size, offsets)
    got, want = _against_reference(x, y, w, offsets, margin, spec)
    for name, a, b in zip(("loss", "grad queries", "grad weight"), got, want, strict=True):
        assert _rel(a, b) <= 1e-5, name
