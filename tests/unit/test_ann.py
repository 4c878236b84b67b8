"""The ANN sampler in the head: grouped softmax against a masked reference, Full equivalence."""

import math

import pytest
import torch
import torch.nn.functional as F

import megaclass
from megaclass import margins, samplers
from megaclass.optim import SparseSGD
from tests.reference import ALL_MARGINS, BATCH, DIM, NUM_CLASSES, reference_loss
from tests.reference import sampled_problem as _problem


def _recording_head(margin, sampler, w):
    """A head whose selections are recorded in ``head.selections``, its sampler refreshed."""
    head = megaclass.ClassifierHead(
        NUM_CLASSES, DIM, margin=margin, sampler=sampler, chunk_size=100
    )
    with torch.no_grad():
        head.weight.copy_(w)
    head.refresh_sampler()
    head.selections = []
    select = head.sampler.select

    def recorded(*args):
        head.selections.append(select(*args))
        return head.selections[-1]

    head.sampler.select = recorded
    return head


@pytest.mark.parametrize("margin", ALL_MARGINS, ids=repr)
@pytest.mark.parametrize("group_size", [1, 8, 64])
@pytest.mark.parametrize(
    "everything",
    [
        {"k": NUM_CLASSES, "nprobe": 99},
        {"k": NUM_CLASSES, "search": "exact"},
        {"k": 3, "nprobe": 1, "uniform": 1.0},
    ],
    ids=["retrieved", "retrieved-exactly", "drawn"],
)
def test_ann_scoring_every_class_equals_full(margin, group_size, everything):
    x, y, w = _problem()
    results = []
    for sampler in (samplers.Full(), samplers.ANN(group_size=group_size, **everything)):
        head = _recording_head(margin, sampler, w)
        xr = x.clone().requires_grad_()
        out = head(xr, y)
        out.loss.backward()
        grad = head.weight.grad
        results.append((out.loss, xr.grad, grad.to_dense() if grad.is_sparse else grad))
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("margin", [margins.CosFace(16.0, 0.2), margins.Softmax()], ids=repr)
@pytest.mark.parametrize("uniform", [0.0, 0.1])
def test_each_group_is_scored_over_its_own_candidates_and_labels(margin, uniform):
    """The loss and gradients are the float64 softmax of each sample over its group's classes
    (every other logit masked out, the uniform draw's logits corrected); labels are in their
    group; gradients touch active rows only."""
    x, y, w = _problem()
    sampler = samplers.ANN(k=40, group_size=6, nprobe=2, num_bits=64, uniform=uniform)
    head = _recording_head(margin, sampler, w)
    xr = x.clone().requires_grad_()
    out = head(xr, y)
    out.loss.backward()
    SparseSGD(head, lr=0.1).step()
    (selection,) = head.selections
    groups = selection.groups
    assert groups is not None and len(groups.members) == 5  # 29 samples in groups of 6
    assert torch.equal(torch.sort(torch.cat(groups.members)).values, torch.arange(BATCH))
    mask = torch.full((BATCH, NUM_CLASSES), float("-inf"), dtype=torch.float64)
    offsets = groups.logit_offsets or (None,) * len(groups.members)
    draws = []
    for members, columns, group_offsets in zip(
        groups.members, groups.columns, offsets, strict=True
    ):
        classes = selection.rows[columns]
        labels = y[members]
        assert set(labels[labels >= 0].tolist()) <= set(classes.tolist())
        assert len(classes) < NUM_CLASSES / 3  # retrieval, not everything
        if group_offsets is None:
            group_offsets = torch.zeros(len(classes))
        drawn = group_offsets > 0  # drawn, not among the group's candidates and labels
        assert not drawn[torch.isin(classes, labels)].any()
        unchosen = NUM_CLASSES - int((~drawn).sum())
        assert torch.allclose(group_offsets[drawn], torch.tensor(math.log(unchosen / drawn.sum())))
        draws.append(classes[drawn])
        mask[members[:, None], classes[None]] = group_offsets.double()
    drawn = torch.cat(draws).unique()  # every group scores the whole draw
    assert len(drawn) <= round(uniform * NUM_CLASSES) and (len(drawn) > 0) == (uniform > 0)
    for columns in groups.columns:
        assert torch.isin(drawn, selection.rows[columns]).all()
    assert out.num_active == len(selection.rows)
    grad = head.weight.grad.coalesce()
    assert torch.equal(grad.indices()[0], selection.rows)
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    want = reference_loss(x64, w64, y, margin, offsets=mask)
    want.backward()
    assert torch.allclose(out.loss.double(), want, rtol=1e-5)
    assert torch.allclose(xr.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(grad.to_dense().double(), w64.grad, rtol=1e-4, atol=1e-6)


def test_exact_search_scores_each_sample_over_its_own_best_classes():
    """group_size=1, search="exact": each sample's softmax runs over its k best classes by
    cosine (brute force) and its label, nothing else; no index is built."""
    x, y, w = _problem()
    head = _recording_head(
        margins.CosFace(16.0, 0.2), samplers.ANN(k=5, group_size=1, search="exact"), w
    )
    head(x, y).loss.backward()
    (selection,) = head.selections
    best = (F.normalize(x, dim=1) @ F.normalize(w, dim=1).t()).topk(5, dim=1).indices
    for members, columns in zip(selection.groups.members, selection.groups.columns, strict=True):
        (sample,) = members.tolist()
        want = set(best[sample].tolist()) | ({int(y[sample])} if y[sample] >= 0 else set())
        assert set(selection.rows[columns].tolist()) == want
    assert head.sampler.index is None and head.sampler.rebuild_due() is None


def test_the_index_follows_the_optimizer_and_is_rebuilt_on_schedule():
    x, y, w = _problem()
    head = _recording_head(margins.CosFace(16.0, 0.2), samplers.ANN(k=30, refresh_every=3), w)
    optimizer = SparseSGD(head, lr=0.5)
    indexes = []
    for step in range(4):
        if step:
            head.refresh_sampler()
        head(x, y).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        indexes.append(head.sampler.index)
    assert indexes[0] is indexes[1] is indexes[2] and indexes[3] is not indexes[2]
    # Between rebuilds, the rows a step updated are re-encoded by the next refresh.
    moved = head.selections[3].rows
    assert not torch.equal(indexes[3].encode(head.weight.detach()[moved]), indexes[3].codes[moved])
    head.refresh_sampler()
    assert head.sampler.index is indexes[3]
    assert torch.equal(indexes[3].codes[moved], indexes[3].encode(head.weight.detach()[moved]))


def test_ann_settings_are_checked():
    with pytest.raises(ValueError, match="group_size"):
        samplers.ANN(group_size=0)
    with pytest.raises(ValueError, match="num_bits"):
        samplers.ANN(num_bits=96)
    with pytest.raises(ValueError, match="rotation"):
        samplers.ANN(rotation="pq")
    with pytest.raises(ValueError, match="uniform"):
        samplers.ANN(uniform=1.5)
    with pytest.raises(ValueError, match="search"):
        samplers.ANN(search="hnsw")
