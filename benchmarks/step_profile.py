"""Per-step cost of a Lightning training step with (or without) a quantization callback.

:func:`measure_steps` runs ``Trainer.fit`` of a LightningModule on synthetic ``(x, y)`` batches that already
live on the target device (a short list of distinct batches cycled through one epoch of ``warmup + measured``
steps, so there is no loader, no epoch boundary and no validation inside the run) and reports, for the
``measured`` steady-state steps after ``warmup`` optimizer steps (the quantization callbacks start at epoch 0,
so the warm-up also absorbs their one-time setup):

* wall milliseconds per step (one fit without profiler; the device is synchronised at both ends on CUDA);
* from a second, identical fit under ``torch.profiler`` (``record_shapes=False``), per step:

  - **top-level aten ops**: events named ``aten::*`` with no other ``aten::*`` event in their parent chain (a
    ``torch._foreach_*`` call counts once, like its one fused launch on CUDA; ``aten::add`` inside
    ``aten::_foreach_add`` on CPU does not count again);
  - **host synchronisations**: calls that block the host on CUDA: ``aten::_local_scalar_dense`` (what
    ``.item()``, ``bool(t)``, ``float(t)`` run) and the ops whose output size or result depends on data
    (``aten::nonzero`` — also behind boolean indexing and ``torch.where(cond)`` —, ``aten::masked_select``,
    ``aten::_unique*``/``aten::unique*``, ``aten::bincount``, ``aten::equal``, and ``aten::repeat_interleave``
    with tensor repeats and no ``output_size``, recognised by the ``.item()`` it runs), at any nesting depth,
    each synchronising call counted once (an event of this set inside another one is not counted again).
    Device-to-host copies (``.cpu()``, ``.tolist()``, ``.numpy()``) are invisible on CPU; on CUDA the counts
    of ``cudaStreamSynchronize``/``cudaDeviceSynchronize``/... runtime calls cover them;
  - aten ops at all depths (for information) and the most frequent top-level ops;
  - on CUDA: synchronising CUDA runtime calls and kernel launches per step;

* memory: bytes of the tensors in the quantization callback's ``state_dict()`` and bytes of all tensor
  storages the callback object holds (walked through its attributes, parameters and gradients of the model
  excluded), each also per quantized weight; on CUDA the peak ``torch.cuda.max_memory_allocated`` of the
  timed fit.

Lightning runs with ``logger=False``, no checkpointing, no progress bar, no model summary and no validation.

Used by ``benchmarks/bench_step.py`` and ``tests/test_step_profile.py``.
"""

from __future__ import annotations

import gc
import logging
import math
import random
import re
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.autograd import DeviceType

#: ops that block the host on CUDA (see the module docstring); ``aten::repeat_interleave`` is added when it
#: runs an ``.item()`` (tensor repeats without ``output_size``)
SYNC_OPS = frozenset({
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::unique_dim_consecutive",
    "aten::bincount",  # asks the host for the largest value on CUDA
    "aten::equal",
})
_RUNTIME_VERSION = re.compile(r"_v\d+$")
CUDA_SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
CUDA_LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                     "cudaLaunchCooperativeKernel")

ModuleFactory = Callable[[], pl.LightningModule]
CallbacksFactory = Callable[[], Sequence[Callback]]


@dataclass
class StepProfile:
    """Steady-state per-step numbers of one configuration (see the module docstring)."""

    device: str
    warmup: int
    measured: int
    batch_size: int
    ms_per_step: float | None = None
    ms_per_step_runs: list[float] = field(default_factory=list)  # every timed fit; ms_per_step = median
    timed_under_profiler: bool = False  # ms_per_step from the profiled fit (same_fit=True)
    top_level_ops: float | None = None  # per step
    all_ops: float | None = None  # per step
    syncs: float | None = None  # per step
    sync_ops: dict[str, float] = field(default_factory=dict)  # per step, by op name
    top_ops: dict[str, float] = field(default_factory=dict)  # the most frequent top-level ops, per step
    cuda_sync_calls: dict[str, float] | None = None  # per step, by runtime call
    kernel_launches: float | None = None  # per step (CUDA): kernel launch runtime calls on the host
    gpu_kernels: float | None = None  # per step (CUDA): kernels recorded on the device
    quantized_tensors: int = 0
    quantized_weights: int = 0
    state_dict_bytes: int = 0
    held_bytes: int = 0
    cuda_peak_bytes: int | None = None

    @property
    def state_dict_bytes_per_weight(self) -> float:
        return self.state_dict_bytes / self.quantized_weights if self.quantized_weights else 0.0

    @property
    def held_bytes_per_weight(self) -> float:
        return self.held_bytes / self.quantized_weights if self.quantized_weights else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "state_dict_bytes_per_weight": self.state_dict_bytes_per_weight,
                "held_bytes_per_weight": self.held_bytes_per_weight}


# ---------------------------------------------------------------------------------------------- data
def synthetic_batches(
    batch_size: int,
    input_shape: Sequence[int],
    num_classes: int,
    device: torch.device | str,
    distinct: int = 2,
    seed: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``distinct`` seeded ``(x, y)`` batches (standard normal inputs, uniform labels) on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(distinct):
        x = torch.randn(batch_size, *input_shape, generator=generator)
        y = torch.randint(0, num_classes, (batch_size,), generator=generator)
        batches.append((x.to(device), y.to(device)))
    return batches


class _CycledBatches:
    """An iterable of ``length`` batches cycling through ``batches`` (same tensor objects, no copies)."""

    def __init__(self, batches: Sequence[Any], length: int):
        self.batches, self.length = list(batches), length

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        return (self.batches[i % len(self.batches)] for i in range(self.length))


# ---------------------------------------------------------------------------------------------- probes
class _WindowProbe(Callback):
    """Opens a window at the end of batch ``warmup - 1`` and closes it at the end of batch
    ``warmup + measured - 1`` (last in the callback list, so after the quantization callback's batch end):
    the window holds exactly ``measured`` whole steps, whatever runs where in a step."""

    def __init__(self, warmup: int, measured: int, device: torch.device, profiler_factory=None):
        self.first, self.last = warmup - 1, warmup + measured - 1
        self.device = device
        self.profiler_factory = profiler_factory
        self.profiler = None
        self.seconds: float | None = None
        self._start = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.first:
            self._sync()
            if self.profiler_factory is not None:
                self.profiler = self.profiler_factory()
                self.profiler.start()
            self._start = time.perf_counter()
        elif batch_idx == self.last:
            self._sync()
            self.seconds = time.perf_counter() - self._start
            if self.profiler is not None:
                self.profiler.stop()


# ---------------------------------------------------------------------------------------------- events
def _is_aten(name: str) -> bool:
    return name.startswith("aten::")


def _ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def _has_item_below(event) -> bool:
    stack = list(event.cpu_children)
    while stack:
        child = stack.pop()
        if child.name == "aten::_local_scalar_dense":
            return True
        stack.extend(child.cpu_children)
    return False


def _is_sync(event) -> bool:
    if event.name in SYNC_OPS:
        return True
    return event.name == "aten::repeat_interleave" and _has_item_below(event)


def count_events(events) -> dict[str, Any]:
    """Totals over a profiler's ``events()``: top-level and all-depth aten ops, host syncs, CUDA calls."""
    top, syncs = Counter(), Counter()
    all_ops = 0
    cuda_calls, launches, gpu_kernels = Counter(), 0, 0
    for event in events:
        name = event.name
        if getattr(event, "device_type", None) == DeviceType.CUDA:  # device-side activity
            if not name.startswith(("Memcpy", "Memset")):
                gpu_kernels += 1
            continue
        runtime = _RUNTIME_VERSION.sub("", name)  # CUPTI may name runtime calls e.g. cudaLaunchKernel_v7000
        if runtime in CUDA_SYNC_CALLS:
            cuda_calls[runtime] += 1
        elif runtime in CUDA_LAUNCH_CALLS:
            launches += 1
        if not _is_aten(name):
            continue
        all_ops += 1
        ancestors = list(_ancestors(event))
        if not any(_is_aten(a.name) for a in ancestors):
            top[name] += 1
        if _is_sync(event) and not any(_is_sync(a) for a in ancestors):
            syncs[name] += 1
    return {"top": top, "all": all_ops, "syncs": syncs, "cuda_calls": cuda_calls, "launches": launches,
            "gpu_kernels": gpu_kernels}


# ---------------------------------------------------------------------------------------------- memory
def _tensors_of(obj: Any, seen: set[int], depth: int = 0):
    """Tensors reachable from ``obj`` through containers and ecqx objects (not modules, trainers, optimizers
    of the model: the walk does not enter ``nn.Module``/``Trainer``)."""
    if id(obj) in seen or depth > 12:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    if isinstance(obj, (nn.Module, pl.Trainer)):
        return
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors_of(value, seen, depth + 1)
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        for value in obj:
            yield from _tensors_of(value, seen, depth + 1)
        return
    if isinstance(obj, torch.optim.Optimizer):  # the callback's own optimizer (EC2T magnitudes)
        yield from _tensors_of(obj.state, seen, depth + 1)
        yield from _tensors_of(obj.param_groups, seen, depth + 1)
        return
    module = type(obj).__module__ or ""
    if module.startswith(("ecqx", "step_profile")) or depth == 0:
        attributes = dict(getattr(obj, "__dict__", {}))
        for slot in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, slot):
                attributes[slot] = getattr(obj, slot)
        for value in attributes.values():
            yield from _tensors_of(value, seen, depth + 1)


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return str(tensor.device), tensor.untyped_storage().data_ptr()


def held_bytes(callback: Any, module: nn.Module) -> int:
    """Bytes of the distinct tensor storages ``callback`` holds, without the model's parameters/gradients."""
    excluded = set()
    for tensor in [*module.parameters(), *module.buffers()]:
        excluded.add(_storage_key(tensor))
        if tensor.grad is not None:
            excluded.add(_storage_key(tensor.grad))
    total, counted = 0, set()
    for tensor in _tensors_of(callback, set()):
        if tensor.is_sparse or tensor.layout != torch.strided:
            continue
        key = _storage_key(tensor)
        if key in excluded or key in counted:
            continue
        counted.add(key)
        total += tensor.untyped_storage().nbytes()
    return total


def state_dict_bytes(state: Any) -> int:
    """Bytes of all tensors in a (nested) state dict."""
    return sum(t.numel() * t.element_size() for t in _tensors_of(state, set(), depth=1))


def _quantization_callback(callbacks: Sequence[Callback]):
    try:
        from ecqx.callbacks import QuantizationCallback as base
    except ImportError:  # duck typing only, if the base class is not exported
        base = ()
    found = [cb for cb in callbacks if isinstance(cb, base) or hasattr(cb, "targets")]
    return found[0] if found else None


def _quantized_names(callback) -> list[str]:
    """Names of the tensors ``callback`` quantizes (public ``quantized_tensors()``, else ``targets``)."""
    if callable(getattr(callback, "quantized_tensors", None)):
        names = list(callback.quantized_tensors())
        if names:
            return names
    return list(getattr(callback, "targets", []))


# ---------------------------------------------------------------------------------------------- running
@contextmanager
def _quiet():
    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning", "lightning.pytorch",
                                               "lightning_fabric", "ecqx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _trainer(device: torch.device, max_steps: int, callbacks: list[Callback]) -> pl.Trainer:
    if device.type == "cuda":
        accelerator, devices = "gpu", [device.index or 0]
    else:
        accelerator, devices = "cpu", 1
    return pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        max_steps=max_steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
    )


def _fit(make_module, make_callbacks, batches, warmup, measured, device, seed, profiler_factory=None):
    random.seed(seed)  # not pl.seed_everything: it also sets PL_GLOBAL_SEED in os.environ
    torch.manual_seed(seed)
    module = make_module()
    callbacks = list(make_callbacks())
    probe = _WindowProbe(warmup, measured, device, profiler_factory)
    data = _CycledBatches(batches, warmup + measured)
    with _quiet():
        trainer = _trainer(device, warmup + measured, [*callbacks, probe])
        trainer.fit(module, train_dataloaders=data)
    if probe.seconds is None:
        raise RuntimeError(f"the run stopped before step {warmup + measured}")
    return module, callbacks, probe


def measure_steps(
    make_module: ModuleFactory,
    make_callbacks: CallbacksFactory = list,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    *,
    warmup: int = 3,
    measured: int = 10,
    device: str | torch.device = "cpu",
    seed: int = 0,
    timing: bool = True,
    profile: bool = True,
    same_fit: bool = False,
    repeats: int = 1,
    top_ops: int = 12,
) -> StepProfile:
    """Measure ``measured`` steady-state training steps (after ``warmup`` optimizer steps).

    Args:
        make_module: builds a fresh LightningModule (called after seeding, once per fit).
        make_callbacks: builds the callbacks (the quantization callback, if any), once per fit.
        batches: ``(x, y)`` batches already on ``device``, cycled (see :func:`synthetic_batches`).
        warmup: optimizer steps before the measured window (≥ 1).
        measured: steps in the window (for ECQx a multiple of its ``relevance_every_n_steps``).
        timing: run the un-profiled fit that gives ``ms_per_step`` (and the CUDA peak memory).
        profile: run the profiled fit that gives op and sync counts.
        same_fit: with ``timing`` and ``profile``, take the time from the profiled fit instead of a second
            fit (halves the cost of slow configurations; the profiler's per-op overhead, a few µs per op, is
            then included, which matters only for steps of many small ops).
        repeats: timed fits (``ms_per_step`` is their median; against load from other processes).
    """
    if warmup < 1 or measured < 1:
        raise ValueError("warmup and measured must be >= 1")
    if batches is None:
        raise ValueError("batches are required (see synthetic_batches)")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    result = StepProfile(device=str(device), warmup=warmup, measured=measured,
                         batch_size=int(batches[0][0].shape[0]))
    module = callbacks = None
    if timing and not (profile and same_fit):
        for _ in range(max(1, repeats)):
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            module, callbacks, probe = _fit(make_module, make_callbacks, batches, warmup, measured, device,
                                            seed)
            result.ms_per_step_runs.append(probe.seconds * 1e3 / measured)
            if device.type == "cuda":
                result.cuda_peak_bytes = int(torch.cuda.max_memory_allocated(device))
        result.ms_per_step = statistics.median(result.ms_per_step_runs)
    if profile:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)

        def profiler_factory():
            return torch.profiler.profile(activities=activities, record_shapes=False, profile_memory=False,
                                          with_stack=False)

        if timing and same_fit:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
        module, callbacks, probe = _fit(make_module, make_callbacks, batches, warmup, measured, device, seed,
                                        profiler_factory)
        if timing and same_fit:
            result.ms_per_step = probe.seconds * 1e3 / measured
            result.ms_per_step_runs = [result.ms_per_step]
            result.timed_under_profiler = True
            if device.type == "cuda":
                result.cuda_peak_bytes = int(torch.cuda.max_memory_allocated(device))
        counts = count_events(probe.profiler.events())
        per = 1.0 / measured
        result.top_level_ops = sum(counts["top"].values()) * per
        result.all_ops = counts["all"] * per
        result.syncs = sum(counts["syncs"].values()) * per
        result.sync_ops = {k: v * per for k, v in sorted(counts["syncs"].items())}
        result.top_ops = {k: v * per for k, v in counts["top"].most_common(top_ops)}
        if device.type == "cuda":
            calls = dict(counts["cuda_calls"])
            # the probe's own torch.cuda.synchronize() before stopping the profiler is inside the window
            if calls.get("cudaDeviceSynchronize"):
                calls["cudaDeviceSynchronize"] -= 1
            result.cuda_sync_calls = {k: v * per for k, v in sorted(calls.items())}
            result.kernel_launches = counts["launches"] * per
            result.gpu_kernels = counts["gpu_kernels"] * per
    quantizer = _quantization_callback(callbacks or [])
    if quantizer is not None and module is not None:
        params = dict(module.named_parameters())
        names = _quantized_names(quantizer)
        result.quantized_tensors = len(names)
        result.quantized_weights = sum(params[n].numel() for n in names)
        result.state_dict_bytes = state_dict_bytes(quantizer.state_dict())
        result.held_bytes = held_bytes(quantizer, module)
    return result


def ratio(value: float | None, reference: float | None) -> float:
    """``value / reference`` (NaN when either is missing or the reference is 0)."""
    if value is None or not reference:
        return math.nan
    return value / reference
