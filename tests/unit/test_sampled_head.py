"""Sampled heads (row-sparse gradients) and SparseSGD against their dense twins."""

import math

import pytest
import torch

import megaclass
from megaclass import margins, samplers
from megaclass.optim import SparseSGD, sparse_sgd
from tests.reference import ALL_MARGINS, DIM, NUM_CLASSES, reference_loss
from tests.reference import sampled_problem as _problem

# torch.optim.SGD's defaults (SparseSGD's are the trainer's: momentum, decay, row norm)
PLAIN_SGD = {"momentum": 0.0, "weight_decay": 0.0, "row_norm": 0.0}


def _step(margin, sampler, w, x, y, optimizer, drawn_rows="one_step"):
    head = megaclass.ClassifierHead(
        NUM_CLASSES, DIM, margin=margin, sampler=sampler, chunk_size=100, drawn_rows=drawn_rows
    )
    with torch.no_grad():
        head.weight.copy_(w)
    x = x.clone().requires_grad_()
    out = head(x, y)
    out.loss.backward()
    grad = head.weight.grad
    dense_grad = grad.to_dense() if grad.is_sparse else grad
    optimizer(head).step()
    return out, x.grad, dense_grad, head.weight.detach(), grad


@pytest.mark.parametrize("margin", ALL_MARGINS, ids=repr)
def test_random_rate_1_equals_full_including_the_update(margin):
    x, y, w = _problem()
    full = _step(
        margin, samplers.Full(), w, x, y, lambda h: torch.optim.SGD(h.parameters(), lr=0.5)
    )
    rand = _step(margin, samplers.Random(1.0), w, x, y, lambda h: SparseSGD(h, lr=0.5, **PLAIN_SGD))
    assert rand[4].is_sparse and rand[0].num_active == NUM_CLASSES
    assert torch.allclose(rand[0].loss, full[0].loss, rtol=1e-6)
    for a, b in zip(rand[1:4], full[1:4], strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("drawn_rows", ["one_step", "corrected"])
@pytest.mark.parametrize("correction", [True, False], ids=["corrected", "partial-fc"])
def test_random_sampling_scores_labels_plus_random_classes_with_sparse_gradients(
    correction, drawn_rows
):
    """The loss and gradients are the reference softmax over the active classes, the drawn
    ones' logits raised by log(classes not in the batch / classes drawn) when corrected; with
    ``drawn_rows="one_step"`` a drawn row's own gradient is then taken at its draw rate (classes
    drawn / classes not in the batch), one step's worth of the push the full softmax would give
    it; with ``"corrected"`` it is the corrected softmax's."""
    x, y, w = _problem()
    x = x.double().requires_grad_()
    margin = margins.CosFace(scale=16.0, margin=0.2)
    sampler = samplers.Random(0.1, logit_correction=correction)
    out, x_grad, dense_grad, _, grad = _step(
        margin, sampler, w, x.detach(), y, lambda h: SparseSGD(h, lr=0.1, **PLAIN_SGD), drawn_rows
    )
    active = grad.coalesce().indices()[0]
    batch_classes = y[y >= 0].unique()
    assert out.num_active == len(active) == len(batch_classes) + int(0.1 * NUM_CLASSES)
    assert set(batch_classes.tolist()) <= set(active.tolist())
    untouched = torch.ones(NUM_CLASSES, dtype=torch.bool)
    untouched[active] = False
    assert not dense_grad[untouched].any()
    drawn = ~torch.isin(active, batch_classes)
    offsets = torch.zeros(len(active), dtype=torch.float64)
    if correction:
        offsets[drawn] = math.log((NUM_CLASSES - len(batch_classes)) / int(drawn.sum()))
    remap = torch.full((NUM_CLASSES,), -100)
    remap[active] = torch.arange(len(active))
    labels = torch.where(y >= 0, remap[y.clamp(min=0)], y)
    active_w = w[active].double().requires_grad_()
    want = reference_loss(x, active_w, labels, margin, offsets=offsets)
    want.backward()
    assert torch.allclose(out.loss.double(), want, rtol=1e-5)
    assert torch.allclose(x_grad.double(), x.grad, rtol=1e-4, atol=1e-6)
    if drawn_rows == "one_step":
        want_grad = active_w.grad * torch.exp(-offsets)[:, None]
    else:
        want_grad = active_w.grad
    assert torch.allclose(dense_grad[active].double(), want_grad, rtol=1e-4, atol=1e-6)


def test_random_draws_its_rate_besides_the_labels_however_many_they_are():
    """Labels covering more than the rate leave the draw intact (Partial FC would score the
    labels alone)."""
    head = megaclass.ClassifierHead(1000, DIM, sampler=samplers.Random(0.01))
    chosen = head.sampler.select(torch.arange(50), torch.zeros(50, DIM), head.weight, True)
    assert len(chosen.rows) == 60 and torch.isin(torch.arange(50), chosen.rows).all()
    drawn = chosen.logit_offsets > 0
    assert int(drawn.sum()) == 10 and not torch.isin(chosen.rows[drawn], torch.arange(50)).any()
    every = head.sampler.select(torch.arange(995), torch.zeros(995, DIM), head.weight, True)
    assert torch.equal(every.rows, torch.arange(1000))  # capped at the shard
    with pytest.raises(ValueError, match="rate"):
        samplers.Random(0.0)


@pytest.mark.parametrize(
    "settings",
    [
        {"momentum": 0.9, "weight_decay": 5e-3},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
        {"momentum": 0.9},
        {"momentum": 0.9, "nesterov": True},
        {"momentum": 0.0, "weight_decay": 1e-2},
    ],
    ids=str,
)
def test_sparse_sgd_equals_dense_sgd_with_zero_gradients_elsewhere(settings, monkeypatch):
    """Each step touches other rows under a decaying learning rate; a step writes only the rows
    it touches and its slice of rows brought up to date, and after catch_up() every row is where
    torch.optim.SGD puts it with zeros for untouched rows. Rows lag at most MAX_LAG steps (made
    small here so that the run goes past it twice)."""
    monkeypatch.setattr(sparse_sgd, "MAX_LAG", 32)
    MAX_LAG = sparse_sgd.MAX_LAG
    g = torch.Generator().manual_seed(0)
    num_rows, steps = 300, 2 * MAX_LAG + 20
    weight = torch.randn(num_rows, 4, generator=g)
    sparse_param = torch.nn.Parameter(weight.clone())
    dense_param = torch.nn.Parameter(weight.clone())
    sparse_opt = SparseSGD([sparse_param], lr=0.1, **{**PLAIN_SGD, **settings})
    dense_opt = torch.optim.SGD([dense_param], lr=0.1, **settings)
    for step in range(steps):
        for opt in (sparse_opt, dense_opt):
            opt.param_groups[0]["lr"] = 0.1 * (0.5 + 0.5 * math.cos(math.pi * step / steps))
        rows = torch.randperm(num_rows // 2, generator=g)[:6].sort().values  # half never touched
        values = torch.randn(6, 4, generator=g)
        sparse_param.grad = torch.sparse_coo_tensor(
            rows[None], values, (num_rows, 4), check_invariants=True
        )
        dense_param.grad = torch.zeros(num_rows, 4).index_copy_(0, rows, values)
        before = sparse_param.detach().clone()
        sparse_opt.step()
        dense_opt.step()
        assert torch.allclose(sparse_param[rows], dense_param[rows], rtol=1e-5, atol=1e-6)
        if settings["momentum"] or settings.get("weight_decay"):
            part = (step + 1) % MAX_LAG
            rows = torch.cat(
                [rows, torch.arange(part * num_rows // MAX_LAG, (part + 1) * num_rows // MAX_LAG)]
            )
            state = sparse_opt.state[sparse_param]
            assert int((state["step"] - state["last_step"]).max()) <= MAX_LAG
        written = torch.zeros(num_rows, dtype=torch.bool).index_fill_(0, rows, True)
        assert torch.equal(sparse_param[~written], before[~written])
    sparse_opt.catch_up()
    assert torch.allclose(sparse_param, dense_param, rtol=1e-5, atol=1e-6)


def test_sparse_sgd_row_norm_keeps_the_rows_it_writes_at_that_norm():
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(30, 4, generator=g)
    rows = torch.tensor([2, 11, 25])
    sparse_param = torch.nn.Parameter(weight.clone())
    twin = torch.nn.Parameter(weight[rows].clone())
    sparse_opt = SparseSGD([sparse_param], lr=0.1, momentum=0.9, weight_decay=0.0, row_norm=0.3)
    twin_opt = torch.optim.SGD([twin], lr=0.1, momentum=0.9)
    for _ in range(4):
        values = torch.randn(3, 4, generator=g)
        sparse_param.grad = torch.sparse_coo_tensor(
            rows[None], values, (30, 4), check_invariants=True
        )
        twin.grad = values.clone()
        sparse_opt.step()
        twin_opt.step()
        with torch.no_grad():
            twin.mul_(0.3 / twin.norm(dim=1, keepdim=True))
    assert torch.allclose(sparse_param[rows], twin, rtol=1e-5, atol=1e-7)
    untouched = sparse_opt.state[sparse_param]["last_step"] == 0  # nor brought up to date
    assert int(untouched.sum()) >= 30 - 3 - 4 * math.ceil(30 / sparse_sgd.MAX_LAG)
    assert torch.equal(sparse_param[untouched], weight[untouched])
    sparse_opt.catch_up()  # brings every row up to date, at the norm
    assert torch.allclose(sparse_param.norm(dim=1), torch.full((30,), 0.3))


def test_sparse_sgd_with_dense_gradients_is_torch_sgd():
    g = torch.Generator().manual_seed(1)
    a = torch.nn.Parameter(torch.randn(6, 3, generator=g))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a = SparseSGD([a], lr=0.05, momentum=0.9, weight_decay=1e-3)
    opt_b = torch.optim.SGD([b], lr=0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        grad = torch.randn(6, 3, generator=g)
        a.grad, b.grad = grad.clone(), grad.clone()
        opt_a.step()
        opt_b.step()
    assert torch.allclose(a, b, rtol=1e-6)
    state = opt_a.state_dict()
    fresh = SparseSGD([torch.nn.Parameter(a.detach().clone())], lr=0.05, momentum=0.9)
    fresh.load_state_dict(state)
    assert torch.equal(
        fresh.state_dict()["state"][0]["momentum_buffer"],
        opt_b.state_dict()["state"][0]["momentum_buffer"],
    )


def test_sparse_sgd_rejects_bad_settings():
    p = [torch.nn.Parameter(torch.zeros(2))]
    for kwargs in (
        {"lr": 0},
        {"lr": 0.1, "momentum": 1.0},
        {"lr": 0.1, "momentum": 0.0, "nesterov": True},
        {"lr": 0.1, "weight_decay": -1},
        {"lr": 0.1, "row_norm": -1.0},
    ):
        with pytest.raises(ValueError):
            SparseSGD(p, **kwargs)


def test_sampled_head_gradient_is_never_dense():
    head = megaclass.ClassifierHead(100_000, 8, sampler=samplers.Random(0.001))
    head(torch.randn(16, 8), torch.arange(16) * 6000).loss.backward()  # 16 distinct labels
    assert head.weight.grad.is_sparse and head.weight.grad._nnz() == 16 + 100


def test_two_forward_passes_before_one_backward_keep_their_own_logits():
    """The kept logits come from reused scratch memory: a second forward pass before the first
    one's backward must not overwrite them (gradient accumulation over micro-batches)."""
    x, y, w = _problem()
    margin = margins.CosFace(scale=16.0, margin=0.2)
    head = megaclass.ClassifierHead(NUM_CLASSES, DIM, margin=margin, sampler=samplers.Random(1.0))
    with torch.no_grad():
        head.weight.copy_(w)
    halves = [(x[:15].clone().requires_grad_(), y[:15]), (x[15:].clone().requires_grad_(), y[15:])]
    separate = []
    for xs, ys in halves:
        head(xs, ys).loss.backward()
        separate.append((xs.grad.clone(), head.weight.grad.to_dense().clone()))
        xs.grad, head.weight.grad = None, None
    losses = [head(xs, ys).loss for xs, ys in halves]  # both forwards, then one backward
    sum(losses).backward()
    for (xs, _), (x_grad, _) in zip(halves, separate, strict=True):
        assert torch.allclose(xs.grad, x_grad, rtol=1e-5, atol=1e-7)
    expected = separate[0][1] + separate[1][1]
    assert torch.allclose(head.weight.grad.to_dense(), expected, rtol=1e-5, atol=1e-7)


def test_a_second_backward_through_kept_logits_is_refused():
    x, y, _ = _problem()
    head = megaclass.ClassifierHead(NUM_CLASSES, DIM, sampler=samplers.Random(0.5))
    loss = head(x, y).loss
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()
