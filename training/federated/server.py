"""The server side of a run (:class:`_FederatedServer`), shared by both engines."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ecqx import coding
from ecqx.updates import UpdateQuantizer

from .client import _float32_parameters
from .config import (
    NNC_MODEL,
    NNC_UPDATE,
    RECIPE_MODEL,
    FederatedConfig,
    RoundResult,
    UpdateObserver,
    UpdateRecord,
)
from .state import _accuracy, _as_held, _cloned, _cpu_state, _to_module_dtypes

log = logging.getLogger(__package__)  # "ecqx.training.federated": one logger for the package


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
