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

All quantized tensors form one group state (:class:`ecqx.group_state.UniformGroup` for ECQ/ECQx,
:class:`ecqx.group_state.TernaryGroup` for EC2T): flat shadow, quantized-value and gradient buffers, grids and
statistics on the device. A steady-state step is a fixed number of tensor operations whatever the number of
tensors (grouped ``torch._foreach_copy_`` for every swap between parameters and buffers) and never waits for
the device; statistics come to the host only at epoch ends (logging) and when asked (:meth:`summary`, export).

Checkpoints: :meth:`QuantizationCallback.state_dict` holds the phase, the step counter and the group state's
own ``state_dict()`` (per tensor: grid, shadow, levels and the method's fields — running relevance, EC2T
magnitudes; plus the EC2T magnitude optimizer). Checkpoints written before the grouped state (per-tensor
entries under ``"tensors"``) load through the same path. A run resumed with ``ckpt_path=`` continues from
exactly that state. A checkpoint whose quantization state does not fit is an error at resume, never a silent
restart: state of another method (Lightning would hand it to nobody, :meth:`on_load_checkpoint` catches it),
another bit width (ECQ/ECQx) or other quantized tensors. DDP: gradients reach ``on_before_optimizer_step``
already all-reduced, so every rank steps identical shadows and the deterministic assignment gives identical
quantized weights; ECQx relevances are averaged over ranks before use.

Unsupported combinations fail in ``setup``/``on_fit_start`` with a message: manual optimization, sharded
strategies (FSDP, DeepSpeed), closures evaluated several times per step (LBFGS), true half precision
(``16-true``/``bf16-true``: a float32 grid value is not representable), quantized parameters that no optimizer
steps, two quantization callbacks on one trainer, and quantized embeddings with ``sparse=True`` or
``max_norm``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from ecqx.group_state import QuantizerGroup, TensorStatistics
from ecqx.quantized import QuantizedTensor
from ecqx.targets import (
    DEFAULT_EXCLUDE,
    DEFAULT_MODULE_TYPES,
    check_module_types,
    modules_using,
    parameter_aliases,
    select_targets,
)

log = logging.getLogger(__name__)

MODES = ("clean", "faithful")
SUPPORTED_PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed")
PHASE_WARMUP, PHASE_QUANTIZE, PHASE_FROZEN = "warmup", "quantize", "frozen"
FRESH_RUN_HINT = "HINT: start a fresh run (no ckpt_path) or pass the matching callback"


def find_quantization_callback(trainer: pl.Trainer) -> QuantizationCallback | None:
    """The trainer's quantization callback (there is at most one), or ``None``."""
    found = [cb for cb in trainer.callbacks if isinstance(cb, QuantizationCallback)]
    return found[0] if found else None


def _is_quantization_state(state: Any) -> bool:
    """Whether a checkpoint's callback state was written by a :class:`QuantizationCallback`."""
    return isinstance(state, dict) and {"method", "phase", "targets"} <= set(state)


def check_choice(argument: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"`{argument}` must be one of {allowed}, got {value!r}")


def check_int(argument: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{argument}` must be an integer >= {minimum}, got {value!r}")


def check_number(argument: str, value: Any, low: float, high: float | None = None) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and value >= low and (high is None or value <= high)
    if not ok:
        interval = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"`{argument}` must be a number in {interval}, got {value!r} (finite numbers only)")


class QuantizationCallback(Callback):
    """Base class: the Lightning mechanics shared by ECQ, ECQx and EC2T (see the module docstring).

    Subclasses implement :meth:`_new_group` (the method's :class:`~ecqx.group_state.QuantizerGroup`); the
    per-step maths is the group state's (:mod:`ecqx`).

    Args:
        lam: the global entropy gain Λ (γ for EC2T); 0 gives nearest-level rounding.
        start_epoch: first quantized epoch; the epochs before it are plain full-precision warm-up.
        mode: ``"clean"`` (renormalised pmf, thesis λ_max, |level| gradient scale) or ``"faithful"`` (the
            reference code's pmf update, λ_max and signed gradient scale; spec §7). Grids are always snapped
            to
            NNC step sizes so the exported file reproduces the trained weights.
        include: regular expressions; if given, only matching tensor names are quantized.
        exclude: regular expressions of tensor names never quantized.
        exclude_first: keep the first quantizable layer (in ``named_modules()`` order) in full precision.
        exclude_last: keep the last quantizable layer in full precision.
        log_per_layer: also log sparsity, entropy and λ of every quantized tensor (not only totals).
        module_types: the module classes whose ``weight`` is quantized (subclasses included); default
            :data:`ecqx.targets.DEFAULT_MODULE_TYPES` — Conv1d/2d/3d, Linear, Embedding, EmbeddingBag.
            ``module_types=(nn.Conv2d, nn.Linear)`` keeps embeddings in full precision.

    Embeddings: quantized like any weight matrix (rows = tokens). ``sparse=True`` embeddings are refused (the
    straight-through mapping and the shadow swap work on dense gradients; sparse optimizers such as
    ``SparseAdam`` cannot step a dense gradient), and so is ``max_norm`` (the forward pass renormalises the
    weight in place, which would move it off the grid). Tied weights: a parameter shared by several modules is
    quantized once (see :mod:`ecqx.targets`), and :meth:`quantized_tensors` describes it under each of its
    ``state_dict`` names, so an export codes and decodes every copy identically.
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
        module_types: tuple[type[nn.Module], ...] = DEFAULT_MODULE_TYPES,
    ) -> None:
        check_number("lam", lam, 0.0)
        try:
            module_types = check_module_types(module_types, "`module_types`")
        except TypeError as err:
            raise ValueError(str(err)) from None
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
        self.module_types = module_types
        self.phase = PHASE_WARMUP
        self.optimizer_steps = 0
        self.targets: list[str] = []
        self._aliases: dict[str, list[str]] = {}  # other state_dict names of shared (tied) targets
        self.group: QuantizerGroup | None = None
        self.fp_metrics: dict[str, float] = {}
        self._swapped: list[int] = []
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
        return {} if self.group is None else self.group.levels()

    @property
    def shadows(self) -> dict[str, torch.Tensor]:
        """The full-precision shadow weights, by name (views of the group's flat shadow buffer)."""
        if self.group is None:
            return {}
        return dict(zip(self.group.names, self.group.shadow_views, strict=True))

    @property
    def stats(self) -> dict[str, TensorStatistics]:
        """Per-tensor statistics of the latest assignment (brings them to the host)."""
        return {} if self.group is None else self.group.statistics()

    def quantized_tensors(self) -> dict[str, QuantizedTensor]:
        """Contract descriptions (levels, qp, qp_density, codebook) of every quantized tensor, by name.

        A shared (tied) tensor appears under every ``state_dict`` name that holds it (the same object).
        """
        if not self.is_active or self.group is None:
            return {}
        out = {}
        for name, described in self.group.export().items():
            out[name] = described
            out.update({alias: described for alias in self._aliases.get(name, ())})
        return out

    def summary(self) -> dict[str, float]:
        """Totals of the latest assignment: sparsity, bits per weight, estimated coded bytes, flips."""
        return self._summary(self.stats)

    @staticmethod
    def _summary(stats: dict[str, TensorStatistics]) -> dict[str, float]:
        numel = sum(s.numel for s in stats.values())
        if not numel:
            return {}
        bits = sum(s.entropy_bits * s.numel for s in stats.values())
        return {
            "sparsity": sum(s.zeros for s in stats.values()) / numel,
            "bits_per_weight": bits / numel,
            "estimated_bytes": bits / 8.0,
            "relevance_flips": float(sum(s.relevance_flips for s in stats.values())),
        }

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._check_single_quantizer(trainer)
        self._check_strategy_and_optimization(trainer, pl_module)
        self.targets = self._select_targets(pl_module)
        self._check_targets(pl_module)
        self._aliases = parameter_aliases(pl_module, self.targets)

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
        return {
            "method": self.method,
            "phase": self.phase,
            "optimizer_steps": self.optimizer_steps,
            "started_epoch": self._started_epoch,
            "fp_metrics": dict(self.fp_metrics),
            "targets": list(self.targets),
            "group": None if self.group is None else self.group.state_dict(),
            "extra": self._extra_state_dict(),
        }

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning hands each callback only the state stored under its own key (the class name), so the
        # state of another method's callback would be silently ignored and quantization restart from scratch.
        states = checkpoint.get("callbacks") or {}
        if trainer.state.fn != TrainerFn.FITTING:
            return  # only fit resumes the quantization state
        if states.get(self.state_key) is not None or states.get(self._legacy_state_key) is not None:
            return
        for key, state in states.items():
            if _is_quantization_state(state):
                raise ValueError(
                    f"the checkpoint holds {state['method']!r} quantization state (written by the {key} "
                    f"callback), but this run quantizes with {type(self).__name__} ({self.method!r}); "
                    f"resuming would drop the {state['method']!r} state and quantize from scratch. "
                    f"{FRESH_RUN_HINT} ({key})."
                )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("method") != self.method:
            raise ValueError(
                f"checkpoint holds {state_dict.get('method')!r} quantization state, but this callback is "
                f"{type(self).__name__} ({self.method!r}). {FRESH_RUN_HINT}."
            )
        self._check_checkpoint_settings(state_dict)
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
            types=self.module_types,
            exclude_first=self.exclude_first,
            exclude_last=self.exclude_last,
        )
        if not targets:
            types = ", ".join(t.__name__ for t in self.module_types)
            raise ValueError(
                f"{type(self).__name__} found no layer to quantize in {type(pl_module).__name__} "
                f"(include={self.include!r}, exclude={self.exclude!r}, exclude_first={self.exclude_first}, "
                f"exclude_last={self.exclude_last})."
                f" Quantized are the weights of the module_types ({types})."
            )
        return targets

    def _check_targets(self, pl_module: pl.LightningModule) -> None:
        params = dict(pl_module.named_parameters(remove_duplicate=False))
        for name in self.targets:
            if name not in params:
                raise ValueError(
                    f"quantization target '{name}' is not a parameter of {type(pl_module).__name__}"
                )
            if params[name].dtype != torch.float32:
                raise ValueError(
                    f"quantization target '{name}' has dtype {params[name].dtype}; needs float32"
                )
            for module_name, module in modules_using(pl_module, name):
                if not isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
                    continue
                if module.sparse:
                    raise ValueError(
                        f"{type(self).__name__}: '{module_name}' ({type(module).__name__}) has sparse=True; "
                        "its sparse gradients cannot be mapped to the shadow weights (the straight-through "
                        "rule and the shadow swap need dense ones). HINT: use sparse=False with a dense "
                        "optimizer, or keep it in full precision (module_types without it, or exclude="
                        f"{module_name + '.weight'!r})."
                    )
                if module.max_norm is not None:
                    raise ValueError(
                        f"{type(self).__name__}: '{module_name}' ({type(module).__name__}) has max_norm="
                        f"{module.max_norm}; its forward pass renormalises the weight in place, which would "
                        "move the quantized weights off the grid. HINT: drop max_norm, or keep it in full "
                        f"precision (exclude={module_name + '.weight'!r})."
                    )

    def _check_optimizers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stepped = {id(p) for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]}
        params = dict(pl_module.named_parameters(remove_duplicate=False))
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
        params = dict(pl_module.named_parameters(remove_duplicate=False))
        return {name: params[name] for name in self.targets}

    def _parameter_list(self, pl_module: pl.LightningModule) -> list[torch.nn.Parameter]:
        return list(self._parameters(pl_module).values())

    def _start_quantization(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = self._parameter_list(pl_module)
        self.group = self._new_group([p.shape for p in params], params[0].device)
        try:
            self.group.initialise([p.detach() for p in params])
        except ValueError as error:
            raise ValueError(self._initialise_error(trainer, params, error)) from error
        # the full-precision model's validation metrics of the last warm-up epoch, for the final comparison
        self.fp_metrics = {
            f"fp_{k}": float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("val_") and v.numel() == 1
        }
        self.phase = PHASE_QUANTIZE
        self._write_quantized(pl_module)
        summary = self.summary()
        rank_zero_info(
            f"{type(self).__name__}: quantizing {len(params)} tensors from epoch {trainer.current_epoch} "
            f"(sparsity {summary['sparsity']:.3f}, {summary['bits_per_weight']:.3f} bits/weight)"
        )

    def _initialise_error(self, trainer: pl.Trainer, params: list[torch.nn.Parameter],
                          error: Exception) -> str:
        """The grid error of ``initialise`` and the tensors that cause it (looked up only after it failed)."""
        ranges = [(name, float(p.detach().min()), float(p.detach().max()))
                  for name, p in zip(self.targets, params, strict=True)]
        zero = [name for name, lo, hi in ranges if lo == hi == 0.0]
        one_sign = [name for name, lo, hi in ranges if (lo >= 0.0 or hi <= 0.0) and name not in zero]
        culprits = [f"all zero: {', '.join(zero)}"] if zero else []
        if one_sign and "sign" in str(error):
            culprits.append(f"values of one sign only: {', '.join(one_sign)}")
        found = f" ({'; '.join(culprits)})" if culprits else ""
        return (f"{type(self).__name__} cannot start quantizing at epoch {trainer.current_epoch}: "
                f"{error}{found}. HINT: exclude these tensors (exclude=[...]), or start later (start_epoch) "
                "so that training moves them first.")

    @torch.no_grad()
    def _hand_gradients_to_shadows(self, pl_module: pl.LightningModule) -> None:
        group = self.group
        params = self._parameter_list(pl_module)
        present = [i for i, p in enumerate(params) if p.grad is not None]
        self._stepped = True
        if not present:
            return
        if len(present) < len(params):
            group.grad.zero_()  # tensors without a gradient contribute nothing (EC2T magnitude sums)
        torch._foreach_copy_([group.grad_views[i] for i in present], [params[i].grad for i in present])
        if not group.shadow_gradient():  # the shadows are not stepped (EC2T frozen assignment)
            for i in present:
                params[i].grad = None
            return
        torch._foreach_copy_([params[i].grad for i in present], [group.grad_views[i] for i in present])
        torch._foreach_copy_([params[i] for i in present], [group.shadow_views[i] for i in present])
        self._swapped = present

    @torch.no_grad()
    def _collect_stepped_shadows(self, pl_module: pl.LightningModule) -> None:
        if self._swapped:
            params = self._parameter_list(pl_module)
            stepped = [params[i] for i in self._swapped]
            torch._foreach_copy_([self.group.shadow_views[i] for i in self._swapped], stepped)
        self._swapped = []  # the parameters hold stepped shadows until _requantize writes the new values

    @torch.no_grad()
    def _requantize(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.group.requantize()
        self._write_quantized(pl_module)
        self._stepped = False

    @torch.no_grad()
    def _write_quantized(self, pl_module: pl.LightningModule) -> None:
        torch._foreach_copy_(self._parameter_list(pl_module), self.group.quantized_views)

    def _epoch_metrics(self) -> dict[str, float]:
        stats = self.stats
        metrics = {f"quant/{key}": value for key, value in self._summary(stats).items()}
        metrics["quant/lambda"] = self.lam
        metrics.update(self.fp_metrics)
        if self.log_per_layer:
            for name, s in stats.items():
                metrics[f"quant/{name}/sparsity"] = s.zeros / s.numel
                metrics[f"quant/{name}/bits_per_weight"] = s.entropy_bits
                metrics[f"quant/{name}/lambda"] = s.lam
        return metrics

    def _apply_state(self, state: dict[str, Any], pl_module: pl.LightningModule) -> None:
        if state["targets"] != self.targets:
            only_saved = [n for n in state["targets"] if n not in self.targets]
            only_here = [n for n in self.targets if n not in state["targets"]]
            raise ValueError(
                f"the checkpoint's {type(self).__name__} state quantized {state['targets']}, but this model "
                f"and callback select {self.targets} (only in the checkpoint: {only_saved}; only here: "
                f"{only_here}; an empty pair means another order). HINT: resume with the same model and "
                "the same include/exclude/exclude_first/exclude_last/module_types arguments, or start a "
                "fresh run (no ckpt_path)."
            )
        self.phase = state["phase"]
        self.optimizer_steps = state["optimizer_steps"]
        # None in checkpoints of earlier versions: then only `on_train_epoch_start` starts epochs, as before
        self._started_epoch = state.get("started_epoch")
        self.fp_metrics = dict(state.get("fp_metrics", {}))
        self.group = None
        group_state = state.get("group")
        if group_state is None and state.get("tensors"):
            group_state = {"tensors": state["tensors"]}  # checkpoints of the per-tensor implementation
        if group_state is not None:
            params = self._parameter_list(pl_module)
            self.group = self._new_group([p.shape for p in params], params[0].device)
            self.group.load_state_dict(group_state)
            self._after_group_loaded()
        self._load_extra_state(state["extra"], pl_module)
        self._swapped = []
        self._stepped = False

    # ------------------------------------------------------------------ subclass interface
    def _check_checkpoint_settings(self, state: dict[str, Any]) -> None:
        """Raise if the checkpoint's state was written with settings it cannot continue under (ECQ: bits)."""

    def _new_group(self, shapes: list[torch.Size], device: torch.device) -> QuantizerGroup:
        """An uninitialised group state for the targets (``self.targets`` order) on ``device``."""
        raise NotImplementedError

    def _after_group_loaded(self) -> None:
        """Adjust a group restored from a checkpoint to the callback's phase (EC2T: frozen assignment)."""

    def _begin_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started_epoch = trainer.current_epoch
        self._on_epoch_begin(trainer, pl_module)

    def _on_epoch_begin(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Once at the start of every training epoch (subclasses add per-epoch state changes)."""
        if self.phase == PHASE_WARMUP and trainer.current_epoch >= self.start_epoch:
            self._start_quantization(trainer, pl_module)

    def _after_shadow_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        """Runs after the shadows took the optimizer step, before re-assignment (ECQx relevances, EC2T).

        The stepped parameters still hold the shadow values here; :meth:`_write_quantized` restores the
        quantized ones where a hook needs the quantized model.
        """

    def _extra_state_dict(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: dict[str, Any], pl_module: pl.LightningModule) -> None:
        pass
