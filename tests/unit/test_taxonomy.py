import json

import numpy as np
import pytest
import torch

from megaclass.data import FeatureFiles
from megaclass.data.taxonomy import TaxonomySpec, write_taxonomy_features

SMALL = TaxonomySpec(
    num_classes=600, num_samples=6_000, input_dim=12, zipf=1.0, min_count=3, eval_classes=200
)


def test_files_load_as_features_with_the_counts_asked_for(tmp_path):
    stats = write_taxonomy_features(tmp_path, SMALL)
    data = FeatureFiles(tmp_path)
    assert data.num_classes == 600 and data.input_dim == 12
    train_y, eval_y = np.load(tmp_path / "train_y.npy"), np.load(tmp_path / "eval_y.npy")
    counts = np.bincount(train_y, minlength=600)
    assert len(train_y) == 6_000 and counts.min() >= 3
    assert counts.max() / 6_000 == pytest.approx(stats["largest_class_share"])
    assert counts.max() > 20 * np.median(counts)  # long-tailed
    assert len(np.unique(eval_y)) == 200  # one held-out sample per class, classes distinct
    assert json.loads((tmp_path / "taxonomy.json").read_text())["spec"]["num_classes"] == 600
    x, _ = data.train_batch(0, 64)
    assert x.shape == (64, 12) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    write_taxonomy_features(tmp_path / "a", SMALL)
    write_taxonomy_features(tmp_path / "b", SMALL)
    write_taxonomy_features(tmp_path / "c", TaxonomySpec(**{**SMALL.__dict__, "seed": 1}))
    a, b, c = (np.load(tmp_path / name / "train_x.npy") for name in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_classes_of_a_family_are_closer_than_classes_of_other_departments():
    from megaclass.data.taxonomy import _Taxonomy

    taxonomy = _Taxonomy(SMALL, np.random.default_rng(0))
    points = taxonomy.points / np.linalg.norm(taxonomy.points, axis=1, keepdims=True)
    neighbours = (points[:-1] * points[1:]).sum(1)  # consecutive ids: mostly one family
    far = (points[:300] * points[300:]).sum(1)
    assert np.median(neighbours) > np.median(far) + 0.2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_samples": 100}, "num_samples"),
        ({"eval_classes": 0}, "eval_classes"),
        ({"zipf": -1.0}, "zipf"),
    ],
)
def test_impossible_specs_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        TaxonomySpec(**{**SMALL.__dict__, **changes})
