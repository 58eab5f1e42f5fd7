"""End to end: a tiny model trained with each callback, exported, decoded by NNCodec 2.1.3 and by us."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from callback_helpers import params, synthetic_loader, tiny_module, tiny_trainer

from ecqx.callbacks import EC2T, ECQ, ECQx, NNCExport, RateDistortion
from ecqx.callbacks.nnc_export import check_decoded_equal, decode_into_copy
from ecqx.callbacks.rate_distortion import COLUMNS, plot_rate_distortion, rate_distortion_figure
from ecqx.coding import decode_state_dict

FACTORIES = {
    "ecq": lambda: ECQ(bits=4, lam=0.1, start_epoch=1),
    "ecqx": lambda: ECQx(bits=4, lam=0.1, start_epoch=1),
    "ec2t": lambda: EC2T(lam=0.15, freeze_epoch=2),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(FACTORIES))
def test_trained_model_decodes_identically_with_nncodec_and_ecqx(method, tmp_path, oracle):
    module, quantizer = tiny_module(), FACTORIES[method]()
    export, report = NNCExport(tmp_path / "model.nnc"), RateDistortion(tmp_path / "rd")
    trainer = tiny_trainer([quantizer, export, report], max_epochs=3)
    trainer.fit(module, synthetic_loader(), synthetic_loader(n=64, seed=7))

    data = (tmp_path / "model.nnc").read_bytes()
    trained = module.state_dict()
    ours = decode_state_dict(data)
    assert set(ours) == set(trained)
    theirs = oracle.decode_values(data)
    for name in quantizer.targets:  # the quantized weights: bit-exact everywhere
        assert torch.equal(ours[name], trained[name]), name
        assert np.array_equal(np.asarray(theirs[name], dtype=np.float32), trained[name].numpy()), name
    for name, value in trained.items():  # everything else: a step of 2^-10 of the tensor's largest magnitude
        bound = float(value.float().abs().max()) * 2**-11
        torch.testing.assert_close(ours[name].to(value.dtype), value, rtol=0, atol=bound)
        assert np.array_equal(np.asarray(theirs[name]).reshape(value.shape), ours[name].numpy()), name

    result = export.last_result
    assert result.nnc_bytes == len(data) and result.float32_bytes == 4 * sum(
        v.numel() for v in trained.values()
    )
    metrics = trainer.callback_metrics
    assert float(metrics["nnc_bytes"]) == len(data)
    assert float(metrics["nnc_ratio"]) == pytest.approx(len(data) / result.float32_bytes)
    # the decoded model evaluated with the module's own validation_step == the trained model's own evaluation
    expected = module.evaluate(synthetic_loader(n=64, seed=7))
    assert float(metrics["nnc_val_acc"]) == pytest.approx(expected["acc"])
    assert float(metrics["nnc_val_loss"]) == pytest.approx(expected["loss"], rel=1e-5)

    rows = list(csv.DictReader((tmp_path / "rd" / "rate_distortion.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert float(rows[-1]["sparsity"]) == pytest.approx(quantizer.summary()["sparsity"])
    # the final export (written after the last epoch's row) is the last row's real size and decoded accuracy
    assert float(rows[-1]["nnc_bytes"]) == len(data)
    assert float(rows[-1]["nnc_accuracy"]) == pytest.approx(float(metrics["nnc_val_acc"]))
    assert [r["nnc_bytes"] for r in rows[:-1]] == ["nan", "nan"]
    assert (tmp_path / "rd" / "rate_distortion.png").stat().st_size > 1000


def test_export_warns_when_nothing_was_quantized(tmp_path):
    late = NNCExport(tmp_path / "late.nnc", evaluate=False)
    trainer = tiny_trainer([ECQ(bits=4, lam=0.1, start_epoch=5), late], max_epochs=2, limit_train_batches=1)
    with pytest.warns(UserWarning, match=r"late.nnc holds no quantized tensor: ECQ\(start_epoch=5\) never "
                      r"started: the run ended after 2 epoch\(s\) of full-precision warm-up"):
        trainer.fit(tiny_module(), synthetic_loader())
    assert late.last_result.num_quantized == 0

    plain = NNCExport(tmp_path / "plain.nnc", evaluate=False)
    with pytest.warns(UserWarning, match=r"plain.nnc holds no quantized tensor: the trainer has no quantiz"):
        tiny_trainer([plain], max_epochs=1, limit_train_batches=1).fit(tiny_module(), synthetic_loader())


def test_plot_marks_the_nnc_file_and_the_full_precision_reference(tmp_path, monkeypatch):
    import matplotlib

    def refuse(*args, **kwargs):
        raise AssertionError("matplotlib.use() changes the backend of the user's whole process")

    monkeypatch.setattr(matplotlib, "use", refuse)
    path = tmp_path / "rd.csv"
    rows = [
        {"epoch": 0, "lam": 0.1, "accuracy": 0.90, "float32_bytes": 40960},  # warm-up: no size yet
        {"epoch": 1, "lam": 0.1, "accuracy": 0.93, "estimated_bytes": 2048, "fp_accuracy": 0.90,
         "float32_bytes": 40960},
        {"epoch": 2, "lam": 0.1, "accuracy": 0.95, "estimated_bytes": 1900, "fp_accuracy": 0.90,
         "float32_bytes": 40960, "nnc_bytes": 2304, "nnc_accuracy": 0.95},
    ]  # fmt: skip
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, restval="nan")
        writer.writeheader()
        writer.writerows(rows)
    figure = rate_distortion_figure([path], labels=[""], title="run 7: ECQ 4 bit")
    axes = figure.axes[0]
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert ".nnc file (decoded): 2.25 KiB, 95.00 %" in legend
    estimate = next(line for line in axes.lines if line.get_label().startswith("quantized model"))
    assert list(estimate.get_xdata()) == [2.0, 1900 / 1024]  # KiB; the warm-up row has no size
    assert [t.get_text() for t in axes.texts if t.get_text() in ("1", "2")] == ["1", "2"]  # epoch labels
    assert any(list(line.get_ydata()) == [90.0, 90.0] and line.get_linestyle() == "--" for line in axes.lines)
    assert "full precision: 90.00 %" in [t.get_text() for t in axes.texts]
    assert figure._suptitle.get_text() == "run 7: ECQ 4 bit"
    assert axes.get_xlabel().startswith("size [KiB]")
    top = axes.child_axes[0]  # the secondary axis: size as % of float32
    assert "% of float32 (40.0 KiB" in top.get_xlabel()
    assert top.get_xaxis().get_transform().transform([10.0])[0] == pytest.approx(4.0)  # 10 % = 4 KiB
    assert plot_rate_distortion([path], tmp_path / "rd.png").stat().st_size > 10_000


def test_a_decoded_model_that_differs_from_the_trained_one_raises(tmp_path):
    module, quantizer, export = (
        tiny_module(),
        ECQ(bits=4, lam=0.1),
        NNCExport(tmp_path / "m.nnc", evaluate=False),
    )
    tiny_trainer([quantizer, export], max_epochs=1, limit_train_batches=2).fit(module, synthetic_loader())
    decoded = decode_into_copy(module, (tmp_path / "m.nnc").read_bytes())
    check_decoded_equal(decoded, module, quantizer.quantized_tensors())  # the real export passes
    with torch.no_grad():
        decoded.model.fc2.weight[0, 0] += quantizer.quantized_tensors()["model.fc2.weight"].step
    with pytest.raises(
        RuntimeError, match=r"decoded 'model.fc2.weight' differs from the trained weights in 1 of"
    ):
        check_decoded_equal(decoded, module, quantizer.quantized_tensors())


def test_periodic_exports_are_written_per_epoch(tmp_path):
    module = tiny_module()
    export = NNCExport(tmp_path / "m.nnc", every_n_epochs=2, evaluate=False)
    tiny_trainer([ECQ(bits=4, lam=0.1), export], max_epochs=4, limit_train_batches=1).fit(
        module, synthetic_loader()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-epoch=1.nnc", "m-epoch=3.nnc", "m.nnc"]
    assert [r.epoch for r in export.results] == [1, 3, 4]
    assert params(module)["model.fc1.weight"].equal(
        decode_state_dict((tmp_path / "m.nnc").read_bytes())["model.fc1.weight"]
    )


def test_export_path_problems_fail_before_training(tmp_path):
    module = tiny_module()
    with pytest.raises(ValueError, match=r"is a directory; pass a file path"):
        tiny_trainer([NNCExport(tmp_path, evaluate=False)], max_epochs=1).fit(module, synthetic_loader())
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    with pytest.raises(ValueError, match=r"cannot create the folder of `path`"):
        tiny_trainer([NNCExport(blocker / "m.nnc", evaluate=False)], max_epochs=1).fit(module,
                                                                                        synthetic_loader())
    assert module.trainer.global_step == 0  # the check fails before the first training step


def test_export_without_its_evaluation_loader_fails_before_training(tmp_path):
    module = tiny_module()
    export = NNCExport(tmp_path / "m.nnc")  # evaluate=True on the val loader, which fit does not get
    with pytest.raises(ValueError, match=r"evaluates the decoded model on the val loader, but neither"):
        tiny_trainer([export], max_epochs=1).fit(module, synthetic_loader())
    assert module.trainer.global_step == 0
    test_export = NNCExport(tmp_path / "m.nnc", stage="test")
    with pytest.raises(ValueError, match=r"on the test loader"):
        tiny_trainer([test_export], max_epochs=1).fit(module, synthetic_loader(), synthetic_loader())
    evaluated = NNCExport(tmp_path / "m.nnc")  # a val loader given to fit is found
    tiny_trainer([evaluated], max_epochs=1, limit_train_batches=1).fit(module, synthetic_loader(),
                                                                         synthetic_loader())
    assert "val_acc" in evaluated.last_result.metrics
