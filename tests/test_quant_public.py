"""``ecqx.quantize`` and ``QuantizedTensor``: the cross-team contract, checked against the codec."""

import pytest
import torch

import ecqx
from ecqx.coding import decode, encode


@pytest.fixture(scope="module")
def resnet20(shared_dir):
    return torch.load(shared_dir / "models" / "resnet20.pt", map_location="cpu")


@pytest.mark.parametrize("mode", ["clean", "faithful"])
def test_ecq_contract(resnet20, mode):
    q = ecqx.quantize(resnet20, method="ecq", bits=4, lam=0.05, mode=mode)
    assert list(q) == ecqx.select_targets(resnet20)
    for name, t in q.items():
        assert t.levels.dtype == torch.int32 and t.levels.shape == resnet20[name].shape
        assert t.codebook is None and not t.dq and 0 <= t.qp_density <= 7
        assert t.step == ecqx.nnc_step_size(t.qp, t.qp_density)
        assert t.levels.min() >= -8 and t.levels.max() <= 8
        assert torch.equal(t.dequantize().double(), t.levels.double() * t.step)


def test_ec2t_contract(resnet20):
    q = ecqx.quantize(resnet20, method="ec2t", lam=0.1)
    assert len(q) == 18 and "conv1.weight" not in q and "linear.weight" not in q
    for t in q.values():
        assert t.codebook.dtype == torch.int32 and t.codebook.numel() == 3 and t.codebook[1] == 0
        assert set(t.levels.unique().tolist()) <= set(t.codebook.tolist())


def test_codec_decodes_exactly_what_was_quantized(resnet20):
    names = ["conv1.weight", "layer3.2.conv2.weight"]
    ecq = ecqx.quantize(resnet20, "ecq", bits=3, lam=0.05, include=[f"^{n}$" for n in names])
    ec2t = ecqx.quantize(resnet20, "ec2t", lam=0.1, include=r"layer1\.0\.conv1")
    chosen = {**ecq, **ec2t}
    decoded = decode(encode(chosen))
    for name, t in chosen.items():
        assert torch.equal(decoded[name], t.dequantize()), name


def test_quantize_accepts_a_module_and_rejects_bad_arguments():
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    assert list(ecqx.quantize(model)) == ["0.weight", "2.weight"]
    with pytest.raises(ValueError, match="method must be one of"):
        ecqx.quantize(model, method="ecqx")
    with pytest.raises(ValueError, match="mode must be one of"):
        ecqx.quantize(model, mode="paper")
    with pytest.raises(ValueError, match="bits must be an integer in 2..8"):
        ecqx.quantize(model, bits=12)
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        ecqx.quantize(model, lam=-0.1)
    with pytest.raises(TypeError, match="mapping of tensors"):
        ecqx.quantize([1, 2])
    with pytest.raises(TypeError, match="integer torch tensor"):
        ecqx.QuantizedTensor(torch.zeros(3), qp=-8)


def test_load_puts_an_nnc_file_into_a_module(tmp_path):
    from ecqx.coding import encode_state_dict

    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    state = source.state_dict()
    quantized = ecqx.quantize(state, method="ecq", bits=4, lam=0.0)
    path = tmp_path / "m.nnc"
    path.write_bytes(encode_state_dict(state, quantized=quantized))
    target = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert ecqx.load(target, path) is target
    for name, q in quantized.items():
        assert torch.equal(target.state_dict()[name], q.dequantize())
    with pytest.raises(RuntimeError, match="Missing key"):
        ecqx.load(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2),
                                      torch.nn.Linear(2, 2)), path)
