"""Backbones that misbehave on purpose; configs name them tests.integration.backbones:NAME."""

import os
import time

from torch import nn

from megaclass.models import MLP


class _Faulty(nn.Module):
    def __init__(self, inner, fault_at, fault):
        super().__init__()
        self.inner, self.calls, self.fault_at, self.fault = inner, 0, fault_at, fault

    def forward(self, x):
        self.calls += 1
        out = self.inner(x)
        if self.calls >= self.fault_at and self.training:
            return self.fault(out)
        return out


def nan_at_step_4(input_dim, embedding_dim):
    return _Faulty(MLP(input_dim, embedding_dim, 64, 1), 4, lambda out: out * float("nan"))


def rank1_dies_at_step_3(input_dim, embedding_dim):
    def die(out):
        if os.environ.get("RANK") == "1":
            os._exit(17)
        return out

    return _Faulty(MLP(input_dim, embedding_dim, 64, 1), 3, die)


def slow(input_dim, embedding_dim):
    """Half a second per step, so a test can interrupt a run in the middle."""

    def wait(out):
        time.sleep(0.5)
        return out

    return _Faulty(MLP(input_dim, embedding_dim, 64, 1), 1, wait)
