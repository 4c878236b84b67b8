"""The head on CUDA equals the head on CPU (skipped without a GPU)."""

import pytest
import torch

import megaclass
from megaclass import margins

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("margin", [margins.Softmax(), margins.ArcFace(scale=16.0)], ids=repr)
def test_cuda_head_equals_cpu_head(margin):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=g)
    y = torch.randint(0, 5001, (64,), generator=g)
    results = []
    for device in ("cpu", "cuda"):
        head = megaclass.ClassifierHead(5001, 32, margin=margin, chunk_size=1000, device=device)
        xd = x.to(device).requires_grad_()
        loss = head(xd, y.to(device)).loss
        loss.backward()
        results.append([t.detach().cpu() for t in (loss, xd.grad, head.weight.grad)])
    for cpu, cuda in zip(*results, strict=True):
        assert torch.allclose(cpu, cuda, rtol=1e-4, atol=1e-6)
