"""row_topk: the same scores as torch.topk, at columns that hold them."""

import pytest
import torch

from megaclass.functional.topk import row_topk


@pytest.mark.parametrize("width", [37, 4096, 4100, 8192 + 5])
@pytest.mark.parametrize("k", [1, 5, 33])
def test_row_topk_equals_torch_topk(width, k):
    scores = torch.randn(64, width, generator=torch.Generator().manual_seed(width * k))
    values, columns = row_topk(scores, k)
    expected, _ = scores.topk(k, dim=1)
    assert torch.equal(values, expected)
    assert torch.equal(scores.gather(1, columns), values)
    assert (columns.sort(dim=1).values.diff(dim=1) > 0).all()  # distinct columns


def test_row_topk_with_ties_and_a_strided_view():
    buffer = torch.randint(0, 4, (32, 6000), generator=torch.Generator().manual_seed(0)).float()
    scores = buffer[:, :5000]  # a non-contiguous chunk of a larger buffer, many equal scores
    values, columns = row_topk(scores, 20)
    assert torch.equal(values, scores.topk(20, dim=1).values)
    assert torch.equal(scores.gather(1, columns), values)
    assert (columns.sort(dim=1).values.diff(dim=1) > 0).all()
