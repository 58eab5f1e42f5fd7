"""The grouped quantizer state against the per-tensor oracle, step by step, and its own contracts.

The oracle (:mod:`tensor_state_oracle`) is the per-tensor ``TensorState`` the callbacks used before the
grouped
state. Both run the same training-step protocol on the same random tensors (20 tensors of mixed sizes and
signs)
for several steps — straight-through gradients, an SGD step on the shadows, ECQx running relevances, EC2T's
magnitude Adam step and floor, a frozen EC2T phase — and must agree bit for bit after every step.
"""

from __future__ import annotations

import pytest
import torch
from tensor_state_oracle import TensorState

import ecqx.grouped
from ecqx.entropy import size_decay
from ecqx.group_state import TernaryGroup, UniformGroup
from ecqx.layout import FlatLayout

STEPS = 6
LR = 0.05


def _weights(seed: int, count: int = 20, unsigned: bool = True) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        shape = (int(torch.randint(1, 30, (1,), generator=g)), int(torch.randint(2, 50, (1,), generator=g)))
        w = torch.randn(shape, generator=g) * (0.02 + torch.rand(1, generator=g).item())
        out.append(w.abs() if unsigned and i % 7 == 3 else w)  # some unsigned grids (not for EC2T)
    return out


def _drive(kind, weights, mode, seed, oracle: bool):
    """Run STEPS training steps; return the quantized values, levels, shadows (and magnitudes) per step."""
    g = torch.Generator().manual_seed(seed + 1)
    names = [f"t{i}" for i in range(len(weights))]
    largest = max(w.numel() for w in weights)
    if oracle:
        if kind == "ec2t":
            states = [
                TensorState.for_ec2t(w, gamma=0.15, decay=size_decay(w.numel(), largest), mode=mode)
                for w in weights
            ]
        else:
            states = [
                TensorState.for_ecq(
                    w,
                    bits=4,
                    lam=0.2,
                    decay=size_decay(w.numel(), largest),
                    mode=mode,
                    relevance=kind == "ecqx",
                    p=0.05,
                )
                for w in weights
            ]
        shadows = [w.clone() for w in weights]
        quantized = [s.requantize(sh) for s, sh in zip(states, shadows, strict=True)]
        adam = (
            torch.optim.Adam([m for s in states for m in (s.w_n, s.w_p)], lr=1e-3) if kind == "ec2t" else None
        )
    else:
        shapes = [w.shape for w in weights]
        if kind == "ec2t":
            group = TernaryGroup(names, shapes, gamma=0.15, mode=mode)
        else:
            group = UniformGroup(names, shapes, bits=4, lam=0.2, mode=mode, relevance=kind == "ecqx", p=0.05)
        group.initialise(weights)
        adam = torch.optim.Adam([group.magnitudes], lr=1e-3) if kind == "ec2t" else None
    history = []
    for step in range(STEPS):
        grads = [torch.randn(w.shape, generator=g) for w in weights]
        relevances = [torch.randn(w.shape, generator=g).abs() ** 3 for w in weights]
        if kind == "ec2t" and step == STEPS - 2:
            for s in states if oracle else [group]:
                s.freeze()
        if oracle:
            for i, s in enumerate(states):
                sg = s.shadow_gradient(grads[i], quantized[i])
                if sg is not None:
                    shadows[i] -= LR * sg
                if kind == "ecqx":
                    s.update_relevance(relevances[i])
            if adam is not None:
                adam.step()
                adam.zero_grad(set_to_none=True)
                for s, sh in zip(states, shadows, strict=True):
                    s.clamp_magnitudes(sh)
            quantized = [s.requantize(sh) for s, sh in zip(states, shadows, strict=True)]
            record = {
                "q": [q.clone() for q in quantized],
                "levels": [s.levels() for s in states],
                "shadow": [sh.clone() for sh in shadows],
            }
            if kind == "ec2t":
                record["magnitudes"] = torch.stack([torch.stack([s.w_n, s.w_p]) for s in states]).detach()
        else:
            torch._foreach_copy_(group.grad_views, grads)
            if group.shadow_gradient():
                for shadow, grad in zip(group.shadow_views, group.grad_views, strict=True):
                    shadow -= LR * grad  # the oracle's update, op for op
            if kind == "ecqx":
                group.update_relevance(group.layout.flatten(relevances))
            if adam is not None:
                adam.step()
                adam.zero_grad(set_to_none=True)
                group.clamp_magnitudes()
            group.requantize()
            levels = group.levels()
            record = {
                "q": [v.clone() for v in group.quantized_views],
                "levels": [levels[n] for n in names],
                "shadow": [v.clone() for v in group.shadow_views],
            }
            if kind == "ec2t":
                record["magnitudes"] = group.magnitudes.detach().clone()
        history.append(record)
    return history


@pytest.fixture(params=["grouped", "per_tensor"])
def path(request, monkeypatch):
    """Both implementations of the group assignment (``ecqx.grouped.PATH``)."""
    monkeypatch.setattr(ecqx.grouped, "PATH", request.param)
    return request.param


@pytest.mark.parametrize("mode", ["clean", "faithful"])
@pytest.mark.parametrize("kind", ["ecq", "ecqx", "ec2t"])
def test_grouped_steps_equal_the_per_tensor_oracle(kind, mode, path):
    weights = _weights(seed=11 + len(kind), unsigned=kind != "ec2t")
    expected = _drive(kind, weights, mode, seed=5, oracle=True)
    got = _drive(kind, weights, mode, seed=5, oracle=False)
    for step, (e, o) in enumerate(zip(expected, got, strict=True)):
        for field in e:
            values = e[field] if isinstance(e[field], list) else [e[field]]
            others = o[field] if isinstance(o[field], list) else [o[field]]
            for i, (a, b) in enumerate(zip(values, others, strict=True)):
                assert torch.equal(a, b.reshape(a.shape)), f"step {step}, {field}, tensor {i}"


@pytest.mark.parametrize("kind", ["ecq", "ecqx", "ec2t"])
def test_state_dict_round_trip_is_exact(kind, path):
    weights = _weights(seed=3, count=5, unsigned=kind != "ec2t")
    names = [f"w{i}" for i in range(5)]
    shapes = [w.shape for w in weights]
    make = (
        (lambda: TernaryGroup(names, shapes))
        if kind == "ec2t"
        else (lambda: UniformGroup(names, shapes, relevance=kind == "ecqx"))
    )
    group = make()
    group.initialise(weights)
    if kind == "ecqx":
        group.update_relevance(group.layout.flatten([w.abs() for w in weights]))
    group.requantize()
    state = group.state_dict()
    assert set(state["tensors"]) == set(names)
    restored = make()
    restored.load_state_dict(state)

    def same(a, b):  # the tensors' parts of two flat buffers (the padding between them is not state)
        views = zip(group.layout.views(a), group.layout.views(b), strict=True)
        return all(torch.equal(x, y) for x, y in views)

    assert same(restored.quantized, group.quantized)
    assert same(restored.shadow, group.shadow)
    for name in names:
        assert torch.equal(restored.levels()[name], group.levels()[name])
    restored.requantize()
    group.requantize()
    assert same(restored.quantized, group.quantized)
    assert {n: q.dequantize() for n, q in restored.export().items()}.keys() == set(names)
    for name, view in zip(names, group.quantized_views, strict=True):
        assert torch.equal(group.export()[name].dequantize(), view)


def test_load_state_dict_names_missing_tensors_and_fields():
    weights = _weights(seed=4, count=3)
    group = UniformGroup(["a", "b", "c"], [w.shape for w in weights])
    group.initialise(weights)
    state = group.state_dict()
    other = UniformGroup(["a", "b", "d"], [w.shape for w in weights])
    with pytest.raises(ValueError, match="quantizes"):
        other.load_state_dict(state)
    del state["tensors"]["b"]["grid"]
    with pytest.raises(KeyError, match="'b' lacks"):
        group.load_state_dict(state)


def test_bad_group_arguments_are_named():
    with pytest.raises(ValueError, match="lam must be a finite number"):
        UniformGroup(["a"], [(3, 3)], lam=float("inf"))
    with pytest.raises(ValueError, match="empty"):
        UniformGroup(["a", "b"], [(3, 3), (0, 4)])
    group = UniformGroup(["a"], [(3, 3)])
    with pytest.raises(ValueError, match="'a' contains NaN"):
        group.initialise([torch.full((3, 3), float("nan"))])
    with pytest.raises(ValueError, match="shape"):
        group.initialise([torch.randn(4, 3)])


def test_segment_reductions_match_per_tensor_ones():
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(n, generator=g) for n in (1, 5, 1024, 1025, 3000)]
    layout = FlatLayout([t.shape for t in tensors], block=64)
    flat = layout.flatten(tensors)
    assert layout.amin(flat).tolist() == [t.min().item() for t in tensors]
    assert layout.amax(flat).tolist() == [t.max().item() for t in tensors]
    sums = layout.sum(flat)
    for s, t in zip(sums.tolist(), tensors, strict=True):
        assert s == pytest.approx(t.double().sum().item(), rel=1e-12, abs=1e-12)
    stds = layout.std(flat)
    for s, t in zip(stds.tolist()[1:], tensors[1:], strict=True):
        assert s == pytest.approx(t.double().std().item(), rel=1e-12)
    counts = layout.count_true(flat > 0)
    assert counts.tolist() == [int((t > 0).sum()) for t in tensors]
    assert layout.size % 64 == 0 and all(o % 64 == 0 for o in layout.offsets)
