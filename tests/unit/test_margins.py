import math

import pytest
import torch

from megaclass import margins


def _slope(margin, cos):
    cos = torch.tensor(cos, dtype=torch.float64, requires_grad=True)
    margin.target_logit(cos).backward()
    return cos.grad.item()


def test_arcface_exact_gradient_is_derivative_of_cos_theta_plus_m():
    m, c = 0.5, 0.3
    theta = math.acos(c)
    expected = 64.0 * math.sin(theta + m) / math.sin(theta)  # d cos(theta + m) / d cos theta
    assert _slope(margins.ArcFace(scale=64.0, margin=m), c) == pytest.approx(expected, rel=1e-9)


def test_arcface_straight_through_gradient_ignores_the_margin():
    arc = margins.ArcFace(scale=64.0, margin=0.5, straight_through=True)
    assert _slope(arc, 0.3) == pytest.approx(64.0)
    exact = margins.ArcFace(scale=64.0, margin=0.5)
    c = torch.tensor([0.3], dtype=torch.float64)
    assert torch.allclose(arc.target_logit(c), exact.target_logit(c))


def test_arcface_past_pi_falls_back_and_keeps_decreasing():
    arc = margins.ArcFace(scale=1.0, margin=0.5)
    cos = torch.linspace(-1.0, 1.0, 2001, dtype=torch.float64)
    logit = arc.target_logit(cos)
    beyond = torch.acos(cos) + 0.5 > math.pi
    assert torch.allclose(logit[beyond], cos[beyond] - 0.5 * math.sin(0.5))
    assert bool((logit.diff() > 0).all())  # increasing in cos = decreasing in theta


def test_combined_margin_reduces_to_arcface_and_cosface():
    cos = torch.linspace(-0.9, 0.9, 7, dtype=torch.float64)
    arc = margins.ArcFace(scale=30.0, margin=0.4).target_logit(cos)
    assert torch.allclose(margins.CombinedMargin(30.0, 1.0, 0.4, 0.0).target_logit(cos), arc)
    cosface = margins.CosFace(scale=30.0, margin=0.2).target_logit(cos)
    assert torch.allclose(margins.CombinedMargin(30.0, 1.0, 0.0, 0.2).target_logit(cos), cosface)


@pytest.mark.parametrize(
    "make",
    [
        lambda: margins.NormSoftmax(scale=0.0),
        lambda: margins.CosFace(margin=-0.1),
        lambda: margins.ArcFace(margin=4.0),
        lambda: margins.CombinedMargin(m1=0.5),
    ],
)
def test_bad_margin_arguments_raise(make):
    with pytest.raises(ValueError):
        make()
