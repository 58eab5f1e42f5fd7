"""ECQ of model updates with error feedback (``ecqx.UpdateQuantizer``), their reconstruction
(``ecqx.coding.apply_updates``) and the ``NNCUpdates`` callback (base + update streams during training,
bit-exact rebuild, resume with identical bytes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from callback_helpers import synthetic_loader, tiny_module, tiny_trainer
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from ecqx import UpdateQuantizer, nnc_step_size, update_grid
from ecqx.callbacks import ECQ, NNCUpdates
from ecqx.coding import BitstreamError, UpdateEncoder, apply_updates, decode_state_dict
from ecqx.training.report import build_report, format_report, place_outputs_in_run_folder
from ecqx.updates import qp_limits


def _drift(seed=0, rounds=4):
    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(24, 16, generator=g), "b": torch.randn(16, generator=g),
            "n": torch.tensor(7, dtype=torch.int64)}
    states, cur = [], {k: v.clone() for k, v in base.items()}
    for _ in range(rounds):
        cur = {"w": cur["w"] + 0.02 * torch.randn(24, 16, generator=g),
               "b": cur["b"] + 0.01 * torch.randn(16, generator=g), "n": cur["n"] + 3}
        states.append(cur)
    return base, states


# ------------------------------------------------------------------------------------------------ maths
def test_update_grid_is_an_nnc_step_within_the_stream_range():
    delta = torch.randn(50, 7) * 1e-3
    grid = update_grid(delta, bits=4, qp_density=3)
    assert grid.qp_density == 3 and grid.step == nnc_step_size(grid.qp, 3)
    assert abs(grid.step - grid.raw_step) <= grid.raw_step / 2 ** 3
    assert grid.levels == tuple(range(-7, 9)) or grid.levels == tuple(range(-8, 8))
    tiny = update_grid(torch.full((4, 4), 1e-30), bits=4, qp_density=2)
    assert tiny.qp == qp_limits(2)[0]  # clamped: the stream cannot carry a finer step


def test_quantize_advances_the_reference_by_exactly_the_dequantized_levels():
    base, states = _drift()
    q = UpdateQuantizer(base, bits=4, lam=0.1)
    before = {k: v.clone() for k, v in q.reference.items()}
    out = q.quantize(states[0])
    assert torch.equal(q.reference["w"], before["w"] + out["w"].dequantize())
    assert torch.equal(q.reference["b"], before["b"] + out["b"].dequantize())
    assert out["n"].dtype == torch.int64 and int(out["n"]) == 3 and int(q.reference["n"]) == 10
    # the residual is exactly what the receiver is still missing
    res = q.residual(states[0])
    assert torch.allclose(q.reference["w"] + res["w"], states[0]["w"], rtol=0, atol=1e-6)


def test_error_feedback_carries_what_was_dropped_into_the_next_update():
    base, states = _drift()
    q = UpdateQuantizer(base, bits=2, lam=0.5)  # coarse: a lot is dropped each time
    q.quantize(states[0])
    left = q.residual(states[0])["w"]
    assert float(left.abs().max()) > 0
    # no change of the model: the next update sends (part of) the residual, and the residual shrinks
    out = q.quantize(states[0])
    assert bool(out["w"].levels.any())
    assert float(q.residual(states[0])["w"].norm()) < float(left.norm())
    # repeating converges towards the model
    for _ in range(20):
        q.quantize(states[0])
    assert float(q.residual(states[0])["w"].abs().max()) < 0.1 * float(left.abs().max())


def test_entropy_weight_trades_nonzeros_for_distortion():
    base, states = _drift()
    counts = []
    for lam in (0.0, 0.5):
        q = UpdateQuantizer(base, bits=4, lam=lam)
        counts.append(int((q.quantize(states[0])["w"].levels != 0).sum()))
    assert counts[1] < counts[0]


def test_size_decay_false_gives_every_tensor_the_same_entropy_weight():
    # "big" holds 64 copies of "small"'s values: the same percentile, grid and level frequencies, so with one
    # weight for both every value gets the same level in either tensor
    g = torch.Generator().manual_seed(3)
    small = torch.randn(8, 8, generator=g) * 1e-2
    big = small.repeat(8, 8)
    base = {"big": torch.zeros(64, 64), "small": torch.zeros(8, 8)}
    current = {"big": big, "small": small}
    uniform = UpdateQuantizer(base, bits=3, lam=0.4, size_decay=False).quantize(current)
    assert torch.equal(uniform["big"].levels[:8, :8], uniform["small"].levels)
    assert uniform["big"].qp == uniform["small"].qp
    # ECQ's layer rule: the small tensor's weight is scaled down (decay < 1), so it keeps more nonzeros
    scaled = UpdateQuantizer(base, bits=3, lam=0.4).quantize(current)
    assert torch.equal(scaled["big"].levels, uniform["big"].levels)  # the largest tensor: decay 1 either way
    assert int(scaled["small"].levels.count_nonzero()) > int(uniform["small"].levels.count_nonzero())


def test_state_dict_without_size_decay_loads_as_the_scaled_rule():
    base, states = _drift()
    old = UpdateQuantizer(base, bits=4, lam=0.1)
    old.quantize(states[0])
    state = old.state_dict()
    del state["options"]["size_decay"]  # a state_dict written before the option existed
    resumed = UpdateQuantizer(base, bits=4, lam=0.1)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.reference["w"], old.reference["w"])
    with pytest.raises(ValueError, match="size_decay"):
        UpdateQuantizer(base, bits=4, lam=0.1, size_decay=False).load_state_dict(state)
    with pytest.raises(TypeError, match="size_decay"):
        UpdateQuantizer(base, size_decay="no")


def test_codec_rebuild_is_bit_exact_and_state_resumes():
    base, states = _drift(rounds=5)
    q = UpdateQuantizer(base, bits=4, lam=0.05)
    enc = UpdateEncoder(qp_density=2, tca=True, row_skipping=True)
    streams = [enc.encode(q.quantize(s)) for s in states]
    rebuilt = apply_updates(base, streams)
    for name in base:
        assert torch.equal(rebuilt[name], q.reference[name]), name
    # resume after 2 updates: same bytes for the rest
    q2 = UpdateQuantizer(base, bits=4, lam=0.05)
    enc2 = UpdateEncoder(qp_density=2, tca=True, row_skipping=True)
    for s in states[:2]:
        enc2.encode(q2.quantize(s))
    q3 = UpdateQuantizer(base, bits=4, lam=0.05)
    q3.load_state_dict(q2.state_dict())
    enc3 = UpdateEncoder(qp_density=2, tca=True, row_skipping=True)
    enc3.load_state_dict(enc2.state_dict())
    assert [enc3.encode(q3.quantize(s)) for s in states[2:]] == streams[2:]
    # updates out of order are refused by the decoder
    with pytest.raises(BitstreamError):
        apply_updates(base, [streams[0], streams[2]])


def test_quantizer_rejects_mismatching_state():
    base, states = _drift()
    q = UpdateQuantizer(base, bits=4)
    with pytest.raises(ValueError, match="missing"):
        q.quantize({"w": states[0]["w"]})
    other = UpdateQuantizer(base, bits=3)
    with pytest.raises(ValueError, match="bits"):
        other.load_state_dict(q.state_dict())


# ------------------------------------------------------------------------------------------------ callback
EPOCHS = 4


class _Snapshot(Callback):
    """Records the model state right after each NNCUpdates update (runs after it in the list)."""

    def __init__(self):
        self.states = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def _fit(folder, epochs=EPOCHS, ckpt_path=None, extra=(), quantize=False, **trainer_args):
    updates = NNCUpdates(folder, every_n_epochs=1, bits=4, lam=0.05, tca=True)
    snap = _Snapshot()
    callbacks = ([ECQ(bits=4, lam=0.1, start_epoch=0)] if quantize else []) + [updates, snap, *extra]
    module = tiny_module(seed=0)
    trainer = tiny_trainer(callbacks, max_epochs=epochs, **trainer_args)
    trainer.fit(module, synthetic_loader(), synthetic_loader(n=64, seed=5), ckpt_path=ckpt_path)
    return module, updates, snap


@pytest.mark.parametrize("quantize", [False, True])
def test_callback_rebuild_equals_the_accounted_state(tmp_path, quantize):
    module, updates, snap = _fit(tmp_path / "run", quantize=quantize)
    assert [p.split("/")[-1] for p in updates.files] == ["base.nnc"] + [
        f"update-{i:04d}.nnc" for i in range(1, EPOCHS + 1)]
    rebuilt = apply_updates(updates.base_path, updates.update_paths)
    accounted = updates.reference_state()
    assert set(rebuilt) == set(accounted) == set(module.state_dict())
    for name in accounted:
        assert torch.equal(rebuilt[name], accounted[name]), name
    # close to the trained model, and the gap is exactly the error-feedback residual
    residual = updates.residual(module)
    trained = module.state_dict()
    total_change = 0.0
    base = decode_state_dict(updates.base_path)
    for name, value in trained.items():
        if value.is_floating_point():
            assert torch.allclose(rebuilt[name] + residual[name], value, rtol=0, atol=1e-6), name
            total_change = max(total_change, float((value - base[name]).abs().max()))
        else:
            assert torch.equal(rebuilt[name], value.to(torch.int64)), name
    worst = max(float(r.abs().max()) for r in residual.values() if r.is_floating_point())
    assert worst == updates.results[-1]["residual_max"]
    assert worst < 0.5 * total_change
    # a model loads the rebuilt state
    fresh = tiny_module(seed=1)
    fresh.load_state_dict(rebuilt, strict=True)
    # each update is far smaller than float32
    assert all(r["bytes"] < 0.25 * r["float32_bytes"] for r in updates.results[1:])


def test_callback_prefix_of_updates_rebuilds_each_epoch(tmp_path):
    module, updates, snap = _fit(tmp_path / "run", epochs=3)
    # after k updates, the receiver holds the reference of epoch k; the model snapshot of that epoch differs
    # from it by less than the model moved since the base
    rebuilt_1 = apply_updates(updates.base_path, updates.update_paths[:1])
    rebuilt_3 = apply_updates(updates.base_path, updates.update_paths)
    err_1 = max(float((rebuilt_1[k] - v).abs().max()) for k, v in snap.states[0].items()
                if v.is_floating_point())
    err_3 = max(float((rebuilt_3[k] - v).abs().max()) for k, v in snap.states[2].items()
                if v.is_floating_point())
    assert err_1 < 0.05 and err_3 < 0.05


def test_callback_pattern_path(tmp_path):
    _, updates, _ = _fit(str(tmp_path / "p" / "u{index:02d}-e{epoch}.nnc"), epochs=2)
    names = [p.split("/")[-1] for p in updates.files]
    assert names == ["u00-e0.nnc", "u01-e0.nnc", "u02-e1.nnc"]


def test_callback_resume_continues_with_identical_bytes(tmp_path):
    _, full, _ = _fit(tmp_path / "full", enable_checkpointing=False)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1,
                                 filename="{epoch}")
    _fit(tmp_path / "part", epochs=2, extra=[checkpoint], enable_checkpointing=True)
    ckpt = tmp_path / "ckpt" / "epoch=1.ckpt"
    assert ckpt.exists()
    _, resumed, _ = _fit(tmp_path / "part", ckpt_path=str(ckpt), enable_checkpointing=True,
                         default_root_dir=tmp_path)
    assert len(resumed.files) == len(full.files) == EPOCHS + 1
    for a, b in zip(full.files, resumed.files, strict=True):
        with open(a, "rb") as fa, open(b, "rb") as fb:
            assert fa.read() == fb.read(), (a, b)
    rebuilt = apply_updates(resumed.base_path, resumed.update_paths)
    for name, value in resumed.reference_state().items():
        assert torch.equal(rebuilt[name], value)


def test_callback_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="every_n_epochs"):
        NNCUpdates(tmp_path, every_n_epochs=0)
    with pytest.raises(ValueError, match="bits"):
        NNCUpdates(tmp_path, bits=9)
    with pytest.raises(ValueError, match="index"):
        NNCUpdates(str(tmp_path / "u{epoch}.nnc"))
    with pytest.raises(ValueError, match="fields"):
        NNCUpdates(str(tmp_path / "u{round}.nnc"))


def test_callback_refuses_to_mix_with_another_runs_stream(tmp_path):
    """A second run into the same folder would overwrite the base and some updates and leave the first run's
    later updates next to them: a receiver would apply them to the wrong base."""
    _, first, _ = _fit(tmp_path / "run", epochs=2)
    before = {path: Path(path).read_bytes() for path in first.files}
    with pytest.raises(ValueError, match=r"already has the stream files of another run \(base.nnc, "
                                         r"update-0001.nnc, update-0002.nnc\)"):
        _fit(tmp_path / "run", epochs=1)
    assert {path: Path(path).read_bytes() for path in first.files} == before
    pattern = str(tmp_path / "p" / "u{index:02d}-e{epoch}.nnc")
    _fit(pattern, epochs=1)
    with pytest.raises(ValueError, match=r"u00-e0.nnc, u01-e0.nnc"):
        _fit(pattern, epochs=1)
    _fit(tmp_path / "p" / "other-{index}.nnc", epochs=1)  # another pattern in that folder: another stream


def test_relative_path_goes_into_the_run_folder_and_the_report_lists_the_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    updates = NNCUpdates("updates/", every_n_epochs=1, bits=4, lam=0.05)
    trainer = tiny_trainer([updates], max_epochs=2, logger=CSVLogger(tmp_path / "logs", name="r"))
    folder = place_outputs_in_run_folder(trainer)
    assert folder == tmp_path / "logs" / "r" / "version_0"
    trainer.fit(tiny_module(seed=0), synthetic_loader(), synthetic_loader(n=64, seed=5))
    assert [Path(p).relative_to(folder).as_posix() for p in updates.files] == [
        "updates/base.nnc", "updates/update-0001.nnc", "updates/update-0002.nnc"]
    assert not (tmp_path / "updates").exists()
    report = build_report(trainer)
    assert report.files["update stream base"] == [str(folder / "updates" / "base.nnc")]
    assert report.files["update stream"] == [str(folder / "updates" / f"update-000{i}.nnc") for i in (1, 2)]
    assert "updates/update-0002.nnc" in format_report(report)
    # the checkpoint state keeps the name of the path as given: a resumed run finds it
    assert updates.state_key == NNCUpdates("updates/", every_n_epochs=1, bits=4, lam=0.05).state_key
