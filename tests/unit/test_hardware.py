"""``matmul_dtype = "auto"``: bf16 products only where the hardware computes them natively."""

import torch

from megaclass import hardware


def test_auto_products_are_bf16_only_where_the_hardware_has_them(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert hardware.matmul_dtype("fp32", cuda) == torch.float32
    assert hardware.matmul_dtype("bf16", cpu) == torch.bfloat16
    assert hardware.matmul_dtype("auto", cuda) == torch.bfloat16
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(hardware, "_cpu_has_native_bf16", lambda native=native: native)
        assert hardware.matmul_dtype("auto", cpu) == expected
