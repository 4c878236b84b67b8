"""A sampler written outside megaclass, through the public ``Sampler`` protocol only: the
batch's labels plus a fixed set of classes (every seventh), with per-class state (how often
each class was scored in training) that checkpoints must reshard."""

from __future__ import annotations

import torch

from megaclass.samplers import Sampler, Selection


class LabelsAndEverySeventh(Sampler):
    def bind(self, shard):
        super().bind(shard)
        start, stop = shard.class_range
        ids = torch.arange(start, stop)
        self.fixed = ids[ids % 7 == 0] - start  # local rows
        self.times_scored = torch.zeros(shard.num_local, dtype=torch.int64)
        self.trained: list[torch.Tensor] = []

    def select(self, labels, queries, weight, training):
        rows = torch.cat([labels[labels >= 0], self.fixed]).unique()
        if training:
            self.trained.append(rows)
        return Selection(rows)

    def refresh(self, weight):
        for rows in self.trained:
            self.times_scored[rows] += 1
        self.trained = []

    def state_dict(self):
        state = super().state_dict()
        state["class_rows"]["times_scored"] = self.times_scored
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.times_scored = state["class_rows"]["times_scored"].clone()
