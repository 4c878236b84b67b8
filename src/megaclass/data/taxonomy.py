"""A second, independent generator of classification data, written as feature files.

The synthetic catalogue (``data.synthetic``) streams samples from a counter-based generator with
families of a fixed size, an isotropic spread and Zipf frequencies over an infinite stream. This
generator is built differently on every axis, so that a method tuned on one is checked on data it
was not tuned on:

- **Hierarchy**: departments -> families -> classes. Department centres are Gaussian; a family
  sits around its department; a family's classes spread *anisotropically* around the family
  centre (a random per-family scale on each latent axis, so some directions separate a family's
  classes and others do not). Families have random sizes (geometric, mean ``family_size``).
- **Input map**: random Fourier features of the latent point (``cos(z W + b)``), a different
  nonlinearity from the catalogue's ``tanh`` network, plus per-sample latent jitter and input
  noise.
- **Counts**: a finite training set whose class counts follow Zipf frequencies over a random
  permutation of the classes, with at least ``min_count`` samples per class; the held-out set is
  one sample of each of ``eval_classes`` classes drawn uniformly, so rare classes dominate it.

``write_taxonomy_features`` writes ``train_x.npy``, ``train_y.npy``, ``eval_x.npy``,
``eval_y.npy`` (``data.source = "features"`` reads them) and ``taxonomy.json`` (the parameters
and the count statistics). Everything is a function of the seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

_LATENT_DIM = 24
_FAMILY_RADIUS = 0.55  # family centre around its department centre, relative to its norm
_DEPARTMENT_SIZE = 250  # classes per department, on average
_CHUNK = 1 << 16  # samples generated at once


@dataclass(frozen=True)
class TaxonomySpec:
    """What ``write_taxonomy_features`` generates (see the module docstring).

    num_classes: classes; num_samples: training samples (at least ``min_count * num_classes``);
    zipf: exponent of the class frequencies (0: as even as the minimum count allows);
    class_spread: a class's offset from its family centre, relative to the family's radius;
    jitter: a sample's latent offset from its class point, relative to the class spread;
    noise: Gaussian input noise, relative to the inputs' standard deviation.
    """

    num_classes: int = 100_000
    num_samples: int = 800_000
    input_dim: int = 64
    family_size: int = 6
    zipf: float = 0.8
    min_count: int = 2
    class_spread: float = 0.45
    jitter: float = 0.6
    noise: float = 0.3
    eval_classes: int = 20_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_classes < 2 or self.input_dim < 1 or self.family_size < 1:
            raise ValueError("num_classes must be >= 2, input_dim and family_size >= 1")
        if self.min_count < 1 or self.num_samples < self.min_count * self.num_classes:
            raise ValueError(
                f"num_samples ({self.num_samples}) must be at least min_count ({self.min_count})"
                f" x num_classes ({self.num_classes}), and min_count >= 1"
            )
        if not 0 < self.eval_classes <= self.num_classes:
            raise ValueError(f"eval_classes must be in [1, num_classes], got {self.eval_classes}")
        for name in ("zipf", "class_spread", "jitter", "noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def class_counts(spec: TaxonomySpec, rng: np.random.Generator) -> np.ndarray:
    """Training samples per class [C] int64: ``min_count`` each, the rest drawn in proportion to
    Zipf weights over a random permutation of the classes; sums to ``num_samples``."""
    c = spec.num_classes
    weights = np.arange(1, c + 1, dtype=np.float64) ** -spec.zipf
    weights = weights[rng.permutation(c)]
    rest = spec.num_samples - spec.min_count * c
    return spec.min_count + rng.multinomial(rest, weights / weights.sum()).astype(np.int64)


class _Taxonomy:
    """The latent structure and the input map of one spec."""

    def __init__(self, spec: TaxonomySpec, rng: np.random.Generator) -> None:
        c, d = spec.num_classes, _LATENT_DIM
        # Families of geometric sizes, in department order; classes in family order.
        sizes = rng.geometric(1 / spec.family_size, size=c)
        family = np.repeat(np.arange(c), sizes)[:c]  # [C] family of each class
        num_families = int(family[-1]) + 1
        num_departments = max(1, round(c / _DEPARTMENT_SIZE))
        department = np.sort(rng.integers(num_departments, size=num_families))  # [F]
        dept_centre = rng.standard_normal((num_departments, d))
        family_centre = dept_centre[department] + _FAMILY_RADIUS * rng.standard_normal(
            (num_families, d)
        )
        # Anisotropic spread: each family scales each latent axis by a log-normal factor.
        axis_scale = np.exp(0.8 * rng.standard_normal((num_families, d)))  # [F, d]
        axis_scale /= np.sqrt((axis_scale**2).mean(axis=1, keepdims=True))
        offset = rng.standard_normal((c, d)) * axis_scale[family]
        radius = _FAMILY_RADIUS * spec.class_spread
        self.points = (family_centre[family] + radius * offset).astype(np.float32)  # [C, d]
        self.axis_scale = (radius * axis_scale[family]).astype(np.float32)  # [C, d]
        # Random Fourier features: inputs = cos(z W + b) * sqrt(2), W ~ N(0, 1 / bandwidth^2).
        self.freqs = (rng.standard_normal((d, spec.input_dim)) / 1.5).astype(np.float32)
        self.phases = rng.uniform(0, 2 * math.pi, spec.input_dim).astype(np.float32)
        self.spec = spec

    def samples(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Inputs [n, input_dim] float32 for ``labels`` [n]: class point + anisotropic jitter,
        through the random-feature map, plus input noise."""
        spec = self.spec
        jitter = rng.standard_normal((len(labels), _LATENT_DIM), dtype=np.float32)
        latent = self.points[labels] + spec.jitter * self.axis_scale[labels] * jitter
        inputs = np.cos(latent @ self.freqs + self.phases) * np.float32(math.sqrt(2))
        noise = rng.standard_normal(inputs.shape, dtype=np.float32)
        return inputs + np.float32(spec.noise) * noise


def write_taxonomy_features(path: str | Path, spec: TaxonomySpec | None = None) -> dict:
    """Write the feature files of ``spec`` into folder ``path``; returns the statistics also
    written to ``taxonomy.json`` (counts' shape: largest share, share of classes with <= 3)."""
    spec = spec or TaxonomySpec()
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    taxonomy = _Taxonomy(spec, rng)
    counts = class_counts(spec, rng)
    train_y = np.repeat(np.arange(spec.num_classes), counts)[rng.permutation(spec.num_samples)]
    eval_y = np.sort(rng.choice(spec.num_classes, spec.eval_classes, replace=False))
    _write(folder, "train", train_y, taxonomy, rng)
    _write(folder, "eval", eval_y, taxonomy, rng)
    stats = {
        "spec": asdict(spec),
        "largest_class_share": float(counts.max() / spec.num_samples),
        "share_of_classes_with_at_most_3": float((counts <= 3).mean()),
        "median_count": float(np.median(counts)),
    }
    (folder / "taxonomy.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def _write(folder: Path, split: str, labels: np.ndarray, taxonomy: _Taxonomy, rng) -> None:
    """``{split}_x.npy`` [n, input_dim] float32 (written chunk by chunk) and ``{split}_y.npy``."""
    dim = taxonomy.spec.input_dim
    x = np.lib.format.open_memmap(
        folder / f"{split}_x.npy", mode="w+", dtype=np.float32, shape=(len(labels), dim)
    )
    for start in range(0, len(labels), _CHUNK):
        x[start : start + _CHUNK] = taxonomy.samples(labels[start : start + _CHUNK], rng)
    x.flush()
    del x
    np.save(folder / f"{split}_y.npy", labels.astype(np.int64))
