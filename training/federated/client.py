"""The client side: the Flower client ``NNCClient`` (:func:`_make_client_class`), its Lightning trainer
and :func:`check_machine`."""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ecqx import coding
from ecqx.updates import UpdateQuantizer

from .config import (
    FLOAT32,
    NNC_MODEL,
    NNC_UPDATE,
    RECIPE_MODEL,
    FederatedConfig,
    UpdateObserver,
    UpdateRecord,
    _first_line,
)
from .state import (
    _as_held,
    _client_seed,
    _cloned,
    _cpu_state,
    _quiet_trainer,
    _to_module_dtypes,
    _torch_threads,
)

GPU_ACCELERATORS = ("gpu", "cuda", "auto")  # Lightning accelerators that train on the CUDA GPUs ray reserves


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
