import logging

import numpy as np
import pytest
import torch

from megaclass.data import FeatureFiles, SyntheticCatalog, features, hashing
from megaclass.data.synthetic import DEFAULT_NUM_CLASSES


def test_batches_are_deterministic_and_any_rows_can_be_generated_alone():
    data = SyntheticCatalog(10_000, input_dim=8, seed=3)
    x, y = data.train_batch(5, 64)
    x2, y2 = SyntheticCatalog(10_000, input_dim=8, seed=3).train_batch(5, 64, slice(40, 64))
    assert torch.equal(x[40:], x2) and torch.equal(y[40:], y2)
    assert not torch.equal(data.train_batch(6, 64)[0], x)
    assert not torch.equal(SyntheticCatalog(10_000, input_dim=8, seed=4).train_batch(5, 64)[0], x)


def test_hundred_million_classes_need_no_per_class_memory():
    data = SyntheticCatalog(100_000_000, input_dim=8)
    x, y = data.train_batch(123_456, 256)
    assert x.shape == (256, 8) and int(y.max()) < 100_000_000 and int(y.min()) >= 0


def test_families_hold_near_identical_classes():
    data = SyntheticCatalog(1000, family_size=8)
    points = data.class_points(torch.arange(16))
    cos = points @ points.t()
    same = cos[:8, :8][~torch.eye(8, dtype=torch.bool)]
    other = cos[:8, 8:]
    assert same.mean() > 0.8 and other.abs().mean() < 0.5


def test_zipf_frequencies_are_long_tailed_and_zero_is_uniform():
    skewed = torch.bincount(
        SyntheticCatalog(1000, zipf=1.0).train_batch(0, 20_000)[1], minlength=1000
    )
    flat = torch.bincount(
        SyntheticCatalog(1000, zipf=0.0).train_batch(0, 20_000)[1], minlength=1000
    )
    assert skewed.max() > 0.1 * 20_000 and flat.max() < 0.005 * 20_000 + 40


def test_held_out_samples_differ_from_training_samples():
    data = SyntheticCatalog(50, input_dim=8, eval_samples=300)
    eval_x = torch.cat([x for x, _ in data.eval_batches(128)])
    train_x = torch.cat([data.train_batch(s, 512)[0] for s in range(4)])
    assert len(eval_x) == 300
    assert torch.cdist(eval_x, train_x).min() > 1e-4


def test_hashed_normals_look_standard():
    z = hashing.normal(hashing.key(0, 1, torch.arange(20_000)), 4)
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02


def _features(folder, **bad):
    arrays = {
        "train_x.npy": np.zeros((10, 3), np.float32),
        "train_y.npy": np.arange(10, dtype=np.int64) % 4,
        "eval_x.npy": np.zeros((5, 3), np.float32),
        "eval_y.npy": np.arange(5, dtype=np.int64) % 4,
    }
    arrays.update(bad)
    for name, array in arrays.items():
        np.save(folder / name, array)


def test_feature_files_read_and_cycle_epochs(tmp_path):
    _features(tmp_path)
    data = FeatureFiles(tmp_path)
    assert data.num_classes == 4 and data.input_dim == 3
    labels = torch.cat([data.train_batch(step, 4)[1] for step in range(5)])  # two epochs
    assert sorted(labels.tolist()) == sorted(2 * (np.arange(10) % 4).tolist())


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"train_x.npy": np.zeros((10, 3), np.float64)}, "train_x.npy: expected float32"),
        ({"eval_y.npy": np.zeros((4,), np.int64)}, "eval_x.npy has 5 rows but .*eval_y.npy has 4"),
        ({"eval_x.npy": np.zeros((5, 2), np.float32)}, "eval_x.npy has 2 features"),
        ({"train_y.npy": np.full(10, -1, np.int64)}, "train_y.npy: label -1 is outside"),
    ],
)
def test_bad_feature_files_name_the_file(tmp_path, bad, message):
    _features(tmp_path, **bad)
    with pytest.raises(ValueError, match=message):
        FeatureFiles(tmp_path)


def test_missing_and_corrupt_feature_files(tmp_path):
    with pytest.raises(ValueError, match=r"missing feature file .*train_x\.npy"):
        FeatureFiles(tmp_path)
    _features(tmp_path)
    (tmp_path / "eval_x.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"cannot read .*eval_x\.npy"):
        FeatureFiles(tmp_path)


def test_the_synthetic_catalogue_without_a_class_count_has_its_own():
    assert SyntheticCatalog(0).num_classes == DEFAULT_NUM_CLASSES == 1_000_000


def test_feature_files_report_their_labels_and_warn_about_classes_without_samples(tmp_path, caplog):
    labels = np.arange(10, dtype=np.int64) % 4
    labels[3] = 999  # a mistyped label
    _features(tmp_path, **{"train_y.npy": labels})
    with caplog.at_level(logging.INFO, logger="megaclass.data"):
        data = FeatureFiles(tmp_path)
    assert data.num_classes == 1000 and data.label_range == (0, 999)
    assert data.empty_classes == 1000 - 5
    info, warning = caplog.records
    assert info.levelno == logging.INFO and "labels 0 to 999, 1,000 classes" in info.message
    assert warning.levelno == logging.WARNING
    assert "995 of 1,000 classes have no training sample (e.g. 4, 5, 6, 7, 8)" in warning.message
    assert "train_y.npy" in warning.message


def test_feature_files_whose_labels_cover_every_class_do_not_warn(tmp_path, caplog):
    _features(tmp_path)
    with caplog.at_level(logging.INFO, logger="megaclass.data"):
        assert FeatureFiles(tmp_path).empty_classes == 0
    assert [r.levelno for r in caplog.records] == [logging.INFO]


def test_an_explicit_class_count_is_checked_and_kept(tmp_path):
    _features(tmp_path)
    assert FeatureFiles(tmp_path, num_classes=6).num_classes == 6
    with pytest.raises(ValueError, match=r"train_y\.npy: label 3 is outside \[0, 3\)"):
        FeatureFiles(tmp_path, num_classes=3)


@pytest.mark.parametrize("name", ["train_x.npy", "eval_x.npy"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_name_the_file_and_the_first_bad_row(tmp_path, monkeypatch, name, bad):
    monkeypatch.setattr(features, "_SCAN_BYTES", 2 * 3 * 4)  # two rows a block: several blocks
    x = np.zeros((10 if name == "train_x.npy" else 5, 3), np.float32)
    x[3, 1] = x[4, 2] = bad
    _features(tmp_path, **{name: x})
    with pytest.raises(ValueError, match=rf"{name}: row 3 holds .* \(column 1\); .* finite"):
        FeatureFiles(tmp_path)


def test_a_missing_feature_folder_says_so(tmp_path):
    with pytest.raises(ValueError, match=r"feature folder .*nowhere does not exist"):
        FeatureFiles(tmp_path / "nowhere")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"feature folder .*file is not a folder"):
        FeatureFiles(tmp_path / "file")
