"""A tiny next-item run end to end: SeqRec data, the SASRec backbone, full-ranking metrics,
early stopping; and the sampled heads on it."""

import json

import pytest
import torch

import megaclass
from megaclass.train import train
from megaclass.train.config import load_config
from tests.distributed.harness import run_ranks
from tests.integration.helpers import step_losses


def _sequences(path, num_users=300, num_items=60, seed=0):
    """Users walk through items in runs (item i is usually followed by i + 1): learnable."""
    g = torch.Generator().manual_seed(seed)
    lines = []
    for user in range(1, num_users + 1):
        start = int(torch.randint(1, num_items + 1, (1,), generator=g))
        length = int(torch.randint(5, 12, (1,), generator=g))
        items = [(start + t - 1) % num_items + 1 for t in range(length)]
        lines.append(" ".join(map(str, [user, *items])))
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(path, *overrides):
    return load_config(
        None,
        [
            "data.source='seqrec'",
            f"data.path='{path}'",
            "data.max_len=8",
            "model.backbone='sasrec'",
            "model.embedding_dim=32",
            "model.num_layers=1",
            "model.dropout=0.1",
            "head.margin='softmax'",
            "head.matmul_dtype='fp32'",
            "train.batch_size=128",
            "train.steps=60",
            "train.eval_every=20",
            "train.log_every=20",
            "optim.lr=0.05",
            "optim.warmup_steps=5",
            *overrides,
        ],
    )


@pytest.mark.parametrize("sampler", ["full", "knn", "ann"])
def test_a_tiny_seqrec_run_learns_the_walks_and_reports_full_ranking_metrics(tmp_path, sampler):
    data = _sequences(tmp_path / "walks.txt")
    overrides = [f"head.sampler='{sampler}'", "head.knn.budget=0.5", "head.ann.k=20"]
    summary = train(_config(data, *overrides), tmp_path / "run")
    for split in ("valid", "test"):
        for k in (5, 10, 20):
            assert 0 <= summary[f"{split}_ndcg@{k}"] <= summary[f"{split}_hit@{k}"] <= 1
        assert summary[f"{split}_samples"] == 300
    assert summary["test_hit@10"] > 0.5  # chance: 10 / 60
    assert summary["best"]["step"] in (20, 40, 60) and "test_hit@10" in summary["best"]


def test_early_stopping_stops_after_patience_evaluations_without_a_better_score(tmp_path):
    data = _sequences(tmp_path / "walks.txt")
    config = _config(
        data,
        "train.steps=400",
        "train.eval_every=10",
        "train.log_every=4",  # evaluations are due at steps that are not logging steps
        "train.patience=2",
        "optim.lr=1e-9",
        "optim.warmup_steps=0",
    )  # too small to improve
    summary = train(config, tmp_path / "run")
    assert summary["steps"] < 400
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    evaluated = list(dict.fromkeys(r["step"] for r in records if "valid_ndcg@10" in r))
    assert len(evaluated) >= 3 and evaluated == list(range(10, 10 * len(evaluated) + 1, 10))


def test_sasrec_needs_seqrec_data_and_seqrec_needs_a_sequence_backbone(tmp_path):
    data = _sequences(tmp_path / "walks.txt")
    with pytest.raises(ValueError, match="sasrec"):
        train(_config(data, "model.backbone='mlp'"), tmp_path / "a")
    with pytest.raises(ValueError, match="seqrec"):
        train(
            load_config(None, ["model.backbone='sasrec'", "data.num_classes=100"]), tmp_path / "b"
        )


def test_tied_item_embeddings_learn_the_walks(tmp_path):
    data = _sequences(tmp_path / "walks.txt")
    config = _config(
        data, "model.tie_item_embeddings=true", "head.sampler='knn'", "head.knn.budget=0.5"
    )
    summary = train(config, tmp_path / "run")
    assert summary["test_hit@10"] > 0.5
    # loaded as a model: a history ending in item i is followed by item i + 1 (class i)
    model = megaclass.load_run(tmp_path / "run")
    last = torch.arange(1, 60)  # items 1..59
    histories = torch.stack([(last - 1 - t) % 60 + 1 for t in (3, 2, 1, 0)], dim=1)  # [59, 4]
    padded = torch.cat([torch.zeros(59, 4, dtype=torch.int64), histories], dim=1)  # [59, 8]
    found = model.predict(padded, k=10)
    assert float((found.ids == last[:, None]).any(dim=1).float().mean()) > 0.5
    with pytest.raises(ValueError, match=r"tie_item_embeddings needs model\.backbone = 'sasrec'"):
        load_config(None, ["model.tie_item_embeddings=true"])


def _train_on_ranks(group, config, run_dir):
    train(config, run_dir)


def test_tied_item_embeddings_on_two_ranks_equal_one_rank(tmp_path):
    data = _sequences(tmp_path / "walks.txt")
    config = _config(
        data,
        "model.tie_item_embeddings=true",
        "model.dropout=0.0",
        "head.sampler='full'",
        "train.steps=8",
        "train.eval_every=0",
        "train.log_every=1",
    )
    run_ranks(1, _train_on_ranks, config, tmp_path / "one")
    run_ranks(2, _train_on_ranks, config, tmp_path / "two")
    one, two = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert one.keys() == two.keys() == set(range(1, 9))
    for step in one:  # the items' rows live on both shards; only summation order differs
        assert two[step] == pytest.approx(one[step], rel=1e-5), step
