"""The collapse of sampled heads (see docs/stability.md): a tiny run on which it happened before
the default backbone's embedding got its BatchNorm, and the detector that stops such runs."""

import pytest

from megaclass.train import TrainingCollapsed, load_config, train

# 2,000 balanced classes, 40 steps of 256 at the default learning rate: knn's budget (5%) is
# below the batch's distinct labels, so its negatives are the batch's labels only.
COLLAPSING = [
    "data.num_classes=2000",
    "data.zipf=0.0",
    "data.input_dim=16",
    "data.eval_samples=512",
    "model.embedding_dim=32",
    "model.hidden_dim=64",
    "train.batch_size=256",
    "train.steps=40",
    "train.log_every=5",
    "train.threads=1",
    "head.matmul_dtype='fp32'",
    "head.knn.budget=0.05",
]
WITHOUT_BATCHNORM = "model.backbone='benchmarks.backbones:mlp_without_batchnorm'"


@pytest.mark.slow
def test_sampled_head_that_collapsed_on_the_old_backbone_now_trains_like_full(tmp_path):
    results = {}
    for sampler in ("knn", "full"):
        config = load_config(None, [*COLLAPSING, f"head.sampler='{sampler}'"])
        results[sampler] = train(config, tmp_path / sampler)["top1"]
    assert results["knn"] > 0.05  # chance 0.0005; before the fix 0.004
    assert results["knn"] > 0.5 * results["full"]


def test_detector_stops_a_collapsed_run_and_names_what_it_saw(tmp_path):
    config = load_config(None, [*COLLAPSING, "head.sampler='knn'", WITHOUT_BATCHNORM])
    with pytest.raises(TrainingCollapsed, match=r"step 35: the embeddings collapsed.*cosine"):
        train(config, tmp_path)
    records = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 7 and '"embedding_rank"' in records[-1]
    assert not (tmp_path / "summary.json").exists()
