"""ClassifierHead at world size 1 against the dense reference, and its input checks."""

import pytest
import torch

import megaclass
from megaclass import margins, samplers
from tests.reference import ALL_MARGINS, reference_loss

NUM_CLASSES, DIM, BATCH = 1007, 24, 37


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, DIM, generator=g)
    y = torch.randint(0, NUM_CLASSES, (BATCH,), generator=g)
    w = torch.randn(NUM_CLASSES, DIM, generator=g)
    return x, y, w


def _head(margin, w, **kw):
    head = megaclass.ClassifierHead(NUM_CLASSES, DIM, margin=margin, **kw)
    with torch.no_grad():
        head.weight.copy_(w)
    return head


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _run(head, x, y):
    x = x.clone().requires_grad_()
    loss = head(x, y).loss
    loss.backward()
    return loss.detach(), x.grad, head.weight.grad


def _reference(x, y, w, margin, **kw):
    x = x.double().requires_grad_()
    w = w.double().requires_grad_()
    loss = reference_loss(x, w, y, margin, **kw)
    loss.backward()
    return loss.detach(), x.grad, w.grad


@pytest.mark.parametrize("chunk_size", [None, 100, 4096])
@pytest.mark.parametrize("margin", ALL_MARGINS, ids=lambda m: repr(m))
def test_loss_and_gradients_equal_dense_reference(margin, chunk_size):
    x, y, w = _problem()
    y[5] = -100
    got = _run(_head(margin, w, chunk_size=chunk_size), x, y)
    want = _reference(x, y, w, margin)
    for name, a, b in zip(("loss", "grad embeddings", "grad weight"), got, want, strict=True):
        assert _rel(a, b) <= 1e-5, name


def test_bf16_matmuls_stay_close_to_reference():
    x, y, w = _problem()
    margin = margins.ArcFace(scale=16.0, margin=0.5)
    got = _run(_head(margin, w, chunk_size=128, matmul_dtype=torch.bfloat16), x, y)
    want = _reference(x, y, w, margin)
    assert _rel(got[0], want[0]) < 1e-2
    assert _rel(got[1], want[1]) < 5e-2
    assert _rel(got[2], want[2]) < 5e-2


def test_ignored_rows_contribute_nothing():
    x, y, w = _problem()
    keep = torch.ones(BATCH, dtype=torch.bool)
    keep[[0, 7, 20]] = False
    margin = margins.CosFace(scale=16.0, margin=0.3)
    loss_all, gx_all, gw_all = _run(_head(margin, w), x, torch.where(keep, y, -100))
    loss_kept, gx_kept, gw_kept = _run(_head(margin, w), x[keep], y[keep])
    assert torch.allclose(loss_all, loss_kept, rtol=1e-6)
    assert torch.equal(gx_all[~keep], torch.zeros_like(gx_all[~keep]))
    assert torch.allclose(gx_all[keep], gx_kept, rtol=1e-5, atol=1e-9)
    assert torch.allclose(gw_all, gw_kept, rtol=1e-5, atol=1e-9)


def test_a_batch_with_every_row_ignored_has_zero_loss_and_gradient():
    x, y, w = _problem()
    loss, gx, gw = _run(_head(margins.Softmax(), w), x, torch.full_like(y, -100))
    assert loss.item() == 0.0
    assert not gx.any() and not gw.any()


def test_custom_ignore_index():
    x, y, w = _problem()
    y[3] = 0
    margin = margins.NormSoftmax(scale=8.0)
    got = _run(_head(margin, w, ignore_index=0), x, y)
    want = _reference(x, y, w, margin, ignore_index=0)
    assert _rel(got[0], want[0]) <= 1e-5


def test_inputs_are_not_modified():
    x, y, w = _problem()
    x_before, y_before = x.clone(), y.clone()
    head = _head(margins.ArcFace(scale=16.0), w)
    x.requires_grad_()
    head(x, y).loss.backward()
    assert torch.equal(x.detach(), x_before) and torch.equal(y, y_before)


@pytest.mark.parametrize("bad_label", [NUM_CLASSES, NUM_CLASSES + 5, -1, -7])
def test_label_out_of_range_names_value_and_range(bad_label):
    x, y, w = _problem()
    y[4] = bad_label
    with pytest.raises(ValueError, match=rf"label {bad_label} .*sample 4.*\[0, {NUM_CLASSES}\)"):
        _head(margins.Softmax(), w)(x, y)


def test_wrong_width_and_batch_mismatch_and_shapes_raise():
    x, y, w = _problem()
    head = _head(margins.Softmax(), w)
    with pytest.raises(ValueError, match=f"width {DIM + 1}.*expects {DIM}"):
        head(torch.randn(BATCH, DIM + 1), y)
    with pytest.raises(ValueError, match=f"{BATCH} embeddings but {BATCH - 1} labels"):
        head(x, y[:-1])
    with pytest.raises(ValueError, match="must be"):
        head(x[0], y)
    with pytest.raises(ValueError, match="integer"):
        head(x, y.float())


def test_non_finite_embeddings_raise_unless_check_is_off():
    x, y, w = _problem()
    x[2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        _head(margins.Softmax(), w)(x, y)
    loss = _head(margins.Softmax(), w, check_finite=False)(x, y).loss
    assert torch.isnan(loss)


def test_bad_construction_arguments_raise():
    with pytest.raises(ValueError, match="num_classes"):
        megaclass.ClassifierHead(0, 8)
    with pytest.raises(ValueError, match="chunk_size"):
        megaclass.ClassifierHead(10, 8, chunk_size=0)
    with pytest.raises(ValueError, match="matmul_dtype"):
        megaclass.ClassifierHead(10, 8, matmul_dtype=torch.int8)


def test_public_surface():
    head = megaclass.ClassifierHead(1000, 16, margin=margins.ArcFace(), sampler=None)
    assert head.weight.shape == (1000, 16) and head.class_range == (0, 1000)
    out = head(torch.randn(4, 16), torch.tensor([1, 2, 3, 999]))
    assert out.num_active == 1000 and out.loss.dim() == 0


def test_a_margin_given_by_name_is_refused_with_the_available_margins():
    with pytest.raises(ValueError, match=r"margin must be a megaclass\.margins instance, got "):
        megaclass.ClassifierHead(10, 8, margin="arcface")
    with pytest.raises(ValueError, match=r"available: Softmax\(\), .*ArcFace\(\), CombinedMargin"):
        megaclass.ClassifierHead(10, 8, margin=margins.ArcFace)  # the class, not an instance


@pytest.mark.parametrize("k", [0, -1, NUM_CLASSES + 1])
def test_predict_topk_refuses_k_outside_one_to_num_classes(k):
    head = megaclass.ClassifierHead(NUM_CLASSES, DIM)
    with pytest.raises(
        ValueError, match=rf"k must be in \[1, num_classes\] = \[1, {NUM_CLASSES}\]"
    ):
        head.predict_topk(torch.randn(3, DIM), k)
    assert head.predict_topk(torch.randn(3, DIM), NUM_CLASSES)[1].shape == (3, NUM_CLASSES)


def _unasked(*args, **kwargs):
    raise AssertionError("the sampler was asked in eval mode")


@pytest.mark.parametrize(
    "sampler",
    [lambda: samplers.KNN(k=4, budget=0.05), lambda: samplers.Random(rate=0.05)],
    ids=["knn", "random"],
)
def test_eval_mode_scores_every_class_without_asking_the_sampler(sampler, monkeypatch):
    x, y, w = _problem()
    margin = margins.CosFace(scale=16.0, margin=0.35)
    sampled = _head(margin, w, sampler=sampler()).eval()
    monkeypatch.setattr(sampled.sampler, "select", _unasked)
    monkeypatch.setattr(sampled.sampler, "refresh", _unasked)
    out = sampled(x, y)  # a KNN head without a graph: in training it would raise
    full = _head(margin, w).eval()(x, y)
    want = reference_loss(x.double(), w.double(), y, margin)
    assert out.num_active == NUM_CLASSES
    assert torch.equal(out.loss, full.loss) and _rel(out.loss.detach(), want) <= 1e-5


def test_back_in_training_mode_the_sampler_chooses_again():
    x, y, w = _problem()
    head = _head(margins.Softmax(), w, sampler=samplers.Random(rate=0.05))
    head.eval()
    assert head(x, y).num_active == NUM_CLASSES
    head.train()
    assert head(x, y).num_active < NUM_CLASSES
