"""``ecqx federate``: federated averaging on Flower with NNC-coded updates in both directions.

Each round

1. **downstream**: the server sends the global model — round 1 nothing (every participant builds the
   recipe's initial model; with ``initial_model: nnc`` the base as one ``.nnc`` bitstream,
   :func:`ecqx.coding.encode_state_dict`), later rounds an NNC difference update of the new global model
   against what the clients hold (:class:`ecqx.UpdateQuantizer`: ECQ with error feedback on NNC steps,
   :class:`ecqx.coding.UpdateEncoder`); every client decodes it with its own
   :class:`~ecqx.coding.UpdateDecoder`;
2. **local training**: each client (a Flower :class:`flwr.client.Client`) trains a copy of the recipe's
   LightningModule on its shard with a Lightning ``Trainer`` for ``local_epochs`` epochs;
3. **upstream**: the client sends its model change as an NNC difference update (its own error-feedback
   quantizer and encoder, ``device_id`` = client id) inside Flower's ``FitRes.parameters``
   (``tensor_type="nnc-update"``); the server decodes it with the client's decoder;
4. **aggregation**: Flower's :class:`flwr.server.strategy.FedAvg` averages the decoded client models weighted
   by their sample counts; the server evaluates the aggregate on the test split.

Clients and server run in one process: Flower's simulation engine needs ``ray``, which is heavy for the
small CPU machines this runs on, so the rounds are a plain loop over Flower's ``Client`` and ``Strategy``
objects (no gRPC, no ray). Every client takes part in every round (the downstream updates form one sequence
that each client must decode in order).

The data is split non-IID: for every class, Dirichlet(α) proportions over the clients (``alpha``).
Results (``--results FILE.json``): per round ``bytes_up`` (sum over clients), ``bytes_down`` (stream size ×
clients), ``float32_bytes`` (what float32 FedAvg sends in that round: the model in float32 to and from
every client) and ``accuracy``; next to it ``FILE.png``, the test accuracy against the cumulative bytes
(up + down).

Baseline (``--baseline``, or ``run_federated(..., float32=True)``): the same loop, clients, split, seeds and
rounds with plain float32 FedAvg: no NNC coding, every parameter sent as float32 in both directions, so
``bytes_up`` = ``bytes_down`` = 4 × values × clients per round. With ``--baseline`` the results hold it under
``"baseline"`` and the plot shows both runs.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ecqx import coding
from ecqx.coding.files import atomic_write, write_bytes_atomic
from ecqx.updates import UpdateQuantizer

log = logging.getLogger(__name__)
NNC_UPDATE = "nnc-update"
NNC_MODEL = "nnc-model"
RECIPE_MODEL = "recipe-model"  # round 1 without payload: every participant builds the recipe's initial model
FLOAT32 = "float32"  # tensor_type of the baseline: the state_dict values in order, as float32 arrays


@dataclass
class FederatedConfig:
    """The ``federated:`` section of a recipe.

    Args:
        clients: number of clients (all take part in every round).
        rounds: number of rounds.
        local_epochs: Lightning epochs per client and round.
        alpha: Dirichlet concentration of the non-IID split (small: few classes per client).
        seed: seed of the split, the client loaders and the model initialisation.
        up_bits, up_lam: grid size and entropy weight of the client updates (≥ 2-D tensors).
        down_bits, down_lam: the same for the server's downstream updates.
        nonweight_bits: grid size of the updates of 0-/1-D tensors (both directions).
        qp_density, tca, row_skipping: NNC update coding settings.
        limit_train_batches: optional cap of local batches per epoch (Lightning's option).
        accelerator: Lightning accelerator of the client trainers.
        initial_model: ``"recipe"``: every participant builds the initial model from the recipe (its
            classes, checkpoint and ``seed``), so round 1 sends nothing downstream, in both runs;
            ``"nnc"``: the server sends it in round 1 (NNC-coded, 16-bit non-weights; the float32 run sends
            it as float32), for clients that cannot build it themselves.
    """

    clients: int = 10
    rounds: int = 3
    local_epochs: int = 1
    alpha: float = 0.5
    seed: int = 0
    up_bits: int = 4
    up_lam: float = 0.05
    down_bits: int = 6
    down_lam: float = 0.0
    nonweight_bits: int = 8
    qp_density: int = 2
    tca: bool = True
    row_skipping: bool = True
    limit_train_batches: int | float | None = None
    accelerator: str = "cpu"
    initial_model: str = "recipe"

    def __post_init__(self):
        for name in ("clients", "rounds", "local_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"federated.{name} must be an integer >= 1, got {value!r}")
        if self.initial_model not in ("recipe", "nnc"):
            raise ValueError(f"federated.initial_model must be 'recipe' or 'nnc', got {self.initial_model!r}")
        if not self.alpha > 0:
            raise ValueError(f"federated.alpha must be > 0, got {self.alpha!r}")
        for name in ("up_bits", "down_bits", "nonweight_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 8:
                raise ValueError(f"federated.{name} must be an integer in 2..8, got {value!r}")


@dataclass
class RoundResult:
    round: int
    bytes_up: int
    bytes_down: int
    float32_bytes: int
    accuracy: float
    client_samples: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class UpdateRecord:
    """One NNC difference update as sent: ``direction`` "up" (client ``sender``) or "down" (server,
    ``sender`` None), the float ``difference`` that was quantized (current − what the receiver holds), the
    quantized ``update`` given to the encoder and the coded ``data``."""

    direction: str
    round: int
    sender: int | None
    difference: dict[str, torch.Tensor]
    update: dict
    data: bytes


UpdateObserver = Callable[[UpdateRecord], None]


# ------------------------------------------------------------------------------------------------ data
def dirichlet_split(labels: torch.Tensor, clients: int, alpha: float, seed: int = 0,
                    min_size: int = 1, attempts: int = 100) -> list[torch.Tensor]:
    """Sample indices per client: each class is divided among the clients in Dirichlet(α) proportions.

    Redraws (up to ``attempts`` times) until every client has at least ``min_size`` samples."""
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    for _ in range(attempts):
        shards: list[list[int]] = [[] for _ in range(clients)]
        for cls in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == cls))
            cuts = (np.cumsum(rng.dirichlet(np.full(clients, alpha))) * len(members)).astype(int)[:-1]
            for shard, part in zip(shards, np.split(members, cuts), strict=True):
                shard.extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [torch.tensor(sorted(s), dtype=torch.int64) for s in shards]
    raise ValueError(f"no Dirichlet(alpha={alpha}) split of {len(y)} samples gives each of {clients} clients "
                     f"{min_size} samples; use fewer clients or a larger alpha")


def _labels_of(dataset: Dataset) -> torch.Tensor:
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor):
        return labels
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


# ------------------------------------------------------------------------------------------------ state
def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu").clone() for name, t in module.state_dict().items()}


def _as_held(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.float32 if v.is_floating_point() else torch.int64) for k, v in state.items()}


def _to_module_dtypes(state: Mapping[str, torch.Tensor], like: Mapping[str, torch.Tensor]):
    out = {}
    for name, value in state.items():
        dtype = like[name].dtype
        out[name] = value.to(dtype) if value.is_floating_point() == dtype.is_floating_point else (
            value.round().to(dtype))
    return out


def _accuracy(module: torch.nn.Module, loader: DataLoader) -> float:
    module.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((module(x).argmax(1) == y).sum())
            total += int(y.numel())
    return correct / max(total, 1)


# ------------------------------------------------------------------------------------------------ client
def _float32_parameters(arrays: Sequence[np.ndarray]):
    from flwr.common import ndarrays_to_parameters

    parameters = ndarrays_to_parameters([np.asarray(a, dtype=np.float32) for a in arrays])
    parameters.tensor_type = FLOAT32
    return parameters


def _make_client_class():
    from flwr.client import Client
    from flwr.common import Code, FitIns, FitRes, Parameters, Status, parameters_to_ndarrays

    class NNCClient(Client):
        """A Flower client that receives NNC-coded global models and sends NNC-coded updates."""

        def __init__(self, cid: int, module: pl.LightningModule, loader: DataLoader, config: FederatedConfig,
                     observer: UpdateObserver | None = None):
            self.cid, self.template, self.loader, self.config = cid, module, loader, config
            self.observer = observer
            self.names = list(module.state_dict())
            self.down = coding.UpdateDecoder()
            self.held: dict[str, torch.Tensor] | None = None
            self.quantizer: UpdateQuantizer | None = None
            self.encoder = coding.UpdateEncoder(qp_density=config.qp_density, tca=config.tca,
                                                row_skipping=config.row_skipping, device_id=cid)
            self.sent_total: dict[str, torch.Tensor] | None = None

        def _receive(self, parameters: Parameters) -> None:
            data = parameters.tensors[0] if parameters.tensors else b""
            if parameters.tensor_type == RECIPE_MODEL:
                self.held = _as_held(_cpu_state(self.template))
            elif parameters.tensor_type == FLOAT32:
                arrays = parameters_to_ndarrays(parameters)
                self.held = _as_held({k: torch.from_numpy(np.asarray(a))
                                      for k, a in zip(self.names, arrays, strict=True)})
            elif parameters.tensor_type == NNC_MODEL:
                self.held = _as_held(coding.decode_state_dict(data))
            elif parameters.tensor_type == NNC_UPDATE and self.held is not None:
                self.held = coding.apply_updates(self.held, [data], decoder=self.down)
            else:
                raise ValueError(f"client {self.cid}: unexpected downstream {parameters.tensor_type!r}")

        def fit(self, ins: FitIns) -> FitRes:
            self._receive(ins.parameters)
            module = copy.deepcopy(self.template)
            module.load_state_dict(_to_module_dtypes(self.held, module.state_dict()), strict=True)
            trainer = pl.Trainer(max_epochs=self.config.local_epochs, accelerator=self.config.accelerator,
                                 devices=1, logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False,
                                 num_sanity_val_steps=0, limit_val_batches=0,
                                 limit_train_batches=self.config.limit_train_batches)
            trainer.fit(module, train_dataloaders=self.loader)
            trained = _as_held(_cpu_state(module))
            if ins.parameters.tensor_type == FLOAT32:  # baseline: the trained model as float32, no coding
                arrays = [trained[k].to(torch.float32).numpy() for k in self.names]
                return FitRes(status=Status(code=Code.OK, message=""),
                              parameters=_float32_parameters(arrays), num_examples=len(self.loader.dataset),
                              metrics={"bytes": sum(a.nbytes for a in arrays)})
            change = {k: trained[k] - self.held[k] for k in trained}
            if self.quantizer is None:  # error feedback over rounds: quantize the running sum of changes
                zeros = {k: torch.zeros_like(v) for k, v in change.items()}
                self.quantizer = UpdateQuantizer(zeros, bits=self.config.up_bits, lam=self.config.up_lam,
                                                 nonweight_bits=self.config.nonweight_bits,
                                                 qp_density=self.config.qp_density)
                self.sent_total = zeros
            self.sent_total = {k: self.sent_total[k] + change[k] for k in change}
            difference = self.quantizer.residual(self.sent_total)
            update = self.quantizer.quantize(self.sent_total)
            data = self.encoder.encode(update)
            if self.observer is not None:
                rnd = int(ins.config.get("round", 0))
                self.observer(UpdateRecord("up", rnd, self.cid, difference, update, data))
            return FitRes(status=Status(code=Code.OK, message=""),
                          parameters=Parameters(tensors=[data], tensor_type=NNC_UPDATE),
                          num_examples=len(self.loader.dataset), metrics={"bytes": len(data)})

    return NNCClient


# ------------------------------------------------------------------------------------------------ server
def run_federated(module: pl.LightningModule, datamodule: pl.LightningDataModule,
                  config: FederatedConfig, float32: bool = False,
                  observer: UpdateObserver | None = None) -> list[RoundResult]:
    """Runs ``config.rounds`` rounds of NNC-coded FedAvg (module docstring); returns the per-round results.

    ``float32=True``: the baseline, the same loop without NNC coding (float32 parameters both ways; the
    bytes counted are 4 per value, per client and direction). ``observer``: called with an
    :class:`UpdateRecord` for every NNC difference update sent (both directions), e.g. to code the same
    updates with another codec."""
    from flwr.common import FitIns, FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg

    pl.seed_everything(config.seed, workers=True, verbose=False)
    datamodule.setup("fit")
    train_loader = datamodule.train_dataloader()
    test_loader = datamodule.test_dataloader()
    dataset = train_loader.dataset
    shards = dirichlet_split(_labels_of(dataset), config.clients, config.alpha, config.seed)
    client_class = _make_client_class()
    clients = []
    for cid, shard in enumerate(shards):
        loader = DataLoader(Subset(dataset, shard.tolist()), batch_size=train_loader.batch_size,
                            shuffle=True, collate_fn=train_loader.collate_fn,
                            generator=torch.Generator().manual_seed(config.seed + 1000 + cid))
        clients.append(client_class(cid, module, loader, config, observer))
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=config.clients,
                      min_available_clients=config.clients)
    up_decoders = [coding.UpdateDecoder() for _ in clients]

    template_state = _cpu_state(module)
    names = list(template_state)
    if config.initial_model == "nnc":
        base = coding.encode_state_dict(template_state, nonweight_bits=16)
        held = _as_held(coding.decode_state_dict(base))  # what every client holds after the downstream
    else:
        base, held = None, _as_held(template_state)
    down_quantizer = UpdateQuantizer(held, bits=config.down_bits, lam=config.down_lam,
                                     nonweight_bits=config.nonweight_bits, qp_density=config.qp_density)
    down_encoder = coding.UpdateEncoder(qp_density=config.qp_density, tca=config.tca,
                                        row_skipping=config.row_skipping)
    global_state = _as_held(template_state) if float32 else held
    evaluator = copy.deepcopy(module)
    model_float32 = coding.float32_bytes(template_state)
    results = []
    for rnd in range(1, config.rounds + 1):
        if rnd == 1 and base is None:
            down = Parameters(tensors=[], tensor_type=RECIPE_MODEL)
            bytes_down = 0
        elif float32:
            down = _float32_parameters([global_state[k].to(torch.float32).numpy() for k in names])
            bytes_down = model_float32 * len(clients)
            held = {k: v.clone() for k, v in global_state.items()}
        else:
            if rnd == 1:
                down = Parameters(tensors=[base], tensor_type=NNC_MODEL)  # config.initial_model == "nnc"
            else:
                difference = down_quantizer.residual(global_state)
                update = down_quantizer.quantize(global_state)
                down = Parameters(tensors=[down_encoder.encode(update)], tensor_type=NNC_UPDATE)
                if observer is not None:
                    observer(UpdateRecord("down", rnd, None, difference, update, down.tensors[0]))
            bytes_down = len(down.tensors[0]) * len(clients)
            held = {k: v.clone() for k, v in down_quantizer.reference.items()}
        fit_results = []
        bytes_up = 0
        for cid, client in enumerate(clients):
            res = client.fit(FitIns(parameters=down, config={"round": rnd}))
            if float32:
                estimate = parameters_to_ndarrays(res.parameters)
                bytes_up += sum(np.asarray(a, dtype=np.float32).size * 4 for a in estimate)
            else:
                data = res.parameters.tensors[0]
                bytes_up += len(data)
                change = coding.apply_updates({k: torch.zeros_like(v) for k, v in held.items()}, [data],
                                              decoder=up_decoders[cid])
                # the server's view of the client model: what the client received plus its decoded change
                estimate = [(held[k] + change[k]).numpy() for k in names]
            fit_results.append((None, FitRes(status=res.status, parameters=ndarrays_to_parameters(estimate),
                                              num_examples=res.num_examples, metrics=res.metrics)))
        aggregated, _ = strategy.aggregate_fit(rnd, fit_results, [])
        arrays = parameters_to_ndarrays(aggregated)
        global_state = {k: torch.from_numpy(np.asarray(a)).to(held[k].dtype) if held[k].is_floating_point()
                        else torch.from_numpy(np.rint(np.asarray(a))).to(torch.int64)
                        for k, a in zip(names, arrays, strict=True)}
        evaluator.load_state_dict(_to_module_dtypes(global_state, template_state), strict=True)
        accuracy = _accuracy(evaluator, test_loader)
        directions = 1 if rnd == 1 and base is None else 2  # round 1 of "recipe": upstream only
        result = RoundResult(round=rnd, bytes_up=bytes_up, bytes_down=bytes_down,
                             float32_bytes=directions * model_float32 * len(clients), accuracy=accuracy,
                             client_samples=[len(s) for s in shards])
        log.info("%sround %d: up %d B, down %d B, float32 %d B, accuracy %.4f",
                 "float32 FedAvg " if float32 else "", rnd, result.bytes_up, result.bytes_down,
                 result.float32_bytes, accuracy)
        results.append(result)
    return results


# ------------------------------------------------------------------------------------------------ command
def _parser():
    from jsonargparse import ArgumentParser

    from ecqx.training.module import ClassificationModule

    parser = ArgumentParser(prog="ecqx federate", description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="config", help="federated recipe (YAML)")
    parser.add_subclass_arguments(ClassificationModule, "model", required=True)
    parser.add_subclass_arguments(pl.LightningDataModule, "data", required=True)
    parser.add_class_arguments(FederatedConfig, "federated")
    parser.add_argument("--results", type=str | None, default=None,
                        help="write per-round results (JSON) and the accuracy-vs-bytes plot (FILE.png)")
    parser.add_argument("--baseline", type=bool, default=False,
                        help="also run float32 FedAvg (same clients, split, seeds, rounds) for comparison")
    return parser


def _summary(config: FederatedConfig, results: Sequence[RoundResult]) -> dict:
    return {
        "config": asdict(config),
        "rounds": [asdict(r) for r in results],
        "total_bytes_up": sum(r.bytes_up for r in results),
        "total_bytes_down": sum(r.bytes_down for r in results),
        "total_float32_bytes": sum(r.float32_bytes for r in results),
    }


def accuracy_bytes_figure(runs: Mapping[str, Sequence[RoundResult]], title: str = "federated averaging"):
    """A ``matplotlib.figure.Figure``: test accuracy after each round against the cumulative bytes sent
    (up + down, all clients) for every run in ``runs`` (label → per-round results)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot, no matplotlib.use()
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    largest = max((sum(r.bytes_up + r.bytes_down for r in results) for results in runs.values()), default=0)
    unit, scale = ("MiB", 2**20) if largest >= 2**20 else ("KiB", 2**10)
    figure = Figure(figsize=(7.0, 5.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, (label, results) in enumerate(runs.items()):
        sent = np.cumsum([r.bytes_up + r.bytes_down for r in results]) / scale
        accuracy = [100 * r.accuracy for r in results]
        axes.plot(sent, accuracy, "o-", color=f"C{index}",
                  label=f"{label}: {sent[-1]:.3g} {unit} in {len(results)} rounds, "
                        f"final accuracy {accuracy[-1]:.2f} %")
        for r, x, y in zip(results, sent, accuracy, strict=True):
            axes.annotate(str(r.round), (x, y), textcoords="offset points", xytext=(4, -11),
                          fontsize="x-small", color=f"C{index}")
    axes.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_formatter(plain)
    axes.tick_params(axis="x", which="minor", labelsize="x-small")
    axes.set_xlabel(f"cumulative bytes sent, up + down, all clients [{unit}] (log scale)")
    axes.set_ylabel("test accuracy [%]")
    axes.set_title(title, fontsize="medium", fontweight="bold")
    axes.grid(True, which="both", alpha=0.3)
    axes.margins(x=0.08, y=0.1)
    axes.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16),  # outside: hides no point
                title="numbers at the points: round", title_fontsize="x-small")
    figure.tight_layout()
    return figure


def write_accuracy_bytes_plot(path: str | os.PathLike, runs: Mapping[str, Sequence[RoundResult]],
                              title: str = "federated averaging") -> None:
    """Writes :func:`accuracy_bytes_figure` as PNG, atomically."""
    figure = accuracy_bytes_figure(runs, title)
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=120))


def federate(argv: Sequence[str]) -> list[RoundResult]:
    """Parses ``argv`` (``--config RECIPE.yaml [--results FILE.json] [--baseline true]
    [--federated.rounds N ...]``), runs."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = _parser()
    cfg = parser.parse_args(list(argv))
    pl.seed_everything(cfg.federated.seed, workers=True, verbose=False)  # the model's initial weights
    init = parser.instantiate_classes(cfg)
    config = init.federated
    template = copy.deepcopy(init.model) if cfg.baseline else None  # the same initial weights for both
    results = run_federated(init.model, init.data, config)
    summary = _summary(config, results)
    runs = {"NNC-coded FedAvg": results}
    if cfg.baseline:
        baseline = run_federated(template, init.data, config, float32=True)
        summary["baseline"] = _summary(config, baseline) | {"mode": "float32 FedAvg"}
        runs["float32 FedAvg"] = baseline
    if cfg.results:
        folder = os.path.dirname(os.path.abspath(cfg.results))
        os.makedirs(folder, exist_ok=True)
        write_bytes_atomic(cfg.results, (json.dumps(summary, indent=2) + "\n").encode())
        stem, _ = os.path.splitext(cfg.results)
        write_accuracy_bytes_plot(stem + ".png", runs,
                                  title=f"FedAvg, {config.clients} clients, Dirichlet α = {config.alpha}")
    for r in results:
        print(f"round {r.round}: up {r.bytes_up} B, down {r.bytes_down} B, "
              f"float32 FedAvg {r.float32_bytes} B, accuracy {r.accuracy:.4f}")
    for r in runs.get("float32 FedAvg", []):
        print(f"float32 FedAvg round {r.round}: {r.bytes_up + r.bytes_down} B, accuracy {r.accuracy:.4f}")
    return results


def main(argv: Sequence[str]) -> int:
    try:
        federate(argv)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"ecqx federate: error: {error}", file=sys.stderr)
        return 2
    return 0


__all__ = ["FederatedConfig", "RoundResult", "UpdateRecord", "accuracy_bytes_figure", "dirichlet_split",
           "federate", "main", "run_federated", "write_accuracy_bytes_plot"]
