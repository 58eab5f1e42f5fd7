"""TensorState: exact checkpoint round trip, resume == uninterrupted, plain contents, device move."""

import io

import pytest
import torch
from tensor_state_oracle import TensorState

from ecqx.ste import make_shadow


def _weights():
    return torch.randn(48, 24, generator=torch.Generator().manual_seed(21)) * 0.1


def _new_state(kind):
    w = _weights()
    if kind == "ec2t":
        return TensorState.for_ec2t(w, gamma=0.15)
    return TensorState.for_ecq(w, bits=4, lam=0.05, decay=0.7, relevance=kind == "ecqx")


def _step(state, shadow, step):
    """One simulated training step: quantize, fake gradient, SGD on shadow (and magnitudes), relevance."""
    g = torch.Generator().manual_seed(100 + step)
    quantized = state.requantize(shadow)
    upstream = torch.randn(shadow.shape, generator=g)
    shadow -= 0.01 * state.shadow_gradient(upstream, quantized)
    if state.method == "ec2t":
        with torch.no_grad():
            for magnitude in (state.w_n, state.w_p):
                magnitude -= 1e-3 * magnitude.grad
                magnitude.grad = None
        state.clamp_magnitudes(shadow)
    if state.method == "ecqx":
        state.update_relevance(torch.rand(shadow.shape, generator=g) ** 3)
    return quantized


def _through_checkpoint(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # what a Lightning checkpoint must survive


@pytest.mark.parametrize("kind", ["ecq", "ecqx", "ec2t"])
def test_resume_equals_uninterrupted(kind):
    straight, shadow_a = _new_state(kind), make_shadow(_weights())
    for step in range(6):
        last_a = _step(straight, shadow_a, step)

    first, shadow_b = _new_state(kind), make_shadow(_weights())
    for step in range(3):
        _step(first, shadow_b, step)
    saved = _through_checkpoint({"state": first.state_dict(), "shadow": shadow_b})
    resumed = TensorState.from_state_dict(saved["state"])
    shadow_c = saved["shadow"]
    for step in range(3, 6):
        last_c = _step(resumed, shadow_c, step)

    assert torch.equal(last_a, last_c) and torch.equal(shadow_a, shadow_c)
    a, c = straight.state_dict(), resumed.state_dict()
    assert a.keys() == c.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], c[key]), key
        else:
            assert a[key] == c[key], key


@pytest.mark.parametrize("kind", ["ecq", "ecqx", "ec2t"])
def test_state_dict_holds_only_plain_values(kind):
    state = _new_state(kind)
    _step(state, make_shadow(_weights()), 0)

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, bool | int | float | str | torch.Tensor)

    assert plain(state.state_dict())


def test_load_state_dict_keeps_magnitude_leaves():
    state = _new_state("ec2t")
    w_n = state.w_n
    other = _new_state("ec2t")
    with torch.no_grad():
        other.w_n.add_(0.1)
    state.load_state_dict(other.state_dict())
    assert state.w_n is w_n and state.w_n.requires_grad and state.w_n.item() == other.w_n.item()


def test_to_device_and_missing_keys():
    state = _new_state("ec2t")
    _step(state, make_shadow(_weights()), 0)
    moved = state.to("cpu")
    assert moved is state and state.w_n.is_leaf and state.w_n.requires_grad
    broken = state.state_dict()
    del broken["grid"]
    with pytest.raises(KeyError, match="missing keys"):
        state.load_state_dict(broken)


def test_relevance_running_average():
    state = _new_state("ecqx")
    r1, r2 = torch.full((48, 24), 1.0), torch.full((48, 24), 3.0)
    state.update_relevance(r1)
    state.update_relevance(r2)
    assert torch.allclose(state.relevance, torch.full((48, 24), 0.9 * 3.0 + 0.1 * 1.0))
    state.reset_relevance()
    assert state.relevance is None


def test_bad_arguments():
    w = _weights()
    with pytest.raises(ValueError, match="method must be one of"):
        TensorState(method="ecp", mode="clean", grid=TensorState.for_ecq(w).grid, lam=0.1)
    with pytest.raises(ValueError, match="ste_scale must be one of"):
        TensorState.for_ecq(w, ste_scale="sign")
    with pytest.raises(ValueError, match="frozen-assignment"):
        TensorState.for_ecq(w).freeze()
    with pytest.raises(RuntimeError, match="requantize"):
        TensorState.for_ecq(w).export()


@pytest.mark.parametrize("mode", ["clean", "faithful"])
@pytest.mark.parametrize("kind", ["ecq", "ecqx", "ec2t"])
def test_trained_values_are_the_exported_values_in_both_modes(kind, mode):
    # faithful mode keeps the reference's pmf/λ rules but never trains on an unsnapped step: what the model
    # holds after every re-assignment is exactly what an NNC decoder reconstructs from export()
    w = _weights()
    if kind == "ec2t":
        state = TensorState.for_ec2t(w, gamma=0.15, mode=mode)
    else:
        state = TensorState.for_ecq(w, bits=4, lam=0.05, mode=mode, relevance=kind == "ecqx")
    assert state.grid.snapped
    shadow = make_shadow(w)
    for step in range(4):
        quantized = _step(state, shadow, step)
        exported = state.export()
        assert torch.equal(exported.dequantize(), quantized), step
        # float64 product of integer level and NNC step: the float32 values are exact grid points
        assert torch.equal(quantized.double(), exported.levels.double() * exported.step), step
        assert torch.equal(exported.levels, state.levels())
        assert (exported.codebook is not None) == (kind == "ec2t")


def test_faithful_grid_is_the_reference_step_snapped():
    from ecqx.grid import snap_grid, uniform_grid

    w = _weights()
    reference = uniform_grid(w, 4, "faithful")
    assert not reference.snapped  # the reference's raw step
    state = TensorState.for_ecq(w, bits=4, mode="faithful")
    assert state.grid == snap_grid(reference)
    with pytest.raises(ValueError, match="not snapped to an NNC step"):
        TensorState(method="ecq", mode="faithful", grid=reference, lam=0.05)


def test_ec2t_frozen_phase_steps_only_the_magnitudes():
    state = _new_state("ec2t")
    shadow = make_shadow(_weights())
    quantized = state.requantize(shadow)
    upstream = torch.randn(shadow.shape, generator=torch.Generator().manual_seed(5))
    assert state.shadow_gradient(upstream, quantized) is not None
    state.w_n.grad = state.w_p.grad = None
    state.freeze()
    assert state.shadow_gradient(upstream, quantized) is None  # the shadow is not stepped when frozen
    positive = state.indices == 2
    assert state.w_p.grad.item() == pytest.approx(upstream[positive].sum().item(), rel=1e-5)
    kept = state.indices.clone()
    state.requantize(shadow + 0.5)
    assert torch.equal(state.indices, kept) and state.lam_layer == 0.0
