"""SeqRec: both file formats, the leave-one-out split, full-ranking metrics, bad input."""

import math
import re
from pathlib import Path

import pytest
import torch

from megaclass import ClassifierHead
from megaclass.data.seqrec import NO_TARGET, SeqRec, ranking_sums, read_sequences
from megaclass.models import SASRec

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "seqrec"


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_leave_one_out_split_with_every_prefix_padding_and_truncation(tmp_path):
    # user 1: items 5 6 7 8 9; user 2: items 3 4 5 (the shortest usable); user 3: too short
    path = _write(tmp_path, "u.txt", "1 5 6 7 8 9\n2 3 4 5\n3 1 2\n")
    data = SeqRec(path, max_len=3)
    assert data.num_classes == 9 and data.num_users == 3 and data.num_short_users == 1
    # training: user 1 targets 6, 7 after histories [5], [5 6], in one window; user 2 has none
    assert data.train.histories.tolist() == [[0, 5, 6]]
    assert data.train.labels.tolist() == [[NO_TARGET, 6 - 1, 7 - 1]]  # class = item - 1
    assert data.valid.histories.tolist() == [[5, 6, 7], [0, 0, 3]]
    assert data.valid.labels.tolist() == [8 - 1, 4 - 1]
    assert data.test.histories.tolist() == [[6, 7, 8], [0, 3, 4]]  # truncated to the last 3
    assert data.test.labels.tolist() == [9 - 1, 5 - 1]
    ((histories, labels),) = list(data.eval_batches(10, "test"))
    assert torch.equal(histories, data.test.histories) and torch.equal(labels, data.test.labels)


def test_interaction_lines_give_the_same_data_as_user_lines(tmp_path):
    users = _write(tmp_path, "u.txt", "1 5 6 7 8 9\n2 3 4 5 1\n")
    pairs = "".join(
        f"{u} {i}\n" for u, items in ((1, [5, 6, 7, 8, 9]), (2, [3, 4, 5, 1])) for i in items
    )
    interactions = _write(tmp_path, "i.txt", pairs)
    a, b = SeqRec(users), SeqRec(interactions)
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(a, split).histories, getattr(b, split).histories)
        assert torch.equal(getattr(a, split).labels, getattr(b, split).labels)


def test_long_training_sequences_are_cut_into_windows_that_hold_every_target_once(tmp_path):
    # training items 1 .. 8 (9 and 10 are the validation and test targets): targets 2 .. 8
    data = SeqRec(_write(tmp_path, "u.txt", "1 1 2 3 4 5 6 7 8 9 10\n"), max_len=3)
    assert data.train.histories.tolist() == [[5, 6, 7], [2, 3, 4], [0, 0, 1]]
    assert (data.train.labels + 1).tolist() == [[6, 7, 8], [3, 4, 5], [0, 0, 2]]
    assert data.valid.histories.tolist() == [[6, 7, 8]] and data.valid.labels.tolist() == [8]


def test_training_batches_visit_every_window_once_per_epoch(tmp_path):
    path = _write(
        tmp_path, "u.txt", "".join(f"{u} {' '.join(map(str, range(1, 9)))}\n" for u in range(1, 11))
    )
    data = SeqRec(path, max_len=4, seed=3)
    n = len(data.train.labels)  # 10 users x 2 windows
    assert n == 20
    seen = torch.cat([data.train_batch(step, 5)[0] for step in range(n // 5)])
    assert sorted(seen.tolist()) == sorted(data.train.histories.tolist())
    assert not torch.equal(data.train_batch(0, 5)[0], data.train_batch(n // 5, 5)[0])


def test_ranking_sums_match_hand_computed_values():
    top = torch.tensor([[0, 2, 3, 1], [1, 2, 0, 3], [3, 2, 1, 0], [3, 2, 1, 1]])
    labels = torch.tensor([2, 1, 0, 0])  # ranks 1, 0, 3 and absent
    sums = ranking_sums(top, labels, ks=(1, 2, 4))
    assert sums["count"] == 4
    assert sums["hit@1"] == 1 and sums["hit@2"] == 2 and sums["hit@4"] == 3
    assert sums["ndcg@1"] == pytest.approx(1.0)
    assert sums["ndcg@2"] == pytest.approx(1.0 + 1 / math.log2(3))
    assert sums["ndcg@4"] == pytest.approx(1.0 + 1 / math.log2(3) + 1 / math.log2(5))
    with pytest.raises(ValueError, match="best 5"):
        ranking_sums(top, labels, ks=(5,))


@pytest.mark.parametrize(
    "text,message",
    [
        ("1 2 3\n2 4 x\n", r"u\.txt:2: expected integer ids"),
        ("1 2 3\n2 0 5\n", r"u\.txt:2: id 0 is out of range"),
        ("1 2 3 4\n\n2\n", r"u\.txt:3: user 2 has no items"),
        ("1 2 3 4\n1 5 6\n", r"u\.txt:2: user 1 appears on a second line"),
        ("1 2\n2 3\n", r"no user has 3 or more items"),
    ],
)
def test_bad_files_are_reported_with_file_and_line(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        SeqRec(_write(tmp_path, "u.txt", text))


def test_a_missing_sequence_file_is_a_value_error_saying_where_it_was_looked_up(
    tmp_path, monkeypatch
):
    with pytest.raises(ValueError, match=r"sequence file .*missing\.txt does not exist$"):
        SeqRec(tmp_path / "missing.txt")
    monkeypatch.chdir(tmp_path)
    looked_up = rf"\(a relative path, looked up in {re.escape(str(tmp_path))}\)"
    with pytest.raises(
        ValueError, match=rf"sequence file data/missing\.txt does not exist {looked_up}"
    ):
        SeqRec("data/missing.txt")
    with pytest.raises(ValueError, match=r"sequence file .* is a folder; expected a file"):
        SeqRec(tmp_path)


def test_an_explicit_item_count_is_checked_and_kept(tmp_path):
    path = _write(tmp_path, "u.txt", "1 5 6 7 8 9\n2 3 4 5\n")
    assert SeqRec(path, num_classes=12).num_classes == 12
    with pytest.raises(ValueError, match=r"u\.txt: item 9 is beyond num_classes = 8"):
        SeqRec(path, num_classes=8)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/seqrec not present")
@pytest.mark.parametrize(
    "name,users,items,interactions",
    [("Beauty.txt", 22_363, 12_101, 198_502), ("Video.txt", 31_013, 23_715, 287_107)],
)
def test_shared_data_sets_load_with_their_published_sizes(name, users, items, interactions):
    sequences = read_sequences(SHARED / name)
    assert sum(len(items) for items in sequences.values()) == interactions
    data = SeqRec(SHARED / name)
    assert (data.num_users, data.num_classes) == (users, items)
    usable = [len(items) for items in sequences.values() if len(items) >= 3]
    assert len(data.test.labels) == len(data.valid.labels) == len(usable)
    assert int((data.train.labels != NO_TARGET).sum()) == sum(usable) - 3 * len(usable)


def test_tied_sasrec_equals_untied_sasrec_holding_the_same_item_vectors():
    head = ClassifierHead(9, 8)
    untied = SASRec(9, 8, max_len=4, num_layers=1, dropout=0.0)
    tied = SASRec(9, 8, max_len=4, num_layers=1, dropout=0.0, item_lookup=head.lookup)
    tied.load_state_dict(
        {k: v for k, v in untied.state_dict().items() if not k.startswith("items.")}
    )
    with torch.no_grad():
        untied.items.weight[1:] = head.weight  # row 0: padding
    histories = torch.tensor([[0, 0, 3, 9], [2, 2, 5, 1]])
    out_tied, out_untied = tied(histories), untied(histories)
    torch.testing.assert_close(out_tied, out_untied)
    out_tied.square().sum().backward()
    out_untied.square().sum().backward()
    torch.testing.assert_close(head.weight.grad.to_dense(), untied.items.weight.grad[1:])
    assert set(head.weight.grad.coalesce().indices()[0].tolist()) == {2, 8, 1, 4, 0}
