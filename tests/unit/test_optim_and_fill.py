"""RowAdaGrad against a row-by-row reference, and the uniform fill of active sets."""

import pytest
import torch

from megaclass.optim import RowAdaGrad, SparseSGD
from megaclass.samplers.uniform import fill_uniform


def _reference_row_adagrad(weight, sum_sq, row, grad, lr, weight_decay, eps):
    """One row, written out plainly in float64."""
    g = grad.double() + weight_decay * weight[row].double()
    sum_sq[row] += float((g**2).mean())
    weight[row] = (weight[row].double() - lr * g / (sum_sq[row] ** 0.5 + eps)).float()


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_row_adagrad_equals_the_reference_and_leaves_other_rows_alone(weight_decay):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 5, generator=g)
    param = torch.nn.Parameter(weight.clone())
    optimizer = RowAdaGrad([param], lr=0.3, weight_decay=weight_decay, eps=1e-8)
    want, sum_sq = weight.clone(), [0.0] * 40
    touched = set()
    for rows in ([1, 4, 9], [4, 30], [0, 1, 2, 3]):
        values = torch.randn(len(rows), 5, generator=g)
        param.grad = torch.sparse_coo_tensor(
            torch.tensor([rows]), values, (40, 5), check_invariants=True
        )
        optimizer.step()
        for row, value in zip(rows, values, strict=True):
            _reference_row_adagrad(want, sum_sq, row, value, 0.3, weight_decay, 1e-8)
        touched |= set(rows)
    assert torch.allclose(param.detach(), want, rtol=1e-5, atol=1e-6)
    assert torch.allclose(optimizer.state[param]["sum_sq"], torch.tensor(sum_sq).float())
    untouched = [r for r in range(40) if r not in touched]
    assert torch.equal(param.detach()[untouched], weight[untouched])  # bit for bit


def test_row_adagrad_dense_gradient_touches_every_row_and_state_round_trips():
    param = torch.nn.Parameter(torch.ones(3, 2))
    optimizer = RowAdaGrad([param], lr=0.1)
    param.grad = torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]])
    optimizer.step()
    # |g| is constant per row, so the first step moves every non-zero entry by lr.
    assert torch.allclose(param.detach(), torch.tensor([[0.9, 0.9], [0.9, 0.9], [1.0, 1.0]]))
    fresh = RowAdaGrad([torch.nn.Parameter(torch.ones(3, 2))], lr=0.1)
    fresh.load_state_dict(optimizer.state_dict())
    assert torch.equal(fresh.state_dict()["state"][0]["sum_sq"], torch.tensor([1.0, 4.0, 0.0]))
    with pytest.raises(ValueError, match="lr"):
        RowAdaGrad([param], lr=0.0)


@pytest.mark.parametrize("num_local, wanted", [(10_000, 300), (1000, 600), (50, 50), (50, 80)])
def test_fill_uniform_keeps_the_chosen_rows_and_draws_distinct_others(num_local, wanted):
    chosen = torch.tensor([0, 7, 49])
    rows = fill_uniform(chosen, wanted, num_local, torch.Generator().manual_seed(0))
    assert len(rows) == min(wanted, num_local) == len(rows.unique())
    assert torch.equal(rows, rows.sort().values)
    assert set(chosen.tolist()) <= set(rows.tolist())
    assert int(rows.min()) >= 0 and int(rows.max()) < num_local


def test_fill_uniform_draws_every_other_row_equally_often():
    generator = torch.Generator().manual_seed(1)
    counts = torch.zeros(100)
    trials = 4000
    for _ in range(trials):
        counts[fill_uniform(torch.tensor([5]), 6, 100, generator)] += 1
    others = torch.cat([counts[:5], counts[6:]])
    expected = trials * 5 / 99  # ~202 per row
    assert counts[5] == trials
    assert float((others - expected).abs().max()) < 5 * expected**0.5


@pytest.mark.parametrize(
    "make", [lambda p: RowAdaGrad([p], lr=0.1), lambda p: SparseSGD([p], lr=0.1)]
)
def test_uncoalesced_gradients_with_repeated_rows_are_summed(make):
    values = torch.arange(12.0).view(3, 4)
    rows = torch.tensor([[3, 1, 3]])
    a, b = torch.nn.Parameter(torch.ones(5, 4)), torch.nn.Parameter(torch.ones(5, 4))
    a.grad = torch.sparse_coo_tensor(rows, values, (5, 4), check_invariants=True)
    b.grad = a.grad.coalesce()
    make(a).step()
    make(b).step()
    assert torch.equal(a.detach(), b.detach()) and not torch.equal(a.detach(), torch.ones(5, 4))
