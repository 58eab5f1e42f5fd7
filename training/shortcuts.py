"""Command-line shortcuts of ``ecqx fit | validate | test`` for the quantization callback and the export.

A recipe lists its callbacks as a YAML list, which LightningCLI can only replace as a whole from the command
line. The shortcuts change the recipe's one quantization callback and its ``NNCExport`` in place:

``--method {ecq,ecqx,ec2t}``
    the quantization method. A different method than the recipe's replaces its callback with the new
    method's defaults; only ``start_epoch`` (the recipe's schedule) and the other shortcuts carry over.
    A recipe without a quantization callback gets one.
``--bits B``, ``--lam L``, ``--start-epoch E``
    the callback's ``bits`` (ECQ/ECQx only: EC2T is ternary), ``lam`` and ``start_epoch``.
``--nnc PATH``
    where ``NNCExport`` writes the ``.nnc`` file (an ``NNCExport`` is added when the recipe has none). The
    path is taken relative to the current folder (made absolute here), so it is kept as typed, while a
    relative path from the recipe lands in the run's versioned log folder
    (:func:`ecqx.training.report.place_outputs_in_run_folder`).
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any, Literal

from jsonargparse import Namespace

METHODS = {"ecq": "ecqx.callbacks.ECQ", "ecqx": "ecqx.callbacks.ECQx", "ec2t": "ecqx.callbacks.EC2T"}
EXPORT = "ecqx.callbacks.NNCExport"
SHORTCUTS = ("method", "bits", "lam", "start_epoch", "nnc")
_CARRIED_OVER = ("start_epoch",)


def add_shortcut_arguments(parser: Any) -> None:
    """Adds ``--method``, ``--bits``, ``--lam``, ``--start-epoch`` and ``--nnc`` to a LightningCLI parser."""
    group = parser.add_argument_group(
        "quantization shortcuts",
        "Change the recipe's quantization callback and export without editing its YAML "
        "(e.g. `ecqx fit --method ec2t --lam 0.2 --nnc out/model.nnc`).",
    )
    group.add_argument("--method", type=Literal["ecq", "ecqx", "ec2t"] | None, default=None,
                       help="quantization method (default: the recipe's)")
    group.add_argument("--bits", type=int | None, default=None,
                       help="grid bit width of ECQ/ECQx, 2..8 (default: the recipe's)")
    group.add_argument("--lam", type=float | None, default=None,
                       help="entropy constraint Λ (default: the recipe's)")
    group.add_argument("--start-epoch", "--start_epoch", dest="start_epoch", type=int | None, default=None,
                       help="first quantized epoch; earlier epochs train in full precision "
                       "(default: the recipe's)")
    group.add_argument("--nnc", type=str | None, default=None,
                       help="path of the .nnc file NNCExport writes, relative to the current folder "
                       "(default: the recipe's, inside the run's log folder)")


def apply_shortcuts(config: Namespace) -> None:
    """Applies the shortcut values of a parsed subcommand config to its ``trainer.callbacks`` in place."""
    values = {name: config.get(name) for name in SHORTCUTS}
    if all(value is None for value in values.values()):
        return
    callbacks = list(config.trainer.get("callbacks") or [])
    quantizer = _quantization_entries(callbacks)
    if len(quantizer) > 1:
        raise ValueError("--method/--bits/--lam/--start-epoch: the recipe lists more than one quantization "
                         "callback; edit the recipe instead")
    entry = quantizer[0] if quantizer else None
    if values["method"] is not None and (entry is None or entry.class_path != METHODS[values["method"]]):
        entry = _replace_method(callbacks, entry, values["method"])
    if any(values[name] is not None for name in ("bits", "lam", "start_epoch")):
        if entry is None:
            raise ValueError("--bits/--lam/--start-epoch: the recipe has no quantization callback; "
                             "add --method ecq|ecqx|ec2t")
        _set_init_args(entry, bits=values["bits"], lam=values["lam"], start_epoch=values["start_epoch"])
    if values["nnc"] is not None:
        _set_export_path(callbacks, os.path.abspath(values["nnc"]))
    config.trainer.callbacks = callbacks


def _entry_class(entry: Any) -> type | None:
    class_path = entry.get("class_path") if isinstance(entry, Namespace) else None
    if not class_path:
        return None
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return None


def _quantization_entries(callbacks: list) -> list[Namespace]:
    from ecqx.callbacks._base import QuantizationCallback

    found = []
    for entry in callbacks:
        cls = _entry_class(entry)
        if cls is not None and issubclass(cls, QuantizationCallback):
            found.append(entry)
    return found


def _replace_method(callbacks: list, old: Namespace | None, method: str) -> Namespace:
    kept = {} if old is None else {k: v for k, v in vars(old.get("init_args") or Namespace()).items()
                                   if k in _CARRIED_OVER}
    entry = Namespace(class_path=METHODS[method], init_args=Namespace(**kept))
    if old is None:
        callbacks.insert(0, entry)
    else:
        callbacks[callbacks.index(old)] = entry
    return entry


def _set_init_args(entry: Namespace, **values: Any) -> None:
    accepted = inspect.signature(_entry_class(entry).__init__).parameters
    init_args = entry.get("init_args") or Namespace()
    for name, value in values.items():
        if value is None:
            continue
        if name not in accepted:
            short = entry.class_path.rpartition(".")[2]
            arguments = ", ".join(p for p in accepted if p not in ("self", "kwargs"))
            option = "--" + name.replace("_", "-")
            raise ValueError(f"{option} does not apply to {short} (its arguments: {arguments})")
        init_args[name] = value
    entry.init_args = init_args


def _set_export_path(callbacks: list, path: str) -> None:
    from ecqx.callbacks import NNCExport

    exports = [e for e in callbacks if (cls := _entry_class(e)) is not None and issubclass(cls, NNCExport)]
    if not exports:
        callbacks.append(Namespace(class_path=EXPORT, init_args=Namespace(path=path)))
        return
    for entry in exports:
        init_args = entry.get("init_args") or Namespace()
        init_args.path = path
        entry.init_args = init_args
