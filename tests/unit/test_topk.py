"""row_topk and merge_row_topk: the same scores as torch.topk, at columns that hold them."""

import pytest
import torch

from megaclass.functional.topk import merge_row_topk, row_topk


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


@pytest.mark.parametrize("chunk", [7, 100, 1000, 4096])
@pytest.mark.parametrize("k", [1, 5, 96])
def test_merge_row_topk_over_chunks_equals_torch_topk(chunk, k):
    scores = torch.randn(48, 9000, generator=torch.Generator().manual_seed(chunk + k))
    scores[:5] *= torch.linspace(0, 3, 9000)  # rows whose best columns come late
    values = torch.empty(48, 0)
    columns = torch.empty(48, 0, dtype=torch.int64)
    for first in range(0, scores.shape[1], chunk):
        block = scores[:, first : first + chunk]
        values, columns = merge_row_topk(values, columns, block, first, k)
    assert torch.equal(values, scores.topk(k, dim=1).values)
    assert torch.equal(scores.gather(1, columns), values)
    assert (columns.sort(dim=1).values.diff(dim=1) > 0).all()


def test_merge_row_topk_with_ties():
    scores = torch.randint(0, 3, (16, 5000), generator=torch.Generator().manual_seed(1)).float()
    values, columns = torch.empty(16, 0), torch.empty(16, 0, dtype=torch.int64)
    for first in range(0, 5000, 640):
        values, columns = merge_row_topk(values, columns, scores[:, first : first + 640], first, 40)
    assert torch.equal(values, scores.topk(40, dim=1).values)
    assert torch.equal(scores.gather(1, columns), values)
    assert (columns.sort(dim=1).values.diff(dim=1) > 0).all()
