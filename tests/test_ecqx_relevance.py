"""ECQx: weight relevances (zennit, captum) and the relevance-corrected assignment (spec ecqx-ec2t.md §3)."""

import pytest
import torch
from torch import nn

from ecqx.assign import assign
from ecqx.entropy import size_decay
from ecqx.grid import uniform_grid
from ecqx.relevance import weight_relevances
from ecqx.targets import select_targets


def _small_cnn(batchnorm=True):
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3, padding=1)]
    layers += [nn.BatchNorm2d(4)] if batchnorm else []
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)]
    model = nn.Sequential(*layers)
    if batchnorm:  # non-trivial running statistics
        model.train()
        with torch.no_grad():
            model(torch.randn(16, 3, 6, 6))
    return model


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 5, (8,), generator=g)


def _all_hooks(model):
    hooks = 0
    for module in model.modules():
        hooks += len(module._forward_hooks) + len(module._forward_pre_hooks) + len(module._backward_hooks)
        hooks += len(getattr(module, "_backward_pre_hooks", {}))
    return hooks


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("backend", ["zennit", "captum"])
def test_shapes_hooks_outputs_and_parameters_unchanged(backend, batch):
    model = _small_cnn()
    x, y = batch
    model.train()
    before_state = _snapshot(model)
    with torch.no_grad():
        before_eval = model.eval()(x)
    model.train()
    relevances = weight_relevances(model, x, y, backend=backend)
    assert set(relevances) == {"0.weight", "4.weight"}
    for name, relevance in relevances.items():
        assert relevance.shape == model.get_parameter(name).shape
        assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0
    assert model.training and _all_hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())
    after_state = _snapshot(model)
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), before_eval)


def test_hooks_removed_when_the_forward_fails(batch):
    model = _small_cnn()
    x, y = batch
    model.train()
    with pytest.raises(RuntimeError):
        weight_relevances(model, x[:, :2], y)  # wrong channel count: conv raises inside the hooked forward
    assert _all_hooks(model) == 0 and model.training


@pytest.mark.parametrize("backend", ["zennit", "captum"])
def test_last_linear_layer_relevance_by_hand(backend, batch):
    """Output relevance = true-class logit / B; ε rule at the last layer: R_ij = w_ij Σ_{y_n = i} x_nj / B."""
    model = _small_cnn()
    x, y = batch
    model.eval()
    with torch.no_grad():
        features = model[:4](x)
    one_hot = nn.functional.one_hot(y, 5).to(torch.float32)
    expected = model[4].weight.detach() * (one_hot.T @ features) / x.shape[0]
    relevance = weight_relevances(model, x, y, backend=backend)["4.weight"]
    torch.testing.assert_close(relevance, expected, rtol=1e-4, atol=1e-7)


def test_zennit_conv_relevance_by_hand(batch):
    """conv → ReLU (Pass) → Flatten → Linear (ε): relevance at the conv output, then the ε weight rule."""
    model = _small_cnn(batchnorm=False)
    x, y = batch
    conv, linear = model[0], model[3]
    with torch.no_grad():
        z1 = conv(x)
        a = torch.relu(z1).flatten(1)
        z2 = linear(a)
        seed = nn.functional.one_hot(y, 5) * z2 / x.shape[0]
        stab2 = z2 + 1e-6 * torch.where(z2 >= 0, 1.0, -1.0)
        r_conv_out = (a * ((seed / stab2) @ linear.weight)).view_as(z1)
        stab1 = z1 + 1e-6 * torch.where(z1 >= 0, 1.0, -1.0)
    w = conv.weight.detach().clone().requires_grad_(True)
    z = nn.functional.conv2d(x, w, conv.bias.detach(), padding=1)
    (grad,) = torch.autograd.grad(z, w, grad_outputs=r_conv_out / stab1)
    relevance = weight_relevances(model, x, y)["0.weight"]
    torch.testing.assert_close(relevance, w.detach() * grad, rtol=1e-4, atol=1e-7)


def test_captum_is_gradient_times_weight(batch):
    model = _small_cnn()
    x, y = batch
    model.eval()
    logits = model(x)
    chosen = logits.gather(1, y[:, None]).sum() / x.shape[0]
    grads = torch.autograd.grad(chosen, [model[0].weight, model[4].weight])
    relevance = weight_relevances(model, x, y, backend="captum")
    torch.testing.assert_close(relevance["0.weight"], model[0].weight.detach() * grads[0])
    torch.testing.assert_close(relevance["4.weight"], model[4].weight.detach() * grads[1])


def test_bad_relevance_arguments(batch):
    model = _small_cnn()
    x, y = batch
    with pytest.raises(ValueError, match="backend must be one of"):
        weight_relevances(model, x, y, backend="lime")
    with pytest.raises(ValueError, match="targets must be integer class labels"):
        weight_relevances(model, x, y.float())
    with pytest.raises(ValueError, match="Conv1d/2d/3d and Linear"):
        weight_relevances(model, x, y, names=["1.weight"])
    with pytest.raises(ValueError, match="zennit backend only"):
        weight_relevances(model, x, y, backend="captum", canonizers=[object()])


# --- relevance-corrected assignment -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet20(shared_dir):
    return torch.load(shared_dir / "models" / "resnet20.pt", map_location="cpu")


@pytest.mark.parametrize("value", [1.0, 3.7, -0.2])
def test_uniform_relevance_equals_ecq(resnet20, value):
    weight = resnet20["layer2.1.conv1.weight"]
    grid = uniform_grid(weight, 4)
    ecq = assign(weight, grid, 0.05)
    ecqx = assign(weight, grid, 0.05, relevance=torch.full_like(weight, value))
    assert torch.equal(ecq.indices, ecqx.indices) and ecqx.relevance_flips == 0


def test_band_rule_on_resnet20(resnet20):
    """ECQx sparsity lies in [s_ECQ − p, s_ECQ] for every layer, and the relevance does change assignments."""
    names = select_targets(resnet20)
    n_max = max(resnet20[n].numel() for n in names)
    generator = torch.Generator().manual_seed(7)
    flips = 0
    for mode in ("clean", "faithful"):
        for name in names:
            weight = resnet20[name]
            signs = torch.sign(torch.randn(weight.shape, generator=generator))
            relevance = torch.rand(weight.shape, generator=generator) ** 6 * signs
            grid, decay = uniform_grid(weight, 4, mode), size_decay(weight.numel(), n_max)
            ecq = assign(weight, grid, 0.05, decay, mode)
            ecqx = assign(weight, grid, 0.05, decay, mode, relevance=relevance, p=0.1)
            assert ecq.zero_fraction - 0.1 <= ecqx.zero_fraction <= ecq.zero_fraction
            assert ecqx.zero_fraction_ecq == ecq.zero_fraction
            assert (ecqx.beta is None) == (ecq.zero_fraction <= 0.1)
            changed = int((ecq.indices != ecqx.indices).sum())
            assert changed == ecqx.relevance_flips
            # only the zero decision is touched: a changed weight goes to or comes from the zero cluster
            moved = ecq.indices != ecqx.indices
            zero = grid.zero_index
            assert bool(((ecq.indices[moved] == zero) | (ecqx.indices[moved] == zero)).all())
            flips += changed
    assert flips > 0


def test_ecqx_skipped_when_ecq_sparsity_below_p():
    weight = torch.linspace(-1, 1, 101)
    grid = uniform_grid(weight, 4)
    ecq = assign(weight, grid, 0.0)
    assert ecq.zero_fraction <= 0.5
    relevance = torch.rand(101, generator=torch.Generator().manual_seed(0))
    ecqx = assign(weight, grid, 0.0, relevance=relevance, p=0.5)
    assert torch.equal(ecq.indices, ecqx.indices) and ecqx.beta is None


def test_ecqx_with_zennit_relevances_keeps_band(batch):
    model = _small_cnn()
    x, y = batch
    relevances = weight_relevances(model, x, y)
    weight = model[4].weight.detach()
    grid = uniform_grid(weight, 4)
    ecq = assign(weight, grid, 0.2)
    ecqx = assign(weight, grid, 0.2, relevance=relevances["4.weight"], p=0.1)
    assert ecq.zero_fraction > 0.1 and ecqx.beta is not None
    assert ecq.zero_fraction - 0.1 <= ecqx.zero_fraction <= ecq.zero_fraction
