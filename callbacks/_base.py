"""Shared base of ``ECQ``, ``ECQx`` and ``EC2T``: shadow weights, phases, checkpoint state, logging.

How the user's optimizer and the shadow weights interact
--------------------------------------------------------
Nothing in the user's ``LightningModule`` changes: it keeps its parameters and its ``configure_optimizers``
(a single optimizer, a list, or a dict with an ``lr_scheduler`` — Lightning's automatic optimization supports
one
optimizer). The callback keeps, per quantized tensor, a **full-precision shadow copy** (always its own
storage)
and swaps values in and out of the very same ``nn.Parameter`` objects the optimizer owns:

* forward/backward: the parameters hold the **quantized** values (what the model will ship);
* ``on_before_optimizer_step`` (called by Lightning only when the optimizer is about to step, i.e. once per
  ``accumulate_grad_batches`` batches, after AMP un-scaling, before gradient clipping): each gradient is
  mapped
  in place by the straight-through rule of the method (spec ecqx-ec2t.md §2.4 step 2 / §4.5) and the parameter
  is loaded with its shadow values, so **the user's optimizer steps the shadow weights** — momentum, Adam
  moments, weight decay and LR schedules all act on the full-precision trajectory, and because they always see
  the same tensors their state stays consistent across steps, checkpoints and resumes;
* ``on_train_batch_end`` after a step: the stepped values are copied into the shadow buffer, the tensor is
  re-assigned (entropy-constrained, from the shadow, spec §2.4 step 5) and the quantized values are written
  back
  into the parameter. Validation, checkpoints and the export therefore always see quantized weights
  (Lightning moves ``ModelCheckpoint`` behind all other callbacks, so even a checkpoint written at a batch end
  holds quantized values).

Before ``start_epoch`` the callback does nothing (full-precision warm-up). At the start of ``start_epoch`` it
builds the grids from the current weights, clones the shadows and writes the first assignment.

Per-tensor state is one :class:`ecqx.state.TensorState` per quantized tensor (grid, λ, running relevance, EC2T
magnitudes and phase, last assignment): the callbacks only decide *when* to call it and keep the shadows.

Checkpoints: :meth:`QuantizationCallback.state_dict` holds the phase, the step counter, and per tensor the
grid, shadow, levels and method state (running relevance, EC2T magnitudes and their optimizer). A run resumed
with ``ckpt_path=`` continues from exactly that state. DDP: gradients reach ``on_before_optimizer_step``
already all-reduced, so every rank steps identical shadows and the deterministic assignment gives identical
quantized weights; ECQx relevances are averaged over ranks before use.

Unsupported combinations fail in ``setup``/``on_fit_start`` with a message: manual optimization, sharded
strategies (FSDP, DeepSpeed), closures evaluated several times per step (LBFGS), true half precision
(``16-true``/``bf16-true``: a float32 grid value is not representable), quantized parameters that no optimizer
steps, and two quantization callbacks on one trainer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy
from pytorch_lightning.utilities import rank_zero_info

from ecqx.quantized import QuantizedTensor
from ecqx.state import TensorState
from ecqx.targets import DEFAULT_EXCLUDE, select_targets

log = logging.getLogger(__name__)

MODES = ("clean", "faithful")
SUPPORTED_PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed")
PHASE_WARMUP, PHASE_QUANTIZE, PHASE_FROZEN = "warmup", "quantize", "frozen"


def find_quantization_callback(trainer: pl.Trainer) -> QuantizationCallback | None:
    """The trainer's quantization callback (there is at most one), or ``None``."""
    found = [cb for cb in trainer.callbacks if isinstance(cb, QuantizationCallback)]
    return found[0] if found else None


@dataclass
class TensorStats:
    """Statistics of one tensor's latest assignment, for logging."""

    numel: int
    zeros: int
    entropy_bits: float
    lam: float
    relevance_flips: int = 0


def level_entropy_bits(levels: torch.Tensor) -> float:
    """Empirical entropy (bits per value) of an integer tensor's value histogram."""
    _, counts = torch.unique(levels, return_counts=True)
    pmf = counts.double() / levels.numel()
    return float(-(pmf * torch.log2(pmf)).sum())


def tensor_stats(state: TensorState, levels: torch.Tensor) -> TensorStats:
    """Logging statistics of ``state``'s last assignment (``levels`` = ``state.levels()``)."""
    return TensorStats(
        numel=levels.numel(),
        zeros=int((levels == 0).sum()),
        entropy_bits=level_entropy_bits(levels),
        lam=state.lam_layer,
        relevance_flips=state.relevance_flips,
    )


def check_choice(argument: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"`{argument}` must be one of {allowed}, got {value!r}")


def check_int(argument: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{argument}` must be an integer >= {minimum}, got {value!r}")


def check_number(argument: str, value: Any, low: float, high: float | None = None) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        interval = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"`{argument}` must be a number in {interval}, got {value!r}")


class QuantizationCallback(Callback):
    """Base class: the Lightning mechanics shared by ECQ, ECQx and EC2T (see the module docstring).

    Subclasses implement :meth:`_build_tensor_state` (a :class:`~ecqx.state.TensorState`) and the checkpoint
    mapping; the per-step maths is the state's (:mod:`ecqx`).

    Args:
        lam: the global entropy gain Λ (γ for EC2T); 0 gives nearest-level rounding.
        start_epoch: first quantized epoch; the epochs before it are plain full-precision warm-up.
        mode: ``"clean"`` (renormalised pmf, thesis λ_max, |level| gradient scale) or ``"faithful"`` (the
            reference code's pmf update, λ_max and signed gradient scale; spec §7). Grids are always snapped
            to
            NNC step sizes so the exported file reproduces the trained weights.
        include: regular expressions; if given, only matching tensor names are quantized.
        exclude: regular expressions of tensor names never quantized.
        exclude_first: keep the first conv/linear layer in full precision.
        exclude_last: keep the last conv/linear layer in full precision.
        log_per_layer: also log sparsity, entropy and λ of every quantized tensor (not only totals).
    """

    method = "base"

    def __init__(
        self,
        lam: float,
        start_epoch: int = 0,
        mode: str = "clean",
        include: str | list[str] | None = None,
        exclude: str | list[str] | None = DEFAULT_EXCLUDE,
        exclude_first: bool = False,
        exclude_last: bool = False,
        log_per_layer: bool = True,
    ) -> None:
        check_number("lam", lam, 0.0)
        check_int("start_epoch", start_epoch, 0)
        check_choice("mode", mode, MODES)
        self.lam = float(lam)
        self.start_epoch = start_epoch
        self.mode = mode
        self.include = include
        self.exclude = exclude
        self.exclude_first = bool(exclude_first)
        self.exclude_last = bool(exclude_last)
        self.log_per_layer = bool(log_per_layer)
        self.phase = PHASE_WARMUP
        self.optimizer_steps = 0
        self.targets: list[str] = []
        self.shadows: dict[str, torch.Tensor] = {}
        self.tensor_states: dict[str, TensorState] = {}
        self.stats: dict[str, TensorStats] = {}
        self.fp_metrics: dict[str, float] = {}
        self._swapped: set[str] = set()
        self._stepped = False
        self._pending_state: dict[str, Any] | None = None
        self._started_epoch: int | None = None  # the epoch whose start logic ran last

    # ------------------------------------------------------------------ public API
    @property
    def is_active(self) -> bool:
        """True once quantization has started (the model's targets hold quantized values)."""
        return self.phase != PHASE_WARMUP

    @property
    def levels(self) -> dict[str, torch.Tensor]:
        """Integer levels (int32) of every quantized tensor's current assignment, by name."""
        return {name: state.levels() for name, state in self.tensor_states.items()}

    def quantized_tensors(self) -> dict[str, QuantizedTensor]:
        """Contract descriptions (levels, qp, qp_density, codebook) of every quantized tensor, by name."""
        if not self.is_active:
            return {}
        return {name: self.tensor_states[name].export() for name in self.targets}

    def summary(self) -> dict[str, float]:
        """Totals of the latest assignment: sparsity, bits per weight, estimated coded bytes, flips."""
        numel = sum(s.numel for s in self.stats.values())
        if not numel:
            return {}
        bits = sum(s.entropy_bits * s.numel for s in self.stats.values())
        return {
            "sparsity": sum(s.zeros for s in self.stats.values()) / numel,
            "bits_per_weight": bits / numel,
            "estimated_bytes": bits / 8.0,
            "relevance_flips": float(sum(s.relevance_flips for s in self.stats.values())),
        }

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._check_single_quantizer(trainer)
        self._check_strategy_and_optimization(trainer, pl_module)
        self.targets = self._select_targets(pl_module)
        self._check_target_dtypes(pl_module)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_optimizers(trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending_state is not None:
            self._apply_state(self._pending_state, pl_module)
            self._pending_state = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._begin_epoch(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Lightning 2.6 does not call `on_train_epoch_start` for the epoch that follows a checkpoint written
        # at the last batch of an epoch (it resumes "mid-epoch" and rolls over); catch that epoch here.
        if self._started_epoch is not None and self._started_epoch != trainer.current_epoch:
            self._begin_epoch(trainer, pl_module)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.is_active:
            self._hand_gradients_to_shadows(pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._stepped:
            self.optimizer_steps += 1
            self._collect_stepped_shadows(pl_module)
            self._after_shadow_step(trainer, pl_module, batch)
            self._requantize(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.is_active:
            pl_module.log_dict(self._epoch_metrics(), on_step=False, on_epoch=True)

    def state_dict(self) -> dict[str, Any]:
        tensors = {
            name: {
                "shadow": self.shadows[name].detach().clone(),
                "levels": self.tensor_states[name].levels(),
                **self._tensor_state_dict(name),
            }
            for name in self.shadows
        }
        return {
            "method": self.method,
            "phase": self.phase,
            "optimizer_steps": self.optimizer_steps,
            "started_epoch": self._started_epoch,
            "fp_metrics": dict(self.fp_metrics),
            "targets": list(self.targets),
            "tensors": tensors,
            "extra": self._extra_state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("method") != self.method:
            raise ValueError(
                f"checkpoint holds {state_dict.get('method')!r} quantization state, but this callback is "
                f"{type(self).__name__} ({self.method!r}). HINT: resume with the same quantization callback."
            )
        # Applied in on_train_start, once the model is on its device and the optimizer exists.
        self._pending_state = state_dict

    # ------------------------------------------------------------------ checks
    def _check_single_quantizer(self, trainer: pl.Trainer) -> None:
        others = [cb for cb in trainer.callbacks if isinstance(cb, QuantizationCallback) and cb is not self]
        if others:
            names = ", ".join(type(cb).__name__ for cb in [self, *others])
            raise ValueError(f"only one quantization callback per Trainer is supported, got {names}")

    def _check_strategy_and_optimization(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not pl_module.automatic_optimization:
            raise ValueError(
                f"{type(self).__name__} needs Lightning's automatic optimization (it hands the gradients to "
                "the shadow weights in `on_before_optimizer_step`), but the module sets "
                "`automatic_optimization = False`. HINT: use automatic optimization."
            )
        if not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)):
            raise ValueError(
                f"{type(self).__name__} supports the single-device and DDP strategies, got "
                f"{type(trainer.strategy).__name__}. Sharded strategies (FSDP, DeepSpeed) split the"
                " parameters "
                "the callback must see whole."
            )
        precision = str(trainer.precision)
        if precision not in SUPPORTED_PRECISIONS:
            raise ValueError(
                f"{type(self).__name__} needs float32 parameters, got precision={precision!r}. "
                f"Allowed: {SUPPORTED_PRECISIONS} (true half precision cannot hold the float32 grid values)."
            )

    def _select_targets(self, pl_module: pl.LightningModule) -> list[str]:
        targets = select_targets(
            pl_module,
            include=self.include,
            exclude=self.exclude,
            exclude_first=self.exclude_first,
            exclude_last=self.exclude_last,
        )
        if not targets:
            raise ValueError(
                f"{type(self).__name__} found no layer to quantize in {type(pl_module).__name__} "
                f"(include={self.include!r}, exclude={self.exclude!r}, exclude_first={self.exclude_first}, "
                f"exclude_last={self.exclude_last})."
                " Quantized are the weights of Conv1d/2d/3d and Linear layers."
            )
        return targets

    def _check_target_dtypes(self, pl_module: pl.LightningModule) -> None:
        params = dict(pl_module.named_parameters())
        for name in self.targets:
            if name not in params:
                raise ValueError(
                    f"quantization target '{name}' is not a parameter of {type(pl_module).__name__}"
                )
            if params[name].dtype != torch.float32:
                raise ValueError(
                    f"quantization target '{name}' has dtype {params[name].dtype}; needs float32"
                )

    def _check_optimizers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stepped = {id(p) for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]}
        params = dict(pl_module.named_parameters())
        missing = [name for name in self.targets if id(params[name]) not in stepped]
        if missing:
            raise ValueError(
                f"{type(self).__name__}: the optimizer does not step the quantized tensors {missing}; their "
                "shadow weights would never move. HINT: return all parameters from `configure_optimizers`."
            )
        for opt in trainer.optimizers:
            if isinstance(opt, torch.optim.LBFGS):
                raise ValueError(
                    f"{type(self).__name__} does not support LBFGS (the closure runs several "
                    "times per step, the shadow swap happens once). Use a first-order optimizer."
                )

    # ------------------------------------------------------------------ mechanics
    def _parameters(self, pl_module: pl.LightningModule) -> dict[str, torch.nn.Parameter]:
        params = dict(pl_module.named_parameters())
        return {name: params[name] for name in self.targets}

    def _start_quantization(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = self._parameters(pl_module)
        max_numel = max(p.numel() for p in params.values())
        for name, param in params.items():
            weights = param.detach()
            self.shadows[name] = weights.clone()
            self.tensor_states[name] = self._build_tensor_state(name, weights, max_numel)
        # the full-precision model's validation metrics of the last warm-up epoch, for the final comparison
        self.fp_metrics = {
            f"fp_{k}": float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("val_") and v.numel() == 1
        }
        self.phase = PHASE_QUANTIZE
        self._requantize(trainer, pl_module)
        rank_zero_info(
            f"{type(self).__name__}: quantizing {len(params)} tensors from epoch {trainer.current_epoch} "
            f"(sparsity {self.summary()['sparsity']:.3f}, "
            f"{self.summary()['bits_per_weight']:.3f} bits/weight)"
        )

    @torch.no_grad()
    def _hand_gradients_to_shadows(self, pl_module: pl.LightningModule) -> None:
        for name, param in self._parameters(pl_module).items():
            if param.grad is None:
                continue
            shadow_grad = self.tensor_states[name].shadow_gradient(param.grad, param.detach())
            if shadow_grad is None:  # this tensor's shadow is not stepped (EC2T frozen assignment)
                param.grad = None
                continue
            param.grad.copy_(shadow_grad)
            param.copy_(self.shadows[name])
            self._swapped.add(name)
        self._stepped = True

    @torch.no_grad()
    def _collect_stepped_shadows(self, pl_module: pl.LightningModule) -> None:
        for name, param in self._parameters(pl_module).items():
            if name in self._swapped:
                self.shadows[name].copy_(param)
                param.copy_(self._quantized_values(name))
        self._swapped.clear()

    @torch.no_grad()
    def _requantize(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = self._parameters(pl_module)
        for name, param in params.items():
            state = self.tensor_states[name]
            param.copy_(state.requantize(self.shadows[name]))
            self.stats[name] = tensor_stats(state, state.levels())
        self._stepped = False

    def _quantized_values(self, name: str) -> torch.Tensor:
        return self.tensor_states[name].export().dequantize().to(self.shadows[name].device)

    def _epoch_metrics(self) -> dict[str, float]:
        metrics = {f"quant/{key}": value for key, value in self.summary().items()}
        metrics["quant/lambda"] = self.lam
        metrics.update(self.fp_metrics)
        if self.log_per_layer:
            for name, s in self.stats.items():
                metrics[f"quant/{name}/sparsity"] = s.zeros / s.numel
                metrics[f"quant/{name}/bits_per_weight"] = s.entropy_bits
                metrics[f"quant/{name}/lambda"] = s.lam
        return metrics

    def _apply_state(self, state: dict[str, Any], pl_module: pl.LightningModule) -> None:
        if state["targets"] != self.targets:
            raise ValueError(
                f"checkpoint quantized {state['targets']} but this model/callback selects {self.targets}. "
                "HINT: resume with the same model and the same include/exclude arguments."
            )
        self.phase = state["phase"]
        self.optimizer_steps = state["optimizer_steps"]
        # None in checkpoints of earlier versions: then only `on_train_epoch_start` starts epochs, as before
        self._started_epoch = state.get("started_epoch")
        self.fp_metrics = dict(state.get("fp_metrics", {}))
        params = self._parameters(pl_module)
        for name, entry in state["tensors"].items():
            device = params[name].device
            self.shadows[name] = entry["shadow"].to(device).clone()
            self.tensor_states[name] = self._load_tensor_state(name, entry, device)
        self._load_extra_state(state["extra"], pl_module)
        self._swapped.clear()
        self._stepped = False

    # ------------------------------------------------------------------ subclass interface
    def _build_tensor_state(self, name: str, weights: torch.Tensor, max_numel: int) -> TensorState:
        raise NotImplementedError

    def _begin_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started_epoch = trainer.current_epoch
        self._on_epoch_begin(trainer, pl_module)

    def _on_epoch_begin(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Once at the start of every training epoch (subclasses add per-epoch state changes)."""
        if self.phase == PHASE_WARMUP and trainer.current_epoch >= self.start_epoch:
            self._start_quantization(trainer, pl_module)

    def _after_shadow_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        """Runs after the shadows took the optimizer step, before re-assignment (ECQx relevances, EC2T)."""

    def _tensor_state_dict(self, name: str) -> dict[str, Any]:
        """The method's per-tensor checkpoint entries (besides ``shadow`` and ``levels``)."""
        raise NotImplementedError

    def _load_tensor_state(self, name: str, entry: dict[str, Any], device: torch.device) -> TensorState:
        """Rebuild a tensor's state from its checkpoint entry (``shadow``, ``levels`` and the method's)."""
        raise NotImplementedError

    def _extra_state_dict(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: dict[str, Any], pl_module: pl.LightningModule) -> None:
        pass
