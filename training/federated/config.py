"""The ``federated:`` section of a recipe (:class:`FederatedConfig`), the per-round results, the update
records and the errors of a run."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

NNC_UPDATE = "nnc-update"
NNC_MODEL = "nnc-model"
RECIPE_MODEL = "recipe-model"  # round 1 without payload: every participant builds the recipe's initial model
FLOAT32 = "float32"  # tensor_type of the baseline: the state_dict values in order, as float32 arrays
ENGINES = ("simulation", "inprocess")


class FederatedError(RuntimeError):
    """A federated run failed: a client's error, or Flower's engine stopped. The first line of the message
    says what happened; further lines carry the details (e.g. the client's report)."""


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


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
