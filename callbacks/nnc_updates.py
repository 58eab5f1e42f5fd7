"""``NNCUpdates``: publish a training run as an NNC base model plus a sequence of difference updates.

At the start of training the callback writes the **base**: the model as one NNC bitstream
(:func:`ecqx.coding.encode_state_dict`, quantized tensors of a quantization callback of the same trainer coded
losslessly, the rest with the fine non-weight step). Every ``every_n_epochs`` training epochs it writes one
**update**: the difference between the model and what a receiver of the base and the earlier updates holds,
quantized with ECQ on NNC steps with error feedback (:class:`ecqx.UpdateQuantizer`) and coded with
:class:`ecqx.coding.UpdateEncoder` (NNC edition 2: parent signalling, optionally TCA / HDSP / row skipping).

A receiver rebuilds the sender's accounted state with one call::

    state = ecqx.coding.apply_updates("run/base.nnc", ["run/update-0001.nnc", "run/update-0002.nnc"])

which equals :meth:`NNCUpdates.reference_state` bit for bit; the model itself differs from it by
:meth:`NNCUpdates.residual` (what quantization has not sent yet, carried into the next update).

Files: ``path`` is a folder (``base.nnc``, ``update-0001.nnc``, ``update-0002.nnc``, …) or a pattern with an
``{index}`` field and optionally ``{epoch}`` (``"run/u{index:03d}-e{epoch}.nnc"``); the base is index 0.
Every file is written atomically. Under ``ecqx fit`` a relative ``path`` lies in the run's versioned log
folder (``lightning_logs/<name>/version_N/``, like the outputs of ``NNCExport`` and ``RateDistortion``), so
every run writes its stream into a fresh folder, and the run report lists the files; an absolute ``path`` is
used as given. One stream per place: a new sequence refuses to start where files of the same names (an earlier
run's base or updates) already exist, since a receiver could not tell which updates belong to which base;
remove them or choose another ``path``. A run resumed from a checkpoint continues its own sequence there.

Checkpoints: the state (the quantizer's reference, the encoder's per-tensor state, the update count and the
files written) travels in the Lightning checkpoint, so a run resumed with ``ckpt_path=`` continues the
sequence with the same bytes as an uninterrupted run (under ``ecqx fit`` the resumed run writes the
following updates into its own run folder; ``files`` lists the whole sequence). Updates are made in
``on_train_epoch_end``, before Lightning's ``ModelCheckpoint`` saves at the end of a training epoch (its
default when validation runs every epoch); a checkpoint saved earlier in the epoch
(``check_val_every_n_epoch > 1`` saves in ``on_validation_end``) does not include that epoch's update, and a
run resumed from it writes that update again.

Only the global-zero rank quantizes, codes and writes (every rank holds the same weights under DDP).
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info

from ecqx import coding
from ecqx.callbacks._base import check_int, check_number, find_quantization_callback
from ecqx.coding.files import write_bytes_atomic
from ecqx.updates import UpdateQuantizer

STATE_VERSION = 1
DEFAULT_NAME = "update-{index:04d}.nnc"
BASE_NAME = "base.nnc"


class NNCUpdates(Callback):
    """Write a base ``.nnc`` at the start of training and an NNC difference update every n epochs.

    Args:
        path: a folder, or a file pattern with ``{index}`` (and optionally ``{epoch}``); see the module docs.
            Relative: under ``ecqx fit`` inside the run's log folder, else relative to the working folder.
            Training refuses to start a new sequence where an earlier run's stream files already are.
        every_n_epochs: one update after every n-th training epoch.
        bits, lam: grid size and entropy weight Λ of the updates of tensors with two or more dimensions.
        nonweight_bits, nonweight_lam: the same for the other float tensors (biases, norms).
        qp_density: NNC qp_density of the update steps.
        tca, hdsp, row_skipping: the update coding tools of :class:`ecqx.coding.UpdateEncoder`.
        device_id: the sender's id in every data unit.
        nonweight_bits_base: relative precision of the base's non-quantized float tensors
            (``encode_state_dict(nonweight_qp="auto", nonweight_bits=...)``).

    Example::

        trainer = pl.Trainer(callbacks=[NNCUpdates("run/", every_n_epochs=1, bits=4, lam=0.05)])
    """

    def __init__(
        self,
        path: str | Path,
        every_n_epochs: int = 1,
        bits: int = 4,
        lam: float = 0.05,
        nonweight_bits: int = 8,
        nonweight_lam: float = 0.0,
        qp_density: int = 2,
        tca: bool = True,
        hdsp: bool = False,
        row_skipping: bool = True,
        device_id: int = 0,
        nonweight_bits_base: int = 16,
    ) -> None:
        if not isinstance(path, (str, Path)) or not str(path):
            raise ValueError(f"`path` must be a folder or a file pattern with {{index}}, got {path!r}")
        check_int("every_n_epochs", every_n_epochs, 1)
        check_int("bits", bits, 2)
        check_int("nonweight_bits", nonweight_bits, 2)
        if bits > 8 or nonweight_bits > 8:
            raise ValueError(f"`bits` and `nonweight_bits` must be in 2..8, got {bits!r} and "
                             f"{nonweight_bits!r}")
        check_number("lam", lam, 0.0)
        check_number("nonweight_lam", nonweight_lam, 0.0)
        check_int("qp_density", qp_density, 0)
        if qp_density > 7:
            raise ValueError(f"`qp_density` must be an integer in 0..7, got {qp_density!r}")
        check_int("device_id", device_id, 0)
        check_int("nonweight_bits_base", nonweight_bits_base, 1)
        for name, flag in (("tca", tca), ("hdsp", hdsp), ("row_skipping", row_skipping)):
            if not isinstance(flag, bool):
                raise ValueError(f"`{name}` must be a bool, got {flag!r}")
        pattern = str(path)
        if "{" in pattern:
            try:
                pattern.format(index=0, epoch=0)
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(f"`path` pattern {pattern!r} may only use the fields {{index}} and "
                                 f"{{epoch}}: {error!r}") from error
            if pattern.format(index=0, epoch=0) == pattern.format(index=1, epoch=0):
                raise ValueError(f"`path` pattern {pattern!r} must contain {{index}}")
        self.path = pattern  # ecqx fit moves a relative one into the run folder (ecqx.training.report)
        self._given_path = pattern  # names the checkpoint state wherever the run folder puts the files
        self.every_n_epochs = every_n_epochs
        self.quantizer_options = dict(bits=bits, lam=float(lam), nonweight_bits=nonweight_bits,
                                      nonweight_lam=float(nonweight_lam), qp_density=qp_density)
        self.encoder_options = dict(qp_density=qp_density, tca=tca, hdsp=hdsp, row_skipping=row_skipping,
                                    device_id=device_id)
        self.nonweight_bits_base = nonweight_bits_base
        self._quantizer: UpdateQuantizer | None = None
        self._encoder: coding.UpdateEncoder | None = None
        self._restored: dict | None = None
        self.files: list[str] = []  # base first, then the updates in order
        self.results: list[dict[str, Any]] = []

    # -------------------------------------------------------------------------------------------- paths
    def file_for(self, index: int, epoch: int) -> Path:
        """Where the file of ``index`` goes (index 0: the base)."""
        if "{" in self.path:
            return Path(self.path.format(index=index, epoch=epoch))
        folder = Path(self.path)
        return folder / (BASE_NAME if index == 0 else DEFAULT_NAME.format(index=index))

    @property
    def state_key(self) -> str:
        return self._generate_state_key(path=self._given_path)

    def existing_files(self) -> list[str]:
        """Files at this callback's places (the base and any update index) that exist already, sorted."""
        if "{" in self.path:
            patterns = [_glob_pattern(self.path)]
        else:
            folder = glob.escape(self.path.rstrip("/") or "/")
            patterns = [os.path.join(folder, BASE_NAME), os.path.join(folder, _glob_pattern(DEFAULT_NAME))]
        return sorted({path for pattern in patterns for path in glob.glob(pattern) if os.path.isfile(path)})

    @property
    def base_path(self) -> str | None:
        return self.files[0] if self.files else None

    @property
    def update_paths(self) -> list[str]:
        return self.files[1:]

    # -------------------------------------------------------------------------------------------- hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.is_global_zero:
            probe = self.file_for(0, 0)
            if probe.is_dir():
                raise ValueError(f"NNCUpdates: the base file {str(probe)!r} is a directory")
            try:
                probe.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ValueError(f"NNCUpdates: cannot create the folder of {str(probe)!r}: "
                                 f"{error}") from error
            if not os.access(probe.parent, os.W_OK | os.X_OK):
                raise ValueError(f"NNCUpdates: the folder {str(probe.parent)!r} is not writable")
        coding.load_native()  # a missing compiler fails here, before training

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning restores checkpoint state between setup and fit start, so only here can a resumed
        # sequence (which must continue in its folder) be told from a new one (which must find it empty)
        if trainer.is_global_zero and self._restored is None and self._quantizer is None:
            self._check_no_other_stream()

    def _check_no_other_stream(self) -> None:
        existing = self.existing_files()
        if existing:
            shown = ", ".join(os.path.basename(path) for path in existing[:3])
            more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
            raise ValueError(f"NNCUpdates: `path` {self.path!r} already has the stream files of another run "
                             f"({shown}{more}); a new base and updates there would mix with them. Remove "
                             "them or choose another `path` (a relative path under ecqx fit goes into each "
                             "run's own log folder)")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        state = _cpu_state(pl_module)
        if self._restored is not None:
            self._restore(self._restored, state)
            self._restored = None
            return
        if self._quantizer is not None:
            return  # a second fit() on the same trainer continues the sequence
        quantizer = find_quantization_callback(trainer)
        quantized = quantizer.quantized_tensors() if quantizer is not None and quantizer.is_active else {}
        data = coding.encode_state_dict(state, quantized, nonweight_bits=self.nonweight_bits_base)
        path = self.file_for(0, trainer.current_epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)
        base = coding.decode_state_dict(data)
        self._quantizer = UpdateQuantizer(base, **self.quantizer_options)
        self._encoder = coding.UpdateEncoder(**self.encoder_options)
        self.files = [str(path)]
        self.results = [_result(0, trainer.current_epoch, path, data, state, None)]
        rank_zero_info(f"NNCUpdates: wrote the base {path} ({len(data)} bytes)")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        result = None
        if trainer.is_global_zero:
            result = self.write_update(pl_module, trainer.current_epoch)
        result = trainer.strategy.broadcast(result, src=0)
        pl_module.log("nnc_update_bytes", float(result["bytes"]), on_epoch=True, sync_dist=False)

    # -------------------------------------------------------------------------------------------- work
    def write_update(self, pl_module: torch.nn.Module, epoch: int) -> dict[str, Any]:
        """Quantizes, codes and writes the next update of ``pl_module``; returns its record."""
        if self._quantizer is None or self._encoder is None:
            raise RuntimeError("NNCUpdates: no base was written yet (training has not started)")
        state = _cpu_state(pl_module)
        update = self._quantizer.quantize(state)
        data = self._encoder.encode(update)
        index = len(self.files)
        path = self.file_for(index, epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)
        self.files.append(str(path))
        residual = self._quantizer.residual(state)
        result = _result(index, epoch, path, data, state, residual)
        self.results.append(result)
        rank_zero_info(f"NNCUpdates: wrote update {index} {path} ({len(data)} bytes, "
                       f"{100 * result['bytes'] / result['float32_bytes']:.2f}% of float32)")
        return result

    def reference_state(self) -> dict[str, torch.Tensor]:
        """What a receiver of the base and the updates written so far holds (float32 / int64 copies)."""
        if self._quantizer is None:
            raise RuntimeError("NNCUpdates: no base was written yet (training has not started)")
        return {name: t.clone() for name, t in self._quantizer.reference.items()}

    def residual(self, pl_module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The model minus :meth:`reference_state`: what the next update starts from."""
        if self._quantizer is None:
            raise RuntimeError("NNCUpdates: no base was written yet (training has not started)")
        return self._quantizer.residual(_cpu_state(pl_module))

    # -------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        if self._quantizer is None or self._encoder is None:
            return {}
        return {
            "version": STATE_VERSION,
            "path": self.path,
            "quantizer": self._quantizer.state_dict(),
            "encoder": self._encoder.state_dict(),
            "files": list(self.files),
            "results": [dict(r) for r in self.results],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if state_dict.get("version") != STATE_VERSION:
            raise ValueError(f"NNCUpdates checkpoint state version {state_dict.get('version')!r} is not "
                             f"{STATE_VERSION}")
        self._restored = dict(state_dict)

    def _restore(self, state: dict[str, Any], model_state: dict[str, torch.Tensor]) -> None:
        quantizer = UpdateQuantizer({n: t for n, t in state["quantizer"]["reference"].items()},
                                    **self.quantizer_options)
        quantizer.load_state_dict(state["quantizer"])
        missing = sorted(set(model_state) ^ set(quantizer.reference))
        if missing:
            raise ValueError(f"NNCUpdates: the checkpoint's update state has other tensors than the model "
                             f"({missing[:5]}). HINT: resume with the model the sequence was started with")
        encoder = coding.UpdateEncoder(**self.encoder_options)
        encoder.load_state_dict(state["encoder"])
        self._quantizer, self._encoder = quantizer, encoder
        self.files = list(state["files"])
        self.results = [dict(r) for r in state["results"]]


def _glob_pattern(pattern: str) -> str:
    """``pattern`` with each ``{field}`` as ``*`` and everything else matched literally."""
    parts = re.split(r"(\{[^{}]*\})", pattern)
    return "".join("*" if part.startswith("{") and part.endswith("}") else glob.escape(part)
                   for part in parts)


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu") for name, t in module.state_dict().items()}


def _result(index: int, epoch: int, path: Path, data: bytes, state: dict[str, torch.Tensor],
            residual: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    out = {"index": index, "epoch": epoch, "path": str(path), "bytes": len(data),
           "float32_bytes": coding.float32_bytes(state)}
    if residual is not None:
        floats = [r for r in residual.values() if r.is_floating_point() and r.numel()]
        out["residual_max"] = max((float(r.abs().max()) for r in floats), default=0.0)
    return out
