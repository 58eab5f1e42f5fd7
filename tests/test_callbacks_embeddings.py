"""Embeddings, integer inputs and tied weights under ECQ, ECQx and EC2T (and one-shot ``ecqx.quantize``).

Tiny token models on CPU: a bag of token ids → ``nn.Embedding`` and ``nn.EmbeddingBag`` → ``nn.Linear``;
labels depend on which tokens occur, so the embeddings matter. Every run ends with the quantized weights
checked against the exported descriptions (``QuantizedTensor.dequantize()``), which an NNC decoder rebuilds.
"""

from __future__ import annotations

import pytest
import torch
from callback_helpers import tiny_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ecqx
from ecqx import coding
from ecqx.callbacks import EC2T, ECQ, ECQx, NNCExport
from ecqx.relevance import LRP_EPSILON, weight_relevances
from ecqx.training.module import ClassificationModule

VOCAB, DIM, LENGTH, CLASSES = 12, 6, 5, 3


class TokenModel(nn.Module):
    """ids [B, L] → Embedding (mean over L) ⊕ EmbeddingBag (sum) → Linear."""

    def __init__(self, sparse: bool = False, max_norm: float | None = None):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM, sparse=sparse, max_norm=max_norm)
        self.bag = nn.EmbeddingBag(VOCAB, DIM, mode="sum")
        self.head = nn.Linear(2 * DIM, CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.embed(ids).mean(1), self.bag(ids)], dim=1))


class TiedModel(nn.Module):
    """A language-model shape: the decoder shares the embedding's weight, one hidden layer is used twice."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.hidden = nn.Linear(DIM, DIM)
        self.blocks = nn.Sequential(self.hidden, nn.ReLU(), self.hidden, nn.ReLU())
        self.decoder = nn.Linear(DIM, VOCAB, bias=False)
        self.decoder.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.blocks(self.embed(ids).mean(1)))


def token_loader(n: int = 96, seed: int = 0, classes: int = CLASSES) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, LENGTH), generator=generator)
    labels = (ids % classes == 0).sum(1).clamp(max=classes - 1)
    return DataLoader(TensorDataset(ids, labels), batch_size=16)


def _adam(parameters):
    return torch.optim.Adam(parameters, lr=0.01)


def _fit(model, callbacks, classes=CLASSES, epochs=2, optimizer=_adam, **kwargs):
    torch.manual_seed(0)
    module = ClassificationModule(model, num_classes=classes, optimizer=optimizer)
    trainer = tiny_trainer(list(callbacks), max_epochs=epochs, limit_train_batches=3, limit_val_batches=2,
                           **kwargs)
    trainer.fit(module, token_loader(classes=classes), token_loader(n=32, seed=1, classes=classes))
    return module


def _assert_on_grid(module, callback):
    """Every quantized parameter (under each of its names) is exactly its exported description."""
    params = dict(module.named_parameters(remove_duplicate=False))
    described = callback.quantized_tensors()
    assert set(callback.targets) <= set(described)
    for name, q in described.items():
        assert torch.equal(params[name].detach(), q.dequantize()), name
    for name in callback.targets:
        assert torch.equal(described[name].levels, callback.levels[name].cpu()), name


FACTORIES = {
    "ecq": lambda **kw: ECQ(bits=3, lam=0.05, **kw),
    "ecqx": lambda **kw: ECQx(bits=3, lam=0.05, relevance_every_n_steps=1, **kw),
    "ec2t": lambda **kw: EC2T(lam=0.05, centroid_lr=1e-3, **kw),
}


@pytest.mark.parametrize("method", sorted(FACTORIES))
def test_embedding_weights_are_quantized_by_default(method):
    torch.manual_seed(0)
    model = TokenModel()
    callback = FACTORIES[method]()
    module = _fit(model, [callback])
    if method == "ec2t":  # keeps the input (the embedding) and output layer in full precision by default
        assert callback.targets == ["model.bag.weight"]
    else:
        assert callback.targets == ["model.embed.weight", "model.bag.weight", "model.head.weight"]
    _assert_on_grid(module, callback)
    for name in callback.targets:
        distinct = module.get_parameter(name).detach().unique().numel()
        assert distinct <= (3 if method == "ec2t" else 8), (name, distinct)


def test_ec2t_ternarizes_embeddings_when_first_and_last_are_included():
    torch.manual_seed(0)
    callback = EC2T(lam=0.05, centroid_lr=1e-3, exclude_first=False, exclude_last=False)
    module = _fit(TokenModel(), [callback])
    assert callback.targets == ["model.embed.weight", "model.bag.weight", "model.head.weight"]
    _assert_on_grid(module, callback)
    assert all(q.codebook.numel() == 3 for q in callback.quantized_tensors().values())


def test_module_types_keep_embeddings_in_full_precision():
    torch.manual_seed(0)
    model = TokenModel()
    embed_before = model.embed.weight.detach().clone()
    callback = ECQ(bits=3, lam=0.05, module_types=(nn.Linear,))
    module = _fit(model, [callback])
    assert callback.targets == ["model.head.weight"]
    assert module.model.embed.weight.unique().numel() > 8  # still full precision, and trained
    assert not torch.equal(module.model.embed.weight.detach(), embed_before)
    with pytest.raises(ValueError, match=r"`module_types` must be a tuple of nn.Module subclasses, got"):
        ECQ(module_types=(nn.Linear, int))


def test_sparse_or_max_norm_embeddings_are_rejected_with_a_hint():
    with pytest.raises(ValueError, match=r"'model.embed' \(Embedding\) has sparse=True; .*HINT: use sparse"):
        _fit(TokenModel(sparse=True), [ECQ(bits=3)])
    with pytest.raises(ValueError, match=r"'model.embed' \(Embedding\) has max_norm=1.0; .*in place"):
        _fit(TokenModel(max_norm=1.0), [ECQx(bits=3)])
    # kept in full precision, a sparse embedding trains next to the quantized layers (SGD takes both kinds)
    callback = ECQ(bits=3, exclude="embed")
    _fit(TokenModel(sparse=True), [callback], epochs=1, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    assert callback.targets == ["model.bag.weight", "model.head.weight"]


@pytest.mark.parametrize("backend", ["zennit", "captum"])
def test_ecqx_trains_on_integer_inputs_with_valid_relevances(backend, monkeypatch):
    torch.manual_seed(0)
    model = TokenModel()
    calls = []
    original = ecqx.relevance.weight_relevances

    def recording(model, inputs, targets, **kwargs):
        result = original(model, inputs, targets, **kwargs)
        calls.append((inputs.clone(), result))
        return result

    monkeypatch.setattr(ecqx.relevance, "weight_relevances", recording)
    callback = ECQx(bits=3, lam=0.05, relevance_every_n_steps=1, backend=backend)
    module = _fit(model, [callback], epochs=1)
    assert len(calls) == 3 and callback.optimizer_steps == 3
    assert all(inputs.dtype == torch.int64 for inputs, _ in calls)
    assert set(callback.relevances) == set(callback.targets)
    for name, relevance in callback.relevances.items():
        assert relevance.shape == module.get_parameter(name).shape
        assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0, name
    # a row of the embedding table only gets relevance from the batches that looked it up
    for inputs, result in calls:
        unused = sorted(set(range(VOCAB)) - set(inputs.unique().tolist()))
        for name in ("model.embed.weight", "model.bag.weight"):
            assert torch.all(result[name][unused] == 0)
    _assert_on_grid(module, callback)


def test_embedding_bag_relevance_by_hand():
    """EmbeddingBag (sum) → Linear (ε): the relevance at the bag output flows back into the looked-up rows.

    The embedding takes the composite's first-layer slot, so the Linear gets the ε rule, not Flat.
    """
    torch.manual_seed(0)
    bag, linear = nn.EmbeddingBag(VOCAB, DIM, mode="sum"), nn.Linear(DIM, CLASSES)
    model = nn.Sequential(bag, linear)
    ids, labels = next(iter(token_loader()))
    with torch.no_grad():
        e = bag(ids)
        z = linear(e)
        seed = nn.functional.one_hot(labels, CLASSES) * z / ids.shape[0]
        r_e = e * ((seed / (z + LRP_EPSILON * torch.where(z >= 0, 1.0, -1.0))) @ linear.weight)
        counts = nn.functional.one_hot(ids, VOCAB).sum(1).to(torch.float32)  # [B, VOCAB]
        grad = counts.T @ (r_e / (e + LRP_EPSILON * torch.where(e >= 0, 1.0, -1.0)))
    relevance = weight_relevances(model, ids, labels)
    torch.testing.assert_close(relevance["0.weight"], bag.weight.detach() * grad, rtol=1e-4, atol=1e-7)
    assert set(relevance) == {"0.weight", "1.weight"}
    assert ids.dtype == torch.int64  # the integer inputs were not touched


def test_tied_weights_are_quantized_once_stay_tied_and_export(tmp_path):
    torch.manual_seed(0)
    model = TiedModel()
    callback = ECQx(bits=3, lam=0.05, relevance_every_n_steps=1)
    export = NNCExport(tmp_path / "tied.nnc")
    module = _fit(model, [callback, export], classes=VOCAB)
    assert callback.targets == ["model.embed.weight", "model.hidden.weight"]
    assert module.model.decoder.weight is module.model.embed.weight
    described = callback.quantized_tensors()
    assert set(described) == {"model.embed.weight", "model.decoder.weight", "model.hidden.weight",
                              "model.blocks.0.weight", "model.blocks.2.weight"}
    assert described["model.decoder.weight"] is described["model.embed.weight"]
    _assert_on_grid(module, callback)
    # the export checked the decoded model bit for bit; both state_dict keys decode to the quantized weight
    assert export.last_result.num_quantized == 5
    decoded = coding.decode_state_dict((tmp_path / "tied.nnc").read_bytes())
    for name in ("model.embed.weight", "model.decoder.weight"):
        assert torch.equal(decoded[name], described["model.embed.weight"].dequantize())
    fresh = TiedModel()
    fresh.load_state_dict({k.removeprefix("model."): v for k, v in decoded.items()}, strict=True)
    assert torch.equal(fresh.embed.weight, module.model.embed.weight.detach())


@pytest.mark.parametrize("method", ["ecq", "ec2t"])
def test_tied_weights_under_ecq_and_ec2t(method, tmp_path):
    torch.manual_seed(0)
    extra = {"exclude_first": False, "exclude_last": False} if method == "ec2t" else {}
    callback = FACTORIES[method](**extra)
    module = _fit(TiedModel(), [callback, NNCExport(tmp_path / "tied.nnc", evaluate=False)], classes=VOCAB)
    assert callback.targets == ["model.embed.weight", "model.hidden.weight"]
    assert module.model.decoder.weight is module.model.embed.weight
    _assert_on_grid(module, callback)


def test_tied_relevance_sums_both_uses():
    torch.manual_seed(0)
    model = TiedModel()
    ids, labels = next(iter(token_loader(classes=VOCAB)))
    tied = weight_relevances(model, ids, labels, names=["embed.weight"])["embed.weight"]
    untied = TiedModel()
    untied.load_state_dict(model.state_dict())
    untied.decoder.weight = nn.Parameter(model.embed.weight.detach().clone())
    parts = weight_relevances(untied, ids, labels, names=["embed.weight", "decoder.weight"])
    torch.testing.assert_close(tied, parts["embed.weight"] + parts["decoder.weight"])


def test_one_shot_quantize_of_a_token_model():
    torch.manual_seed(0)
    model = TiedModel()
    q = ecqx.quantize(model, bits=4)
    names = ["embed.weight", "decoder.weight", "hidden.weight", "blocks.0.weight", "blocks.2.weight"]
    assert list(q) == names
    assert q["decoder.weight"] is q["embed.weight"]
    state = model.state_dict()
    data = coding.encode_state_dict(state, q)
    decoded = coding.decode_state_dict(data)
    assert torch.equal(decoded["decoder.weight"], q["embed.weight"].dequantize())
    # from the state_dict (no modules) the same tensors are chosen, tied copies quantized identically
    from_state = ecqx.quantize(state, bits=4)
    assert sorted(from_state) == sorted(q)
    assert torch.equal(from_state["decoder.weight"].levels, from_state["embed.weight"].levels)
    assert list(ecqx.quantize(TokenModel(), module_types=(nn.Linear,))) == ["head.weight"]
    with pytest.raises(ValueError, match="a state_dict has no modules"):
        ecqx.quantize(state, module_types=(nn.Linear,))
