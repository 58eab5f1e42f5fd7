"""Shadow weights are real copies; straight-through gradient scaling (spec ecqx-ec2t.md §2.4, P1/P2)."""

import pytest
import torch

from ecqx.ste import default_ste_scale, make_shadow, ste_gradient


def test_shadow_is_a_separate_copy():
    weight = torch.nn.Parameter(torch.randn(4, 5))
    shadow = make_shadow(weight)
    assert shadow.data_ptr() != weight.data_ptr() and not shadow.requires_grad
    assert torch.equal(shadow, weight.detach())
    with torch.no_grad():
        weight.zero_()
    assert shadow.abs().sum() > 0
    view = torch.randn(10)[::2]
    assert make_shadow(view).is_contiguous()


def test_gradient_scaling_by_hand():
    q = torch.tensor([-0.2, 0.0, 0.1, 0.3])
    g = torch.tensor([1.0, 2.0, -3.0, 4.0])
    assert ste_gradient(g, q, "abs").tolist() == pytest.approx([0.2, 2.0, -0.3, 1.2])
    assert ste_gradient(g, q, "signed").tolist() == pytest.approx([-0.2, 2.0, -0.3, 1.2])
    identity = ste_gradient(g, q, "identity")
    assert torch.equal(identity, g) and identity.data_ptr() != g.data_ptr()


def test_mode_defaults_and_errors():
    assert default_ste_scale("clean") == "abs" and default_ste_scale("faithful") == "signed"
    with pytest.raises(ValueError, match="scale must be one of"):
        ste_gradient(torch.ones(2), torch.ones(2), "sign")
    with pytest.raises(ValueError, match="grad shape"):
        ste_gradient(torch.ones(2), torch.ones(3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        make_shadow([1.0])
