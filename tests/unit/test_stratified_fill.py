"""KNN's fill by label frequency: exact size, unbiased estimate of the classes left out, and
lower variance than a uniform fill when those classes' mass follows their label counts."""

import math

import pytest
import torch

from megaclass import samplers
from megaclass.samplers.frequent import FrequentClasses
from megaclass.samplers.stratified import CountStrata, _split, select_with_count_fill
from megaclass.samplers.uniform import select_with_fill

NUM_LOCAL = 500


def _counts():
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(NUM_LOCAL, dtype=torch.int64)
    seen = torch.randperm(NUM_LOCAL, generator=g)[:200]
    counts[seen] = (1000 / torch.arange(1, 201)).long()  # Zipf-like over the seen classes
    return counts


def test_strata_bucket_classes_by_log2_of_their_count():
    counts = torch.tensor([0, 1, 2, 3, 4, 7, 8, 0])
    strata = CountStrata.of(counts)
    assert strata.bucket.tolist() == [0, 1, 1, 2, 2, 3, 3, 0]
    assert strata.bounds.tolist() == [0, 2, 4, 6, 8]
    assert torch.equal(strata.members[strata.position], torch.arange(8))
    assert torch.allclose(strata.weight, torch.tensor([0.1, 1.6, 3.6, 7.6], dtype=torch.float64))


def test_split_follows_the_weights_and_moves_a_full_buckets_excess_to_the_others():
    draws = _split(10, torch.tensor([2, 100, 100]), torch.tensor([100.0, 1.0, 3.0]).double())
    assert draws.tolist() == [2, 2, 6]
    assert _split(500, torch.tensor([2, 3]), torch.tensor([1.0, 1.0]).double()).tolist() == [2, 3]


def test_fill_keeps_the_chosen_rows_and_has_exactly_the_wanted_size():
    strata = CountStrata.of(_counts())
    chosen = torch.tensor([3, 17, 250, 499, 0])
    for seed in range(5):
        selection = select_with_count_fill(chosen, 60, strata, torch.Generator().manual_seed(seed))
        rows = selection.rows
        assert len(rows) == 60 and bool((rows[1:] > rows[:-1]).all())
        assert bool(torch.isin(chosen, rows).all())
        assert not bool(selection.logit_offsets[torch.isin(rows, chosen)].any())


def test_a_fill_of_every_class_is_the_whole_shard_without_offsets():
    selection = select_with_count_fill(
        torch.tensor([4, 2]), NUM_LOCAL, CountStrata.of(_counts()), torch.Generator()
    )
    assert torch.equal(selection.rows, torch.arange(NUM_LOCAL))
    assert selection.logit_offsets is None


def test_equal_counts_give_the_uniform_fill_and_its_correction():
    strata = CountStrata.of(torch.full((NUM_LOCAL,), 5))
    chosen = torch.tensor([1, 2, 3])
    selection = select_with_count_fill(chosen, 53, strata, torch.Generator())
    drawn = ~torch.isin(selection.rows, chosen)
    assert int(drawn.sum()) == 50
    want = torch.tensor(math.log((NUM_LOCAL - 3) / 50))
    assert torch.allclose(selection.logit_offsets[drawn], want)


def _estimates(select, values, trials):
    """The corrected sum of ``values`` over the active rows, per trial (``values`` is 0 at the
    chosen rows, so this estimates its sum over the rest)."""
    out = []
    for seed in range(trials):
        selection = select(torch.Generator().manual_seed(seed))
        offsets = selection.logit_offsets
        weights = torch.ones(len(selection.rows)) if offsets is None else offsets.exp()
        out.append(float((values[selection.rows] * weights).sum()))
    return torch.tensor(out, dtype=torch.float64)


def test_fill_estimates_the_unchosen_sum_without_bias_and_with_less_variance_than_uniform():
    counts = _counts()
    strata = CountStrata.of(counts)
    chosen = torch.tensor([0, 1, 2, 3, 4])
    values = counts.double() * torch.rand(NUM_LOCAL, generator=torch.Generator().manual_seed(1))
    values[chosen] = 0
    truth = float(values.sum())
    by_count = _estimates(lambda g: select_with_count_fill(chosen, 55, strata, g), values, 800)
    uniform = _estimates(lambda g: select_with_fill(chosen, 55, NUM_LOCAL, g, True), values, 800)
    standard_error = float(by_count.std()) / math.sqrt(len(by_count))
    assert abs(float(by_count.mean()) - truth) <= 4 * standard_error
    assert float(by_count.std()) < 0.5 * float(uniform.std())


def test_frequent_classes_rebuild_their_strata_on_refresh_and_restore_them_on_load():
    frequent = FrequentClasses(10, stratify=True)
    assert frequent.strata is None
    frequent.count(torch.tensor([1, 1, 1, 2, 7]))
    frequent.refresh(2)
    assert frequent.strata.bucket.tolist() == [0, 2, 1, 0, 0, 0, 0, 1, 0, 0]
    frequent.count(torch.tensor([9, 9, 9]))  # counted after the refresh: not in the strata
    restored = FrequentClasses(10, stratify=True)
    restored.load_state(frequent.state())
    assert torch.equal(restored.strata.bucket, frequent.strata.bucket)
    assert torch.equal(restored.strata.weight, frequent.strata.weight)


@pytest.mark.parametrize(
    "kwargs", [{"fill": "nearest"}, {"fill": "frequency", "logit_correction": False}], ids=str
)
def test_bad_fill_settings_raise(kwargs):
    with pytest.raises(ValueError):
        samplers.KNN(**kwargs)
