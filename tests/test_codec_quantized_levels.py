"""QuantizedLevels: the description of a quantized tensor that the quantizer and the codec share."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import ecqx
from ecqx.coding import CodedTensor, QuantizedLevels, decode_levels, encode

ROOT = Path(__file__).resolve().parents[1]
ATTRIBUTES = ("levels", "qp", "qp_density", "codebook", "dq")


def _levels(seed: int, values: list[int]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    table = torch.tensor(values, dtype=torch.int32)
    return table[torch.randint(len(values), (12, 9), generator=generator)]


CASES = {
    "uniform": dict(levels=_levels(0, [-3, -1, 0, 0, 0, 2, 5]), qp=-20, qp_density=2),
    "density 5": dict(levels=_levels(1, [-7, 0, 0, 1, 4]), qp=-150, qp_density=5),
    "codebook": dict(levels=_levels(2, [-4, 0, 0, 0, 6]), qp=-13, qp_density=3,
                     codebook=torch.tensor([-4, 0, 6], dtype=torch.int32)),
}


def test_protocol_is_exported_with_the_attributes_the_encoder_reads():
    import ecqx.coding

    assert "QuantizedLevels" in ecqx.coding.__all__
    assert tuple(QuantizedLevels.__annotations__) == ATTRIBUTES


@pytest.mark.parametrize("case", CASES)
def test_both_quantized_tensor_types_satisfy_the_protocol_and_encode_alike(case):
    coded = CodedTensor(**CASES[case])
    quantized = ecqx.QuantizedTensor(**CASES[case])
    assert isinstance(coded, QuantizedLevels) and isinstance(quantized, QuantizedLevels)
    data = encode({"w": coded})
    assert encode({"w": quantized}) == data
    decoded = decode_levels(data)["w"]
    assert isinstance(decoded, QuantizedLevels)  # a decoded float tensor is a description as well
    assert encode({"w": decoded}) == data


def test_quantize_output_encodes_like_the_codec_type():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16),
                                torch.nn.ReLU(), torch.nn.Linear(16, 4))
    for method in ("ecq", "ec2t"):
        quantized = ecqx.quantize(model, method=method, bits=3, lam=0.02)["2.weight"]
        assert isinstance(quantized, QuantizedLevels)
        coded = CodedTensor(quantized.levels, quantized.qp, quantized.qp_density, quantized.codebook)
        assert encode({"w": quantized}) == encode({"w": coded}), method
        assert (quantized.codebook is not None) == (method == "ec2t")


def test_attributes_with_defaults_may_be_missing():
    levels = CASES["uniform"]["levels"]
    partial = SimpleNamespace(levels=levels, qp=-8)
    assert not isinstance(partial, QuantizedLevels)
    assert encode({"w": partial}) == encode({"w": CodedTensor(levels, -8, 2, None, False)})
    with pytest.raises(TypeError, match="expected a quantized tensor description"):
        encode({"w": SimpleNamespace(levels=levels, qp_density=2)})


def _ecqx_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {name for name in names if name.split(".")[0] in ("ecqx", "pytorch_lightning", "lightning")}


@pytest.mark.parametrize("path", sorted((ROOT / "coding").glob("*.py")), ids=lambda p: p.name)
def test_codec_modules_import_only_the_codec(path):
    assert all(name.startswith("ecqx.coding") for name in _ecqx_imports(path)), _ecqx_imports(path)


@pytest.mark.parametrize("name", ["stepsize.py", "quantized.py"])
def test_quantizer_types_do_not_import_the_codec(name):
    assert not any(n.startswith("ecqx.coding") for n in _ecqx_imports(ROOT / "ecqx" / name))
