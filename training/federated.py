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
   by their sample counts (in client-id order); the server evaluates the aggregate on the test split.

Every client takes part in every round (the downstream updates form one sequence that each client must
decode in order).

Engines (``federated.engine``), both running the same client (``NNCClient``) and server
(``_FederatedServer``) code:

* ``"simulation"`` (default): Flower's simulation engine with its ray backend (the ``[federated]`` extra).
  A ``ServerApp`` runs the rounds and sends each round's downstream to the ``clients`` virtual nodes as
  Flower messages; a ``ClientApp`` trains the clients in ray actor processes, as many at once as
  ``client_cpus``/``client_gpus`` allow on this machine. Between rounds a client's whole state
  (``NNCClient.state_dict``: the model it holds, its error-feedback quantizer, its update encoder and
  downstream decoder, its loader's shuffle position) lives in its node's Flower context. Started with
  ``flwr.simulation.run_simulation``, which Flower marks deprecated in favour of ``flwr run``: that command
  loads a packaged Flower app by name and cannot be handed the recipe's Python objects.
* ``"inprocess"``: the same clients and server in one process, a plain loop without ray (for small
  machines and debugging; with ``--debug`` client errors surface with their own traceback).

Before either engine starts, :func:`check_machine` tries the clients' ``accelerator`` and, for the simulation
engine, that ``client_gpus`` can be met (ray would otherwise place no client, and Flower's engine would stop
while its ServerApp waits for replies; a failing engine ends the run with its cause either way).

Each client trains with ``client_cpus`` torch threads and seeds the global random generators from
``(seed, round, client id)`` in both engines, so both give the same bytes and accuracies, round by round.

The data is split non-IID: for every class, Dirichlet(α) proportions over the clients (``alpha``).
Results (``--results FILE.json``): per round ``bytes_up`` (sum over clients), ``bytes_down`` (stream size ×
clients), ``float32_bytes`` (what float32 FedAvg sends in that round: the model in float32 to and from
every client) and ``accuracy``; next to it ``FILE.png``, the test accuracy against the cumulative bytes
(up + down).

Baseline (``--baseline``, or ``run_federated(..., float32=True)``): the same rounds, clients, split, seeds and
engine with plain float32 FedAvg: no NNC coding, every parameter sent as float32 in both directions, so
``bytes_up`` = ``bytes_down`` = 4 × values × clients per round. With ``--baseline`` the results hold it under
``"baseline"`` and the plot shows both runs.

Output of ``ecqx federate``: one line per round as it finishes (stdout), then one line of totals per run.
Errors are one line on stderr (``ecqx federate: error: ...``); ``--debug`` shows the traceback, the client's
report and Flower's logs instead.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import logging
import math
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

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
ENGINES = ("simulation", "inprocess")
CLIENT_STATE = "ecqx.client"  # the ConfigRecord of a node's context that holds its NNCClient state
NODE_WAIT_S = 120.0  # the simulation's virtual nodes register within moments of its start
PULL_INTERVAL_S = 0.05  # how often the ServerApp looks for client replies (Flower's send_and_receive: 0.1)
GPU_ACCELERATORS = ("gpu", "cuda", "auto")  # Lightning accelerators that train on the CUDA GPUs ray reserves


class FederatedError(RuntimeError):
    """A federated run failed: a client's error, or Flower's engine stopped. The first line of the message
    says what happened; further lines carry the details (e.g. the client's report)."""


@dataclass
class FederatedConfig:
    """The ``federated:`` section of a recipe.

    Args:
        clients: number of clients (all take part in every round).
        rounds: number of rounds.
        local_epochs: Lightning epochs per client and round.
        alpha: Dirichlet concentration of the non-IID split (small: few classes per client).
        seed: seed of the split, the client loaders and the model initialisation.
        up_bits: grid size (bits, 2..8) of the clients' updates of tensors with two or more dimensions.
        up_lam: entropy weight Λ (≥ 0) of the clients' updates of those tensors; larger: sparser, fewer bytes.
        down_bits: grid size (bits, 2..8) of the server's downstream updates of tensors with two or more
            dimensions.
        down_lam: entropy weight Λ (≥ 0) of the server's downstream updates of those tensors.
        nonweight_bits: grid size of the updates of 0-/1-D tensors (both directions).
        percentile: the grid step of an update tensor is this percentile of |difference| divided by
            2^(bits−1) − 1 (:func:`ecqx.updates.update_grid`); below the weights' 99.9 because error
            feedback re-sends what a coarse step drops, and a finer step costs less accuracy per byte.
        size_decay: scale the entropy weights per tensor by size (ECQ's layer rule, ``UpdateQuantizer``'s
            default) or not (``False``: every weight tensor gets ``up_lam``/``down_lam`` as is, so the large
            layers keep learning; the better trade-off in benchmarks/results/bench_federated_sweep.md).
        qp_density: NNC qp_density (0..7) of the update steps: the steps lie on a grid of 2^qp_density
            values per factor 2.
        tca: NNC temporal context adaptation: the entropy coder of an update tensor uses the previous
            update of the same tensor as context.
        row_skipping: NNC row skipping: each all-zero row of an update tensor costs one flag.
        limit_train_batches: optional cap of local batches per epoch (Lightning's option): a fraction in
            (0, 1] of each client's batches, or a number of batches ≥ 1.
        accelerator: Lightning accelerator of the client trainers.
        initial_model: ``"recipe"``: every participant builds the initial model from the recipe (its
            classes, checkpoint and ``seed``), so round 1 sends nothing downstream, in both runs;
            ``"nnc"``: the server sends it in round 1 (NNC-coded, 16-bit non-weights; the float32 run sends
            it as float32), for clients that cannot build it themselves.
        engine: ``"simulation"``: Flower's simulation engine (ray; clients train in parallel);
            ``"inprocess"``: a plain loop in this process, without ray (module docstring).
        client_cpus: CPUs of each client: ray reserves them per client (simulation engine), and every
            client trains with this many torch threads (both engines).
        client_gpus: GPUs ray reserves per client (simulation engine; a fraction shares a GPU among
            clients); needs a CUDA GPU and a GPU ``accelerator`` ("gpu", "cuda" or "auto"), checked before
            the run starts.
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
    percentile: float = 97.0
    size_decay: bool = False
    qp_density: int = 2
    tca: bool = True
    row_skipping: bool = True
    limit_train_batches: int | float | None = None
    accelerator: str = "cpu"
    initial_model: str = "recipe"
    engine: str = "simulation"
    client_cpus: int = 1
    client_gpus: float = 0.0

    def __post_init__(self):
        for name in ("clients", "rounds", "local_epochs", "client_cpus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"federated.{name} must be an integer >= 1, got {value!r}")
        if self.initial_model not in ("recipe", "nnc"):
            raise ValueError(f"federated.initial_model must be 'recipe' or 'nnc', got {self.initial_model!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"federated.engine must be one of {ENGINES}, got {self.engine!r}")
        if not self.alpha > 0:
            raise ValueError(f"federated.alpha must be > 0, got {self.alpha!r}")
        if isinstance(self.percentile, bool) or not 0 < self.percentile <= 100:
            raise ValueError(f"federated.percentile must be in (0, 100], got {self.percentile!r}")
        if isinstance(self.client_gpus, bool) or not self.client_gpus >= 0:
            raise ValueError(f"federated.client_gpus must be a number >= 0, got {self.client_gpus!r}")
        for name in ("up_bits", "down_bits", "nonweight_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 8:
                raise ValueError(f"federated.{name} must be an integer in 2..8, got {value!r}")
        self._check_coding()
        _check_batch_limit(self.limit_train_batches)

    def _check_coding(self) -> None:
        """The update coding keys, checked here so that the message names the recipe key (UpdateQuantizer's
        own checks know only its argument names)."""
        for name in ("up_lam", "down_lam"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValueError(f"federated.{name} must be a finite number >= 0, got {value!r}")
        if isinstance(self.qp_density, bool) or self.qp_density not in range(8):
            raise ValueError(f"federated.qp_density must be an integer in 0..7, got {self.qp_density!r}")
        for name in ("size_decay", "tca", "row_skipping"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"federated.{name} must be true or false, got {getattr(self, name)!r}")


def _check_batch_limit(value: int | float | None) -> None:
    """Lightning reads an int as a number of batches and a float as a fraction of them; 0 would train
    nothing (every round would send empty updates), so it is refused too."""
    valid = value is None or (
        not isinstance(value, bool)
        and ((isinstance(value, int) and value >= 1) or (isinstance(value, float) and 0 < value <= 1)))
    if not valid:
        raise ValueError("federated.limit_train_batches must be a fraction in (0, 1] or a number of batches "
                         f">= 1, got {value!r}")


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


def _training_split(datamodule: pl.LightningDataModule,
                    config: FederatedConfig) -> tuple[DataLoader, list[torch.Tensor]]:
    """The training loader of ``datamodule`` (set up here) and the clients' shards of its dataset."""
    datamodule.setup("fit")
    train_loader = datamodule.train_dataloader()
    shards = dirichlet_split(_labels_of(train_loader.dataset), config.clients, config.alpha, config.seed)
    return train_loader, shards


def _client_loader(train_loader: DataLoader, shard: torch.Tensor, cid: int,
                   config: FederatedConfig) -> DataLoader:
    """Client ``cid``'s loader: its shard, shuffled by a generator of its own (seeded per client)."""
    return DataLoader(Subset(train_loader.dataset, shard.tolist()), batch_size=train_loader.batch_size,
                      shuffle=True, collate_fn=train_loader.collate_fn,
                      generator=torch.Generator().manual_seed(config.seed + 1000 + cid))


# ------------------------------------------------------------------------------------------------ state
def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu").clone() for name, t in module.state_dict().items()}


def _as_held(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.float32 if v.is_floating_point() else torch.int64) for k, v in state.items()}


def _cloned(state: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    return None if state is None else {k: v.clone() for k, v in state.items()}


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


def _to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _from_bytes(data: bytes) -> Any:
    # written by _to_bytes in this run's own client processes (client states, update records)
    return torch.load(io.BytesIO(data), weights_only=False)


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _quiet_trainer() -> Iterator[None]:
    """Lightning's info lines of every Trainer (GPU/TPU available, tips, "fit stopped") would repeat for
    every client and round; so would its warnings (a ``catch_warnings`` block resets Python's once-only
    registry) about the validation loop the clients skip on purpose and its own use of a deprecated torch
    API."""
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")  # where rank_zero_info logs
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*`validation_step` but have no `val_dataloader`")
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            yield
    finally:
        logger.setLevel(level)


def _client_seed(config: FederatedConfig, rnd: int, cid: int) -> int:
    return int(np.random.SeedSequence([config.seed, rnd, cid]).generate_state(1)[0])


# ------------------------------------------------------------------------------------------------ client
def _float32_parameters(arrays: Sequence[np.ndarray]):
    from flwr.common import ndarrays_to_parameters

    parameters = ndarrays_to_parameters([np.asarray(a, dtype=np.float32) for a in arrays])
    parameters.tensor_type = FLOAT32
    return parameters


def _client_trainer(config: FederatedConfig) -> pl.Trainer:
    """The Lightning Trainer of one client's local epochs (no logs, checkpoints or validation)."""
    return pl.Trainer(max_epochs=config.local_epochs, accelerator=config.accelerator, devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0,
                      limit_train_batches=config.limit_train_batches)


def check_machine(config: FederatedConfig) -> None:
    """Fails before the run starts when this machine cannot give the clients what ``config`` asks for: the
    client trainers' ``accelerator``, and (simulation engine) the GPUs ray reserves per client. Ray would
    otherwise start no client at all, and Lightning fail inside every client."""
    if config.engine == "simulation" and config.client_gpus > 0:
        if not torch.cuda.is_available():
            raise ValueError(f"federated.client_gpus {config.client_gpus:g} reserves GPUs for the clients, "
                             "but this machine has no CUDA GPU (torch.cuda.is_available() is False); set "
                             "--federated.client_gpus 0")
        if config.accelerator not in GPU_ACCELERATORS:
            raise ValueError(f"federated.client_gpus {config.client_gpus:g} reserves GPUs for clients that "
                             f"train on federated.accelerator {config.accelerator!r}; set "
                             "--federated.accelerator gpu, or --federated.client_gpus 0")
    try:
        with _quiet_trainer():
            _client_trainer(config)  # Lightning's own check of the accelerator, as each client makes it
    except Exception as error:  # MisconfigurationException, ValueError, ...: any means it cannot train
        raise ValueError(f"federated.accelerator {config.accelerator!r}: {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@functools.cache
def _make_client_class():
    from flwr.client import Client
    from flwr.common import Code, FitIns, FitRes, Parameters, Status, parameters_to_ndarrays

    class NNCClient(Client):
        """A Flower client that receives NNC-coded global models and sends NNC-coded updates.

        Its state between rounds (:meth:`state_dict`) is what the simulation engine keeps in the node's
        context; the in-process engine keeps the objects themselves."""

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

        def state_dict(self) -> dict:
            """Everything the client carries from one round to the next: the model it holds, the running
            sum of its changes and its error-feedback quantizer, its update encoder, its downstream decoder
            and its loader's shuffle generator."""
            return {"held": _cloned(self.held), "sent_total": _cloned(self.sent_total),
                    "quantizer": None if self.quantizer is None else self.quantizer.state_dict(),
                    "encoder": self.encoder.state_dict(), "down": self.down.state_dict(),
                    "generator": self.loader.generator.get_state()}

        def load_state_dict(self, state: Mapping) -> None:
            """Restores :meth:`state_dict` of the same client (same id and config)."""
            self.held, self.sent_total = _cloned(state["held"]), _cloned(state["sent_total"])
            self.quantizer = None
            if state["quantizer"] is not None:
                self.quantizer = self._new_quantizer(state["quantizer"]["reference"])
                self.quantizer.load_state_dict(state["quantizer"])
            self.encoder.load_state_dict(state["encoder"])
            self.down.load_state_dict(state["down"])
            self.loader.generator.set_state(state["generator"])

        def _new_quantizer(self, like: Mapping[str, torch.Tensor]) -> UpdateQuantizer:
            zeros = {k: torch.zeros_like(v) for k, v in like.items()}
            config = self.config
            return UpdateQuantizer(zeros, bits=config.up_bits, lam=config.up_lam,
                                   nonweight_bits=config.nonweight_bits, qp_density=config.qp_density,
                                   percentile=config.percentile, size_decay=config.size_decay)

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

        def _train(self) -> dict[str, torch.Tensor]:
            module = copy.deepcopy(self.template)
            module.load_state_dict(_to_module_dtypes(self.held, module.state_dict()), strict=True)
            with _quiet_trainer():
                _client_trainer(self.config).fit(module, train_dataloaders=self.loader)
            return _as_held(_cpu_state(module))

        def fit(self, ins: FitIns) -> FitRes:
            rnd = int(ins.config["round"])
            # the same threads and random draws (dropout, augmentation) whichever engine or process runs it
            pl.seed_everything(_client_seed(self.config, rnd, self.cid), workers=True, verbose=False)
            with _torch_threads(self.config.client_cpus):
                self._receive(ins.parameters)
                trained = self._train()
                if ins.config.get("float32", False):  # baseline: the trained model as float32, no coding
                    arrays = [trained[k].to(torch.float32).numpy() for k in self.names]
                    return FitRes(status=Status(code=Code.OK, message=""),
                                  parameters=_float32_parameters(arrays),
                                  num_examples=len(self.loader.dataset),
                                  metrics={"bytes": sum(a.nbytes for a in arrays)})
                data = self._encode({k: trained[k] - self.held[k] for k in trained}, rnd)
            return FitRes(status=Status(code=Code.OK, message=""),
                          parameters=Parameters(tensors=[data], tensor_type=NNC_UPDATE),
                          num_examples=len(self.loader.dataset), metrics={"bytes": len(data)})

        def _encode(self, change: dict[str, torch.Tensor], rnd: int) -> bytes:
            if self.quantizer is None:  # error feedback over rounds: quantize the running sum of changes
                self.quantizer = self._new_quantizer(change)
                self.sent_total = {k: torch.zeros_like(v) for k, v in change.items()}
            self.sent_total = {k: self.sent_total[k] + change[k] for k in change}
            difference = self.quantizer.residual(self.sent_total)
            update = self.quantizer.quantize(self.sent_total)
            data = self.encoder.encode(update)
            if self.observer is not None:
                self.observer(UpdateRecord("up", rnd, self.cid, difference, update, data))
            return data

    return NNCClient


# ------------------------------------------------------------------------------------------------ server
class _FederatedServer:
    """The server side of one run, shared by both engines: each round's downstream (:meth:`downstream`),
    and the decoding of the clients' replies, Flower's FedAvg and the test accuracy (:meth:`aggregate`)."""

    def __init__(self, module: pl.LightningModule, test_loader: DataLoader, config: FederatedConfig,
                 float32: bool = False, observer: UpdateObserver | None = None):
        from flwr.server.strategy import FedAvg

        self.config, self.float32, self.observer, self.test_loader = config, float32, observer, test_loader
        self.strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=config.clients,
                               min_available_clients=config.clients)
        self.template_state = _cpu_state(module)
        self.names = list(self.template_state)
        self.evaluator = copy.deepcopy(module)
        self.model_float32 = coding.float32_bytes(self.template_state)
        self.sends_initial = config.initial_model == "nnc"
        self.base = None
        self.held = _as_held(self.template_state)  # what every client holds after the round's downstream
        self.global_state = self.held
        self.bytes_down = 0
        if not float32:
            if self.sends_initial:
                self.base = coding.encode_state_dict(self.template_state, nonweight_bits=16)
                self.held = self.global_state = _as_held(coding.decode_state_dict(self.base))
            self.up_decoders = [coding.UpdateDecoder() for _ in range(config.clients)]
            self.down_quantizer = UpdateQuantizer(self.held, bits=config.down_bits, lam=config.down_lam,
                                                  nonweight_bits=config.nonweight_bits,
                                                  qp_density=config.qp_density,
                                                  percentile=config.percentile,
                                                  size_decay=config.size_decay)
            self.down_encoder = coding.UpdateEncoder(qp_density=config.qp_density, tca=config.tca,
                                                     row_skipping=config.row_skipping)

    def downstream(self, rnd: int):
        """The :class:`flwr.common.FitIns` every client receives in round ``rnd`` (the global model, coded;
        config ``round`` and ``float32``)."""
        from flwr.common import FitIns, Parameters

        clients = self.config.clients
        if rnd == 1 and not self.sends_initial:
            parameters, self.bytes_down = Parameters(tensors=[], tensor_type=RECIPE_MODEL), 0
        elif self.float32:
            parameters = _float32_parameters([self.global_state[k].to(torch.float32).numpy()
                                              for k in self.names])
            self.bytes_down = self.model_float32 * clients
            self.held = _cloned(self.global_state)
        else:
            if rnd == 1:
                parameters = Parameters(tensors=[self.base], tensor_type=NNC_MODEL)
            else:
                difference = self.down_quantizer.residual(self.global_state)
                update = self.down_quantizer.quantize(self.global_state)
                parameters = Parameters(tensors=[self.down_encoder.encode(update)], tensor_type=NNC_UPDATE)
                if self.observer is not None:
                    self.observer(UpdateRecord("down", rnd, None, difference, update, parameters.tensors[0]))
            self.bytes_down = len(parameters.tensors[0]) * clients
            self.held = _cloned(self.down_quantizer.reference)
        return FitIns(parameters=parameters, config={"round": rnd, "float32": self.float32})

    def aggregate(self, rnd: int, replies: Sequence[tuple[int, Any]]) -> RoundResult:
        """FedAvg of the clients' ``(client id, FitRes)`` replies to round ``rnd``: decodes each update,
        averages in client-id order (the float sums do not depend on the order the replies arrived in),
        evaluates the new global model; returns the round's bytes and accuracy."""
        from flwr.common import FitRes, ndarrays_to_parameters, parameters_to_ndarrays

        replies = sorted(replies, key=lambda reply: reply[0])
        if [cid for cid, _ in replies] != list(range(self.config.clients)):
            raise RuntimeError(f"round {rnd}: replies from clients {[cid for cid, _ in replies]}, expected "
                               f"one from each of 0..{self.config.clients - 1}")
        fit_results, bytes_up = [], 0
        for cid, res in replies:
            if self.float32:
                estimate = parameters_to_ndarrays(res.parameters)
                bytes_up += sum(np.asarray(a, dtype=np.float32).size * 4 for a in estimate)
            else:
                data = res.parameters.tensors[0]
                bytes_up += len(data)
                change = coding.apply_updates({k: torch.zeros_like(v) for k, v in self.held.items()}, [data],
                                              decoder=self.up_decoders[cid])
                # the server's view of the client model: what the client received plus its decoded change
                estimate = [(self.held[k] + change[k]).numpy() for k in self.names]
            fit_results.append((None, FitRes(status=res.status, parameters=ndarrays_to_parameters(estimate),
                                              num_examples=res.num_examples, metrics=res.metrics)))
        aggregated, _ = self.strategy.aggregate_fit(rnd, fit_results, [])
        self.global_state = self._held_dtypes(parameters_to_ndarrays(aggregated))
        self.evaluator.load_state_dict(_to_module_dtypes(self.global_state, self.template_state), strict=True)
        accuracy = _accuracy(self.evaluator, self.test_loader)
        directions = 2 if rnd > 1 or self.sends_initial else 1  # round 1 of "recipe": upstream only
        result = RoundResult(round=rnd, bytes_up=bytes_up, bytes_down=self.bytes_down,
                             float32_bytes=directions * self.model_float32 * self.config.clients,
                             accuracy=accuracy, client_samples=[res.num_examples for _, res in replies])
        if self.float32:
            log.info("float32 FedAvg round %d: up %d B, down %d B, accuracy %.4f", rnd, result.bytes_up,
                     result.bytes_down, accuracy)
        else:
            log.info("round %d: up %d B, down %d B (float32 FedAvg would send %d B), accuracy %.4f", rnd,
                     result.bytes_up, result.bytes_down, result.float32_bytes, accuracy)
        return result

    def _held_dtypes(self, arrays: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.asarray(a)).to(self.held[k].dtype) if self.held[k].is_floating_point()
                else torch.from_numpy(np.asarray(a)).round().to(torch.int64)  # 0-D arrays stay tensors
                for k, a in zip(self.names, arrays, strict=True)}


# ------------------------------------------------------------------------------------------------ engines
def _run_inprocess(server: _FederatedServer, module: pl.LightningModule, train_loader: DataLoader,
                   shards: Sequence[torch.Tensor], config: FederatedConfig,
                   observer: UpdateObserver | None) -> list[RoundResult]:
    """The rounds as a plain loop over the clients, one after the other, in this process."""
    client_class = _make_client_class()
    clients = [client_class(cid, module, _client_loader(train_loader, shard, cid, config), config, observer)
               for cid, shard in enumerate(shards)]
    results = []
    for rnd in range(1, config.rounds + 1):
        ins = server.downstream(rnd)
        results.append(server.aggregate(rnd, [(client.cid, client.fit(ins)) for client in clients]))
    return results


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError as error:
        raise ImportError('federated.engine "simulation" runs on Flower\'s simulation engine, which needs '
                          'ray: pip install "ecqx[federated]" (or run without ray: --federated.engine '
                          'inprocess)') from error


class _ClientPayload(NamedTuple):
    """What every simulated client needs besides its message: the recipe's model and datamodule (each
    actor sets its own copy up, as the driver does), the config, and whether update records go back to an
    observer."""

    template: pl.LightningModule
    datamodule: pl.LightningDataModule
    config: FederatedConfig
    observe: bool


@contextlib.contextmanager
def _client_payload(payload: _ClientPayload) -> Iterator[str]:
    """Writes ``payload`` to a temporary file for the run; yields its path.

    Flower pickles the ClientApp into the ray actors with every message, so the app carries only this path;
    each actor process loads the payload once (:func:`_actor_clients`)."""
    from ray import cloudpickle  # recipes may hold objects that only cloudpickle can pickle (lambdas)

    with tempfile.TemporaryDirectory(prefix="ecqx-federate-") as folder:
        path = os.path.join(folder, "clients.pkl")
        with open(path, "wb") as handle:
            cloudpickle.dump(payload, handle)
        yield path


_ACTOR_CLIENTS: dict[str, tuple[_ClientPayload, DataLoader, list[torch.Tensor]]] = {}


def _actor_clients(path: str) -> tuple[_ClientPayload, DataLoader, list[torch.Tensor]]:
    """The payload, training loader and shards of this actor process (loaded on its first message)."""
    if path not in _ACTOR_CLIENTS:
        from ray import cloudpickle

        with open(path, "rb") as handle:
            payload = cloudpickle.load(handle)
        pl.seed_everything(payload.config.seed, workers=True, verbose=False)  # as the driver before its setup
        _ACTOR_CLIENTS.clear()  # one run at a time
        _ACTOR_CLIENTS[path] = (payload, *_training_split(payload.datamodule, payload.config))
    return _ACTOR_CLIENTS[path]


def _parameters_record(parameters, **values):
    from flwr.common import ConfigRecord

    return ConfigRecord({"tensors": list(parameters.tensors), "tensor_type": parameters.tensor_type,
                         **values})


def _parameters_of(record):
    from flwr.common import Parameters

    return Parameters(tensors=list(record["tensors"]), tensor_type=str(record["tensor_type"]))


def _client_train(msg, context, path: str):
    """The ClientApp's ``train`` handler: one client's round (its state restored from and saved to the
    node's context); the reply carries its FitRes and, with an observer, its update records."""
    from flwr.common import ConfigRecord, FitIns, Message, RecordDict

    payload, train_loader, shards = _actor_clients(path)
    cid = int(context.node_config["partition-id"])
    records: list[UpdateRecord] = []
    client = _make_client_class()(cid, payload.template, _client_loader(train_loader, shards[cid], cid,
                                                                          payload.config),
                                  payload.config, records.append if payload.observe else None)
    if CLIENT_STATE in context.state.config_records:
        client.load_state_dict(_from_bytes(context.state.config_records[CLIENT_STATE]["state"]))
    down = msg.content.config_records["fitins"]
    res = client.fit(FitIns(parameters=_parameters_of(down),
                            config={"round": down["round"], "float32": down["float32"]}))
    context.state.config_records[CLIENT_STATE] = ConfigRecord({"state": _to_bytes(client.state_dict())})
    reply = {"cid": cid, "num_examples": res.num_examples, "records": _to_bytes(records) if records else b""}
    return Message(content=RecordDict({"fitres": _parameters_record(res.parameters, **reply),
                                       "metrics": ConfigRecord(dict(res.metrics))}), reply_to=msg)


def _client_app(path: str):
    from flwr.client import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg, context):
        return _client_train(msg, context, path)

    return app


def _reply_of(message) -> tuple[int, Any, list[UpdateRecord]]:
    from flwr.common import Code, FitRes, Status

    record, metrics = message.content.config_records["fitres"], message.content.config_records["metrics"]
    res = FitRes(status=Status(code=Code.OK, message=""), parameters=_parameters_of(record),
                 num_examples=int(record["num_examples"]), metrics=dict(metrics))
    return int(record["cid"]), res, _from_bytes(record["records"]) if record["records"] else []


def _client_error(reason: str) -> tuple[str, str]:
    """The client's own exception message from a ray error reply, and the reply's whole report (ray wraps
    the client's traceback in its own, with terminal colours)."""
    report = re.sub(r"\x1b\[[0-9;]*m", "", reason)
    message = report.rpartition("Message:")[2] if "Message:" in report else report
    return message.strip().rstrip("'>").strip(), report


class _EngineStopped(FederatedError):
    """Raised in the ServerApp's thread when the engine around it has ended (see :func:`_run_simulation`)."""


def _node_ids(grid, count: int, stop: threading.Event) -> list[int]:
    """The ids of the simulation's ``count`` virtual nodes (they register while the ServerApp starts)."""
    deadline = time.monotonic() + NODE_WAIT_S
    while len(nodes := sorted(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise FederatedError(f"only {len(nodes)} of {count} simulated clients registered in "
                                 f"{NODE_WAIT_S} s")
        if stop.wait(PULL_INTERVAL_S):
            raise _EngineStopped("Flower's simulation engine ended before its clients registered")
    return nodes


def _exchange(grid, messages: list, stop: threading.Event) -> list:
    """Flower's ``grid.send_and_receive`` (push, then pull until every message has its reply), except that it
    gives up once ``stop`` is set: Flower's own waits for ever when its engine has died."""
    pending = set(grid.push_messages(messages))
    replies: list = []
    while pending:
        if stop.is_set():
            raise _EngineStopped(f"Flower's simulation engine ended with {len(pending)} replies outstanding")
        received = list(grid.pull_messages(pending))
        replies += received
        pending -= {reply.metadata.reply_to_message_id for reply in received}
        if pending and not received:
            stop.wait(PULL_INTERVAL_S)
    return replies


def _send_round(grid, nodes: Sequence[int], ins, rnd: int,
                stop: threading.Event) -> list[tuple[int, Any, list[UpdateRecord]]]:
    """Sends round ``rnd``'s FitIns to every node, waits for all replies; raises on a client's error."""
    from flwr.common import Message, MessageType, RecordDict

    config = {"round": rnd, "float32": bool(ins.config["float32"])}
    messages = [Message(content=RecordDict({"fitins": _parameters_record(ins.parameters, **config)}),
                        dst_node_id=node, message_type=MessageType.TRAIN, group_id=str(rnd))
                for node in nodes]
    replies = _exchange(grid, messages, stop)
    errors = [reply.error.reason for reply in replies if reply.has_error()]
    if errors:
        message, report = _client_error(errors[0])
        raise FederatedError(f"federated round {rnd}: {len(errors)} of {len(nodes)} clients failed; the "
                             f"first error: {message}\n(the client's report: {report})")
    if len(replies) != len(nodes):
        raise FederatedError(f"federated round {rnd}: {len(replies)} replies from {len(nodes)} clients")
    return [_reply_of(reply) for reply in replies]


class _ServerRun(NamedTuple):
    """What the ServerApp and the thread that started the engine share: the results, the ServerApp's own
    error (if any), and the event that tells a waiting ServerApp that the engine has ended."""

    results: list[RoundResult]
    errors: list[BaseException]
    stop: threading.Event


def _server_app(server: _FederatedServer, config: FederatedConfig, run: _ServerRun):
    from flwr.server import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid, context):
        try:
            nodes = _node_ids(grid, config.clients, run.stop)
            for rnd in range(1, config.rounds + 1):
                replies = sorted(_send_round(grid, nodes, server.downstream(rnd), rnd, run.stop),
                                 key=lambda r: r[0])
                if server.observer is not None:  # in the order the in-process engine reports them
                    for _, _, records in replies:
                        for record in records:
                            server.observer(record)
                run.results.append(server.aggregate(rnd, [(cid, res) for cid, res, _ in replies]))
        except BaseException as error:
            run.errors.append(error)  # Flower re-raises it from run_simulation: see _run_simulation
            raise

    return app


def _backend_config(config: FederatedConfig) -> dict:
    """Ray resources: ``client_cpus``/``client_gpus`` per client, and no more CPUs than the clients can use
    at once (each ray actor is a process of its own, with its own copy of torch and the data)."""
    cpus = max(config.client_cpus, min(os.cpu_count() or 1, config.clients * config.client_cpus))
    return {"client_resources": {"num_cpus": config.client_cpus, "num_gpus": float(config.client_gpus)},
            "init_args": {"num_cpus": int(math.ceil(cpus)), "object_store_memory": 200 * 2**20,
                          "include_dashboard": False, "logging_level": "error", "log_to_driver": False}}


def _run_simulation(server: _FederatedServer, path: str, config: FederatedConfig) -> list[RoundResult]:
    """The rounds on Flower's simulation engine: ServerApp in a driver thread, clients in ray actors.

    Flower re-raises an error of the ServerApp (a client's error) from ``run_simulation``; that passes
    unchanged. When its engine itself fails (e.g. ray cannot place a single client), ``run_simulation``
    raises its own error while the ServerApp thread, which Flower does not make a daemon, still waits for
    replies: the process would never exit. So the ServerApp waits on ``stop`` too, set here however the
    engine ends, and the engine's error is raised with its cause."""
    from flwr.simulation import run_simulation

    run = _ServerRun([], [], threading.Event())
    try:
        run_simulation(server_app=_server_app(server, config, run), client_app=_client_app(path),
                       num_supernodes=config.clients, backend_config=_backend_config(config))
    except Exception as error:
        if any(error is own for own in run.errors):
            raise
        raise FederatedError(f"Flower's simulation engine failed: {_root_cause(error)}") from error
    finally:
        run.stop.set()
    if len(run.results) != config.rounds:
        raise FederatedError(f"Flower's simulation ended after {len(run.results)} of {config.rounds} rounds")
    return run.results


def _root_cause(error: BaseException) -> str:
    """``Type: first line`` of the innermost exception of ``error``'s chain (Flower wraps the backend's)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {_first_line(error)}"


@contextlib.contextmanager
def _flower_environment() -> Iterator[None]:
    """Flower and ray settings for a run started from Python: no usage telemetry (read when flwr is first
    imported), ray's present GPU visibility for actors without GPUs (also silences its warning about a
    future change), and flwr's console logger at ERROR or above (a caller may have set it higher): it logs at
    DEBUG by default, and warns about ``run_simulation``'s deprecation (module docstring) and FedAvg's unused
    metrics on every run."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    try:
        import flwr.common  # noqa: F401  (configures the "flwr" logger)
    except ImportError as error:
        raise ImportError('ecqx federate needs Flower: pip install "ecqx[federated]"') from error

    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


def run_federated(module: pl.LightningModule, datamodule: pl.LightningDataModule,
                  config: FederatedConfig, float32: bool = False,
                  observer: UpdateObserver | None = None) -> list[RoundResult]:
    """Runs ``config.rounds`` rounds of NNC-coded FedAvg on ``config.engine`` (module docstring); returns
    the per-round results.

    ``float32=True``: the baseline, the same rounds without NNC coding (float32 parameters both ways; the
    bytes counted are 4 per value, per client and direction). ``observer``: called with an
    :class:`UpdateRecord` for every NNC difference update sent (both directions, in send order: each round
    the downstream, then the clients' upstream in client-id order), e.g. to code the same updates with
    another codec; with the simulation engine the clients' records come back with their replies."""
    if config.engine == "simulation":
        _require_ray()
    check_machine(config)
    with _flower_environment():
        pl.seed_everything(config.seed, workers=True, verbose=False)
        if config.engine == "simulation":
            payload = _ClientPayload(module, datamodule, config, observer is not None)
            with _client_payload(payload) as path:  # before the driver sets the datamodule up
                datamodule.setup("fit")
                server = _FederatedServer(module, datamodule.test_dataloader(), config, float32, observer)
                return _run_simulation(server, path, config)
        train_loader, shards = _training_split(datamodule, config)
        server = _FederatedServer(module, datamodule.test_dataloader(), config, float32, observer)
        return _run_inprocess(server, module, train_loader, shards, config, observer)


# ------------------------------------------------------------------------------------------------ command
USAGE = ("ecqx federate --config RECIPE.yaml [--results FILE.json] [--baseline true] [--debug] "
         "[--section.key VALUE ...] [--print_config]")


def _parser():
    from jsonargparse import ArgumentParser

    from ecqx.training.module import ClassificationModule

    # a one-line usage, as `ecqx fit` has (cli.py): jsonargparse prints the usage before every parse error,
    # and the generated one lists every option of the recipe in 20+ lines above the cause
    parser = ArgumentParser(prog="ecqx federate", description=__doc__.split("\n")[0], usage=USAGE)
    parser.add_argument("--config", action="config", help="federated recipe (YAML)")
    parser.add_subclass_arguments(ClassificationModule, "model", required=True)
    parser.add_subclass_arguments(pl.LightningDataModule, "data", required=True)
    parser.add_class_arguments(FederatedConfig, "federated")
    parser.add_argument("--results", type=str | None, default=None,
                        help="write per-round results (JSON) and the accuracy-vs-bytes plot (FILE.png)")
    parser.add_argument("--baseline", type=bool, default=False,
                        help="also run float32 FedAvg (same clients, split, seeds, rounds) for comparison")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback and Flower's logs instead of the one-line "
                             "message")
    return parser


def _summary(config: FederatedConfig, results: Sequence[RoundResult]) -> dict:
    return {
        "config": asdict(config),
        "rounds": [asdict(r) for r in results],
        "total_bytes_up": sum(r.bytes_up for r in results),
        "total_bytes_down": sum(r.bytes_down for r in results),
        "total_float32_bytes": sum(r.float32_bytes for r in results),
    }


def _labelled_round(rnd: int, rounds: int) -> bool:
    """Rounds 1–5, every fifth and the last carry their number in the plot."""
    return rnd <= 5 or rnd % 5 == 0 or rnd == rounds


def _minor_label(value: float, _position) -> str:
    """Minor ticks of the log axis: only 2 and 5 times a power of ten are labelled, so labels never touch."""
    mantissa = round(value / 10 ** np.floor(np.log10(value)), 6) if value > 0 else 0
    return f"{value:g}" if mantissa in (2.0, 5.0) else ""


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
            if not _labelled_round(r.round, len(results)):  # late rounds crowd together on a log axis
                continue
            axes.annotate(str(r.round), (x, y), textcoords="offset points", xytext=(4, -11),
                          fontsize="x-small", color=f"C{index}")
    axes.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_formatter(FuncFormatter(_minor_label))
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
    [--federated.rounds N ...]``), runs; errors propagate (:func:`main` reports them)."""
    parser = _parser()
    cfg = parser.parse_args(list(argv))
    return _federate(parser, cfg)


def _federate(parser, cfg) -> list[RoundResult]:
    """Runs the parsed command: the rounds (and the baseline), the results file and plot, the totals."""
    with _command_logging(cfg.debug):
        pl.seed_everything(cfg.federated.seed, workers=True, verbose=False)  # the model's initial weights
        init = parser.instantiate_classes(cfg)
        config = init.federated
        template = copy.deepcopy(init.model) if cfg.baseline else None  # the same initial weights for both
        runs = {"NNC-coded FedAvg": run_federated(init.model, init.data, config)}
        if cfg.baseline:
            runs["float32 FedAvg"] = run_federated(template, init.data, config, float32=True)
        if cfg.results:
            _write_results(cfg.results, config, runs)
        for label, results in runs.items():
            log.info("%s", _totals(label, results))
        return runs["NNC-coded FedAvg"]


def _write_results(path: str, config: FederatedConfig, runs: Mapping[str, Sequence[RoundResult]]) -> None:
    """Writes ``path`` (JSON: the NNC run, the baseline under "baseline") and the plot next to it."""
    results, baseline = runs["NNC-coded FedAvg"], runs.get("float32 FedAvg")
    summary = _summary(config, results)
    if baseline is not None:
        summary["baseline"] = _summary(config, baseline) | {"mode": "float32 FedAvg"}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_bytes_atomic(path, (json.dumps(summary, indent=2) + "\n").encode())
    stem, _ = os.path.splitext(path)
    write_accuracy_bytes_plot(stem + ".png", runs,
                              title=f"FedAvg, {config.clients} clients, Dirichlet α = {config.alpha}")
    log.info("results: %s, plot: %s", path, stem + ".png")


def _totals(label: str, results: Sequence[RoundResult]) -> str:
    """One line per run after the rounds (each round was logged as it finished)."""
    sent = sum(r.bytes_up + r.bytes_down for r in results)
    float32 = sum(r.float32_bytes for r in results)
    share = f" ({100 * sent / float32:.2f} % of float32 FedAvg's {float32} B)" if "NNC" in label else ""
    return (f"{label}: {len(results)} rounds, {sent} B sent{share}, final accuracy "
            f"{results[-1].accuracy:.4f}")


@contextlib.contextmanager
def _command_logging(debug: bool) -> Iterator[None]:
    """The command's output: ecqx's own INFO lines (each round's result) on stdout, without configuring the
    root logger (every library's INFO would appear, e.g. alembic's from ray). Without ``debug`` Flower's
    logger is silenced: its ERROR lines repeat, with ray's tracebacks, what :func:`main` reports in one."""
    logger = logging.getLogger("ecqx")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with contextlib.ExitStack() as stack:
            if not debug:
                stack.enter_context(_silenced("flwr"))
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.contextmanager
def _silenced(name: str) -> Iterator[None]:
    try:
        import flwr.common  # noqa: F401  (sets the "flwr" logger's level when first imported)
    except ImportError:
        pass  # run_federated says what to install
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def main(argv: Sequence[str]) -> int:
    """``ecqx federate``: returns the exit status. A bad recipe or option: jsonargparse's usage line and
    error (status 2); a bad value or a missing package: one line, status 2; a failed run: one line, status
    1. ``--debug`` raises instead, with the traceback (and the client's report)."""
    parser = _parser()
    cfg = parser.parse_args(list(argv))
    try:
        _federate(parser, cfg)
    except (ValueError, FileNotFoundError, ImportError) as error:
        if cfg.debug:
            raise
        print(f"ecqx federate: error: {_first_line(error)}", file=sys.stderr)
        return 2
    except FederatedError as error:
        if cfg.debug:
            raise
        print(f"ecqx federate: error: {_first_line(error)}", file=sys.stderr)
        return 1
    except Exception as error:
        if cfg.debug:
            raise
        print(f"ecqx federate: error: {type(error).__name__}: {_first_line(error)} (--debug shows the "
              "traceback)", file=sys.stderr)
        return 1
    return 0


__all__ = ["FederatedConfig", "FederatedError", "RoundResult", "UpdateRecord", "accuracy_bytes_figure",
           "check_machine", "dirichlet_split", "federate", "main", "run_federated",
           "write_accuracy_bytes_plot"]
