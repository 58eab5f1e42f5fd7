"""File commands (``ecqx compress/inspect/decode``, ``python -m ecqx.coding``): outputs are written
atomically, never over an input; bad input files give one line ``ecqx CMD: error: FILE: ...``, status 1."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

import ecqx
import ecqx.coding
import ecqx.coding.cli
from ecqx.coding import decode_state_dict, encode_state_dict
from ecqx.coding.cli import FileCommandError
from ecqx.training.cli import main


def _linear_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Linear(4, 3).state_dict()


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(_linear_state(), path)
    return path


@pytest.fixture
def stream_file(tmp_path):
    path = tmp_path / "m.nnc"
    path.write_bytes(encode_state_dict(_linear_state()))
    return path


def _one_error_line(capsys, prefix: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(prefix), err
    assert "Traceback" not in err
    return err


def _folder(path) -> list[str]:
    return sorted(os.listdir(path))


# -- a failed write keeps the previous output ------------------------------------------------------------


def test_compress_failing_in_encode_keeps_the_previous_output(model_file, tmp_path, capsys, monkeypatch):
    output = tmp_path / "out.nnc"
    output.write_bytes(b"the previous stream")

    def failing_encode(*args, **kwargs):
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(ecqx.coding, "encode_state_dict", failing_encode)
    assert main(["compress", str(model_file), "-o", str(output)]) == 1
    assert "RuntimeError: encoder crashed" in _one_error_line(capsys, "ecqx compress: error: ")
    assert output.read_bytes() == b"the previous stream"
    assert _folder(tmp_path) == ["m.pt", "out.nnc"]


def test_compress_failing_while_writing_keeps_the_previous_output(model_file, tmp_path, capsys, monkeypatch):
    output = tmp_path / "out.nnc"
    output.write_bytes(b"the previous stream")
    def failing_replace(source, target):  # the new stream is complete on disk, the rename fails
        with open(source, "rb") as handle:
            assert decode_state_dict(handle.read()).keys() == {"weight", "bias"}
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    assert main(["compress", str(model_file), "-o", str(output)]) == 1
    err = _one_error_line(capsys, f"ecqx compress: error: {output}: cannot write it (No space left")
    assert "previous file" in err
    assert output.read_bytes() == b"the previous stream"
    assert _folder(tmp_path) == ["m.pt", "out.nnc"]


@pytest.mark.parametrize("exception, status", [(OSError(5, "I/O error"), 1), (KeyboardInterrupt(), 130)])
def test_decode_failing_inside_torch_save_keeps_the_previous_output(
    stream_file, tmp_path, capsys, monkeypatch, exception, status
):
    output = tmp_path / "back.pt"
    torch.save({"old": torch.ones(2)}, output)
    previous = output.read_bytes()

    def failing_save(obj, handle):
        handle.write(b"PK\x03\x04 half an archive")
        raise exception

    monkeypatch.setattr(torch, "save", failing_save)
    assert main(["decode", str(stream_file), "-o", str(output)]) == status
    assert capsys.readouterr().err.startswith("ecqx decode: ")
    assert output.read_bytes() == previous
    assert _folder(tmp_path) == ["back.pt", "m.nnc"]


def test_successful_runs_replace_the_previous_output(model_file, stream_file, tmp_path):
    output = tmp_path / "out.nnc"
    output.write_bytes(b"stale")
    assert main(["compress", str(model_file), "-o", str(output)]) == 0
    nn.Linear(4, 3).load_state_dict(decode_state_dict(output.read_bytes()), strict=True)
    decoded = tmp_path / "back.pt"
    decoded.write_bytes(b"stale")
    assert main(["decode", str(stream_file), "-o", str(decoded)]) == 0
    assert torch.load(decoded).keys() == {"weight", "bias"}
    assert _folder(tmp_path) == ["back.pt", "m.nnc", "m.pt", "out.nnc"]


# -- an input is never overwritten -----------------------------------------------------------------------


def test_output_equal_to_the_input_is_refused(model_file, stream_file, capsys):
    model_bytes, stream_bytes = model_file.read_bytes(), stream_file.read_bytes()
    assert main(["compress", str(model_file), "-o", str(model_file)]) == 1
    err = _one_error_line(capsys, f"ecqx compress: error: {model_file}: refusing to overwrite the input")
    assert err.count(str(model_file)) == 2
    assert main(["decode", str(stream_file), "-o", str(stream_file)]) == 1
    _one_error_line(capsys, f"ecqx decode: error: {stream_file}: refusing to overwrite the input file "
                            f"{stream_file}")
    spelt_differently = os.path.join(str(stream_file.parent), ".", stream_file.name)
    assert main(["decode", str(stream_file), "-o", spelt_differently]) == 1
    _one_error_line(capsys, "ecqx decode: error: ")
    assert model_file.read_bytes() == model_bytes and stream_file.read_bytes() == stream_bytes


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_output_that_is_a_link_to_the_input_is_refused(model_file, tmp_path, capsys, link):
    alias = tmp_path / "alias.nnc"
    if link == "symbolic":
        alias.symlink_to(model_file)
    else:
        os.link(model_file, alias)
    before = model_file.read_bytes()
    assert main(["compress", str(model_file), "-o", str(alias)]) == 1
    err = _one_error_line(capsys, f"ecqx compress: error: {alias}: refusing to overwrite the input file")
    assert str(model_file) in err
    assert model_file.read_bytes() == before


def test_output_that_is_a_directory_is_refused(model_file, stream_file, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    assert main(["compress", str(model_file), "-o", str(folder)]) == 1
    _one_error_line(capsys, f"ecqx compress: error: {folder}: is a directory")
    assert main(["decode", str(stream_file), "-o", str(folder)]) == 1
    _one_error_line(capsys, f"ecqx decode: error: {folder}: is a directory")
    assert main(["decode", str(stream_file), "-o", str(tmp_path / "missing" / "x.pt")]) == 1
    _one_error_line(capsys, "ecqx decode: error: ")
    assert os.listdir(folder) == []


def test_default_output_names_never_hit_the_input(model_file, stream_file, tmp_path, capsys):
    # a stream named .pt decodes to <stem>.decoded.pt, not onto itself
    stream_as_pt = tmp_path / "weights.pt"
    stream_as_pt.write_bytes(stream_file.read_bytes())
    assert main(["decode", str(stream_as_pt)]) == 0
    assert stream_as_pt.read_bytes() == stream_file.read_bytes()
    assert torch.load(tmp_path / "weights.decoded.pt").keys() == {"weight", "bias"}
    # a state_dict named .nnc compresses to <stem>.compressed.nnc
    model_as_nnc = tmp_path / "sd.nnc"
    model_as_nnc.write_bytes(model_file.read_bytes())
    assert main(["compress", str(model_as_nnc)]) == 0
    assert model_as_nnc.read_bytes() == model_file.read_bytes()
    assert decode_state_dict((tmp_path / "sd.compressed.nnc").read_bytes()).keys() == {"weight", "bias"}
    # the ordinary defaults are unchanged
    assert main(["decode", str(stream_file)]) == 0
    assert torch.load(tmp_path / "m.pt").keys() == {"weight", "bias"}


def test_python_m_ecqx_coding_is_the_same_implementation(stream_file, tmp_path, capsys):
    from ecqx.coding.__main__ import main as coding_main

    assert coding_main is ecqx.coding.cli.main
    assert coding_main(["decode", str(stream_file), "-o", str(stream_file)]) == 1
    _one_error_line(capsys, f"python -m ecqx.coding decode: error: {stream_file}: refusing to overwrite")
    assert coding_main(["decode", str(stream_file), "--max-elements", "14"]) == 1
    assert "max_elements=14" in _one_error_line(capsys, f"python -m ecqx.coding decode: error: {stream_file}")
    assert coding_main(["decode", str(stream_file), "-o", str(tmp_path / "x.pt"), "--max-elements=15"]) == 0


# -- bad input files: one line, exit status 1, --debug shows the traceback --------------------------------


def _bad_model_files(folder) -> dict[str, tuple[str, str]]:
    """name -> (path, a phrase the error must contain)."""
    paths = {}
    (folder / "empty.pt").write_bytes(b"")
    paths["empty"] = ("empty.pt", "the file is empty; expected a state_dict")
    (folder / "text.pt").write_text("these are not tensors\n")
    paths["text"] = ("text.pt", "not a file torch.load can read")
    torch.save(nn.Linear(4, 3), folder / "module.pt")
    paths["module"] = ("module.pt", "save model.state_dict() instead")
    (folder / "folder.pt").mkdir()
    paths["directory"] = ("folder.pt", "is a directory; expected a state_dict")
    paths["missing"] = ("missing.pt", "no such file")
    whole = _linear_state()
    torch.save(whole, folder / "whole.pt")
    (folder / "truncated.pt").write_bytes((folder / "whole.pt").read_bytes()[:300])
    paths["truncated"] = ("truncated.pt", "damaged or truncated torch.save archive")
    (folder / "pickle.pt").write_bytes(pickle.dumps({"weight": [1.0, 2.0]}, protocol=2))
    paths["pickle"] = ("pickle.pt", "expected a state_dict")
    nan = torch.tensor([1.0, float("nan"), 0.0])
    torch.save({"weight": torch.ones(3, 4), "bias": nan}, folder / "nan.pt")
    paths["nan"] = ("nan.pt", "tensor 'bias' holds 1 NaN or infinite values")
    torch.save({"weight": torch.ones(3, 4), "bias": torch.empty(0)}, folder / "hollow.pt")
    paths["empty tensor"] = ("hollow.pt", "tensor 'bias' is empty")
    torch.save({"weight": torch.ones(3, 4), "bias": torch.tensor([1e300], dtype=torch.float64)},
               folder / "f64.pt")
    paths["beyond float32"] = ("f64.pt", "tensor 'bias' holds values up to 1e+300")
    (folder / "stream.pt").write_bytes(encode_state_dict(whole))
    paths["nnc stream"] = ("stream.pt", "this is an NNC stream, not a state_dict; 'ecqx decode'")
    return paths


def test_bad_model_files_give_one_line_errors(tmp_path, capsys):
    for case, (name, phrase) in _bad_model_files(tmp_path).items():
        path = tmp_path / name
        assert main(["compress", str(path), "-o", str(tmp_path / "out.nnc")]) == 1, case
        err = _one_error_line(capsys, f"ecqx compress: error: {path}: ")
        assert phrase in err, (case, err)
    assert not (tmp_path / "out.nnc").exists()


def test_the_3e38_bias_error_names_the_range(tmp_path, capsys):
    huge = dict(_linear_state(), bias=torch.full((3,), 3e38))
    torch.save(huge, tmp_path / "huge.pt")
    # one fixed non-weight qp: the bias needs a step too far from the weight's for one stream
    assert main(["compress", str(tmp_path / "huge.pt"), "--nonweight-qp", "-75"]) == 1
    err = _one_error_line(capsys, "ecqx compress: error: ")
    assert "tensor 'bias'" in err and "tensor 'weight'" in err and "must stay below about" in err


def test_a_lone_3e38_tensor_is_codable(tmp_path, capsys):
    # w / step overflows float32 at the fine qp; NNC's coarser-qp fallback codes it (no OverflowError)
    torch.save({"scale": torch.tensor([3e38, -2e38, 1.0])}, tmp_path / "big.pt")
    assert main(["compress", str(tmp_path / "big.pt")]) == 0
    decoded = decode_state_dict((tmp_path / "big.nnc").read_bytes())["scale"]
    # default non-weight coding: a step of 2^-10 of the largest magnitude, so at most half of that off
    assert torch.allclose(decoded[:2], torch.tensor([3e38, -2e38]), rtol=2**-11, atol=0)


def test_a_3e38_bias_beside_ordinary_weights_is_stored_as_raw_float(tmp_path):
    from ecqx.coding import PayloadType, decode_levels

    huge = dict(_linear_state(), bias=torch.full((3,), 3e38))
    torch.save(huge, tmp_path / "huge.pt")
    assert main(["compress", str(tmp_path / "huge.pt")]) == 0
    data = (tmp_path / "huge.nnc").read_bytes()
    assert decode_levels(data)["bias"].payload_type == PayloadType.NNR_PT_RAW_FLOAT
    assert torch.equal(decode_state_dict(data)["bias"], huge["bias"])


def test_bad_streams_give_one_line_errors(model_file, tmp_path, capsys):
    assert main(["inspect", str(model_file)]) == 1
    err = _one_error_line(capsys, f"ecqx inspect: error: {model_file}: cannot read it as an NNC stream")
    assert "torch.save file" in err  # the hint for the common mix-up
    (tmp_path / "empty.nnc").write_bytes(b"")
    assert main(["decode", str(tmp_path / "empty.nnc")]) == 1
    _one_error_line(capsys, f"ecqx decode: error: {tmp_path / 'empty.nnc'}: the file is empty")
    assert main(["decode", str(tmp_path)]) == 1
    _one_error_line(capsys, f"ecqx decode: error: {tmp_path}: is a directory")
    assert _folder(tmp_path) == ["empty.nnc", "m.pt"]


def test_max_elements_bounds_decode_and_inspect(stream_file, tmp_path, capsys):
    # the stream holds 15 values: weight 3x4 and bias 3
    out = tmp_path / "back.pt"
    assert main(["decode", str(stream_file), "-o", str(out), "--max-elements", "14"]) == 1
    err = _one_error_line(capsys, f"ecqx decode: error: {stream_file}: ")
    assert "max_elements=14" in err
    assert not out.exists()
    assert main(["decode", str(stream_file), "-o", str(out), "--max-elements", "15"]) == 0
    assert main(["inspect", str(stream_file), "--values", "--max-elements", "14"]) == 1
    _one_error_line(capsys, f"ecqx inspect: error: {stream_file}: ")
    assert main(["inspect", str(stream_file), "--values", "--max-elements", "15"]) == 0
    assert "weight" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["decode", str(stream_file), "--max-elements", "0"])
    assert exit_info.value.code == 2


def test_debug_shows_the_original_exception(tmp_path, capsys):
    torch.save(nn.Linear(4, 3), tmp_path / "module.pt")
    with pytest.raises(FileCommandError) as error:
        main(["compress", str(tmp_path / "module.pt"), "--debug"])
    assert isinstance(error.value.__cause__, pickle.UnpicklingError)
    with pytest.raises(FileCommandError):
        main(["inspect", str(tmp_path / "module.pt"), "--debug"])


def test_unexpected_errors_are_one_line_with_their_type_or_raised_with_debug(model_file, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug\nwith a second line")

    monkeypatch.setattr(ecqx, "quantize", broken)
    assert main(["compress", str(model_file)]) == 1
    err = _one_error_line(capsys, "ecqx compress: error: ZeroDivisionError: a bug (--debug")
    assert "second line" not in err
    with pytest.raises(ZeroDivisionError):
        main(["compress", str(model_file), "--debug"])
    assert not model_file.with_suffix(".nnc").exists()
