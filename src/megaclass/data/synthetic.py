"""The synthetic retail catalogue: many classes in families of near-identical products, long-
tailed frequencies, inputs that a backbone has to learn to read.

Class ``c`` belongs to family ``c // family_size``. Its latent point is the family's centre plus
a small offset of its own, normalised: members of a family have cosine ~0.9, so they are each
other's hard negatives. A sample's input is a fixed random nonlinear map of its class's latent
point plus Gaussian noise. Training classes are drawn with Zipf frequencies (exponent ``zipf``;
0 = uniform) and a fixed pseudo-random permutation, so frequent classes are scattered over the ids.

Everything is a pure function of (seed, stream, index): nothing is stored per class or per
sample, so memory does not grow with either (10^8 classes is fine), any rank can generate any
rows, and the held-out samples (their own streams) are disjoint from the training samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from megaclass.data import hashing

DEFAULT_NUM_CLASSES = 1_000_000  # the catalogue's classes when none are asked for (0)
_LATENT_DIM = 32
_HIDDEN_DIM = 128
_FAMILY_SPREAD = 0.35  # offset of a class from its family centre, relative to the centre
# Streams of the counter-based generator.
_FAMILY, _CLASS, _TRAIN_CLASS, _TRAIN_NOISE, _EVAL_CLASS, _EVAL_NOISE = range(6)


class SyntheticCatalog:
    """A deterministic, streamed classification data set. See the module docstring.

    num_classes: 0 takes ``DEFAULT_NUM_CLASSES``.
    """

    def __init__(
        self,
        num_classes: int,
        input_dim: int = 64,
        family_size: int = 8,
        zipf: float = 1.0,
        noise: float = 0.35,
        eval_samples: int = 10_000,
        seed: int = 0,
    ) -> None:
        if num_classes < 0:
            raise ValueError(
                f"num_classes must be >= 0 (0: {DEFAULT_NUM_CLASSES:,}), got {num_classes}"
            )
        if input_dim < 1 or family_size < 1 or eval_samples < 1:
            raise ValueError("input_dim, family_size and eval_samples must be >= 1")
        if zipf < 0 or noise < 0:
            raise ValueError(f"zipf and noise must be >= 0, got {zipf}, {noise}")
        self.num_classes = num_classes or DEFAULT_NUM_CLASSES
        self.input_dim = input_dim
        self.family_size = family_size
        self.zipf = zipf
        self.noise = noise
        self.eval_samples = eval_samples
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        self._map_in = torch.randn(_LATENT_DIM, _HIDDEN_DIM, generator=generator) * 2.0
        self._map_out = torch.randn(_HIDDEN_DIM, input_dim, generator=generator)
        self._map_out /= self._signal(torch.randn(4096, _LATENT_DIM, generator=generator)).std()
        self._permute_by = _coprime_multiplier(self.num_classes)

    def class_points(self, class_ids: torch.Tensor) -> torch.Tensor:
        """Unit latent points of classes: [n] -> [n, latent]."""
        families = class_ids // self.family_size
        centre = hashing.normal(hashing.key(self.seed, _FAMILY, families), _LATENT_DIM)
        offset = hashing.normal(hashing.key(self.seed, _CLASS, class_ids), _LATENT_DIM)
        return torch.nn.functional.normalize(centre + _FAMILY_SPREAD * offset, dim=1)

    def train_batch(
        self, step: int, batch_size: int, rows: slice = slice(None)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``rows`` of global training batch ``step``: inputs [n, input_dim], labels [n]."""
        index = torch.arange(step * batch_size, (step + 1) * batch_size)[rows]
        return self._samples(index, _TRAIN_CLASS, _TRAIN_NOISE)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The held-out samples (same class frequencies, samples never used in training)."""
        for start in range(0, self.eval_samples, batch_size):
            index = torch.arange(start, min(start + batch_size, self.eval_samples))
            yield self._samples(index, _EVAL_CLASS, _EVAL_NOISE)

    def _samples(self, index: torch.Tensor, class_stream: int, noise_stream: int):
        labels = self._draw_classes(hashing.uniform(hashing.key(self.seed, class_stream, index)))
        signal = self._signal(self.class_points(labels))
        noise = hashing.normal(hashing.key(self.seed, noise_stream, index), self.input_dim)
        return signal + self.noise * noise, labels

    def _signal(self, points: torch.Tensor) -> torch.Tensor:
        """The fixed nonlinear map from latent points to inputs: [n, latent] -> [n, input_dim]."""
        return torch.tanh(points @ self._map_in) @ self._map_out

    def _draw_classes(self, u: torch.Tensor) -> torch.Tensor:
        """Zipf-distributed class ids from uniforms u in (0, 1) (inverse of the continuous CDF)."""
        n, s = self.num_classes, self.zipf
        if s == 0:
            rank = torch.floor(u * n)
        elif s == 1:
            rank = torch.floor(torch.exp(u * math.log(n + 1))) - 1
        else:
            top = (n + 1) ** (1 - s) - 1
            rank = torch.floor((1 + u * top) ** (1 / (1 - s))) - 1
        rank = rank.clamp(0, n - 1).to(torch.int64)
        return (rank * self._permute_by + self.seed) % n


def _coprime_multiplier(n: int) -> int:
    """A multiplier a with gcd(a, n) = 1, so ``rank * a mod n`` permutes the class ids."""
    a = 2_654_435_761 % n or 1
    while math.gcd(a, n) != 1:
        a += 1
    return a
