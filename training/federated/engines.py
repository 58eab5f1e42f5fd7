"""The engines that run the rounds: the in-process loop and Flower's simulation engine (ServerApp,
ClientApp in ray actors); :func:`run_federated`."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from .client import _make_client_class, check_machine
from .config import FederatedConfig, FederatedError, RoundResult, UpdateObserver, UpdateRecord, _first_line
from .data import _client_loader, _training_split
from .server import _FederatedServer
from .state import _from_bytes, _to_bytes

CLIENT_STATE = "ecqx.client"  # the ConfigRecord of a node's context that holds its NNCClient state
NODE_WAIT_S = 120.0  # the simulation's virtual nodes register within moments of its start
PULL_INTERVAL_S = 0.05  # how often the ServerApp looks for client replies (Flower's send_and_receive: 0.1)


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
