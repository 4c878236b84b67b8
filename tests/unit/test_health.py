import pytest
import torch

from megaclass.train.health import HealthWatch, embedding_spread


def test_spread_of_identical_and_of_orthogonal_embeddings():
    same = embedding_spread(torch.ones(50, 16) * 3, None)
    assert same["embedding_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert same["embedding_rank"] == pytest.approx(1.0, abs=1e-3)
    basis = torch.cat([torch.eye(16), -torch.eye(16)])  # 16 directions, both signs
    spread = embedding_spread(basis * 5, None)
    assert spread["embedding_cosine"] == pytest.approx(-1 / 31, abs=1e-5)
    assert spread["embedding_rank"] == pytest.approx(16.0, rel=1e-4)


def _healthy(cosine=0.05, rank=20.0):
    return {"embedding_cosine": cosine, "embedding_rank": rank}


def test_quiet_on_a_healthy_run_and_during_the_warmup():
    watch = HealthWatch(warmup_steps=20, embedding_dim=64)
    for step, loss in ((10, 16.0), (20, 25.0), (30, 14.0), (40, 12.0)):
        spread = _healthy() if step > 20 else _healthy(cosine=0.97, rank=1.1)
        assert watch.check(step, loss, spread) is None
        assert spread["loss_vs_first"] == pytest.approx(loss / 16.0)


def test_fires_on_embeddings_collapsed_for_ten_steps_even_with_a_falling_loss():
    watch = HealthWatch(warmup_steps=0, embedding_dim=64)
    assert watch.check(5, 16.0, _healthy(cosine=0.95)) is None
    assert watch.check(10, 15.5, _healthy(cosine=0.95)) is None
    assert watch.check(15, 15.0, _healthy()) is None  # it spread again: start over
    assert watch.check(20, 14.0, _healthy(rank=1.4)) is None
    assert watch.check(25, 14.0, _healthy(rank=1.4)) is None
    assert "collapsed" in watch.check(30, 13.0, _healthy(rank=1.3))


def test_fires_on_a_diverging_loss():
    watch = HealthWatch(warmup_steps=0, embedding_dim=64)
    assert watch.check(10, 10.0, _healthy()) is None
    assert "diverged" in watch.check(20, 15.5, _healthy())


def test_narrow_embeddings_are_not_judged_by_rank():
    watch = HealthWatch(warmup_steps=0, embedding_dim=4)  # rank <= 1 only
    for step in (10, 20, 30):
        assert watch.check(step, 5.0, _healthy(rank=1.8)) is None
