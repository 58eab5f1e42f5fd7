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

# the package's modules, one concern each: config (FederatedConfig, RoundResult, UpdateRecord, errors), data
# (the split, the client loaders), state (helpers), client (NNCClient, check_machine), server
# (_FederatedServer), engines (in-process loop, Flower's simulation engine, run_federated), plot, command.
# The `X as X` imports re-export names that tests and benchmarks use besides __all__.
from dataclasses import asdict as asdict

from .client import _make_client_class as _make_client_class
from .client import check_machine
from .command import _parser as _parser
from .command import federate, main
from .config import FederatedConfig, FederatedError, RoundResult, UpdateRecord
from .data import _client_loader as _client_loader
from .data import _training_split as _training_split
from .data import dirichlet_split
from .engines import _backend_config as _backend_config
from .engines import run_federated
from .plot import accuracy_bytes_figure, write_accuracy_bytes_plot
from .server import _FederatedServer as _FederatedServer
from .state import _from_bytes as _from_bytes
from .state import _to_bytes as _to_bytes

__all__ = ["FederatedConfig", "FederatedError", "RoundResult", "UpdateRecord", "accuracy_bytes_figure",
           "check_machine", "dirichlet_split", "federate", "main", "run_federated",
           "write_accuracy_bytes_plot"]
