"""``ECQ`` and ``ECQx``: entropy-constrained quantization-aware training on a fixed b-bit grid per tensor.

The maths is :class:`ecqx.group_state.UniformGroup` (grids :func:`ecqx.grid.uniform_grid` snapped to an NNC
step, the assignment of :func:`ecqx.assign.assign` for all tensors at once, the straight-through rule of
:func:`ecqx.ste.ste_gradient`, running relevance); relevances come from
:func:`ecqx.relevance.weight_relevances`; the shadow-weight mechanics are in
:mod:`ecqx.callbacks._base`.

ECQx relevances (spec ecqx-ec2t.md §3.1): after the shadow step and before the re-assignment, every
``relevance_every_n_steps`` optimizer steps, LRP weight relevances are computed on the live model in eval mode
holding the current quantized weights, either on the current training batch (``relevance_source="batch"``, as
the
reference does) or on the first ``relevance_batches`` batches of the validation loader (``"val"``, a fixed
reference set). Under DDP they are averaged over ranks. The running relevance is
R ← (1 − α)·R_new + α·R_prev (α = ``alpha``, the weight of the *previous* value, spec §3.1) and is reset at
the
start of every epoch as in the reference. The relevances of all tensors are flattened into one buffer, so DDP
averages them with one all-reduce.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import move_data_to_device, rank_zero_warn

from ecqx.assign import DEFAULT_P
from ecqx.callbacks._base import QuantizationCallback, check_choice, check_int, check_number
from ecqx.callbacks._evaluate import find_loader
from ecqx.group_state import UniformGroup
from ecqx.ste import STE_SCALES, default_ste_scale
from ecqx.targets import select_targets

RELEVANCE_SOURCES = ("batch", "val")
RELEVANCE_BACKENDS = ("zennit", "captum")


class ECQ(QuantizationCallback):
    """Entropy-constrained quantization (ECQ) during training.

    Args:
        bits: bit width b of the per-tensor grid (2^b levels including 0), 2..8.
        lam: global entropy gain Λ (reference default 0.05).
        start_epoch: first quantized epoch (full-precision warm-up before it).
        mode: ``"clean"`` or ``"faithful"`` (see :class:`~ecqx.callbacks._base.QuantizationCallback`).
        gradient_scale: straight-through rule, ``"abs"``, ``"signed"`` or ``"identity"``
            (default: ``"abs"`` in clean mode, ``"signed"`` in faithful mode).
        exclude_first, exclude_last: keep the first / last quantizable layer in full precision. Default
            (``None``): both are quantized, as in the reference ECQ/ECQx (spec ecqx-ec2t.md §2.1: every
            ≥ 2-D tensor including the first conv and the last FC; its ResNet-20 results quantize all 20
            layers at 4 bits). EC2T differs on purpose (see :class:`~ecqx.callbacks.EC2T`): a ternary layer
            has 3 values, a b-bit grid 2^b. At ``bits=2`` the grid is nearly as coarse as a ternary one and
            quantizing the input and output layers can cost much accuracy, so with the defaults at 2 bits
            the callback warns once (rank zero); pass ``True`` to keep them in full precision as EC2T does,
            or ``False`` to quantize them without the warning.
        **kwargs: ``include``, ``exclude``, ``log_per_layer``, ``module_types`` (see
            :class:`~ecqx.callbacks._base.QuantizationCallback`).

    Example::

        trainer = pl.Trainer(max_epochs=5, callbacks=[ECQ(bits=4, lam=0.05, start_epoch=1)])
    """

    method = "ecq"

    def __init__(
        self,
        bits: int = 4,
        lam: float = 0.05,
        start_epoch: int = 0,
        mode: str = "clean",
        gradient_scale: str | None = None,
        exclude_first: bool | None = None,
        exclude_last: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(lam=lam, start_epoch=start_epoch, mode=mode, exclude_first=bool(exclude_first),
                         exclude_last=bool(exclude_last), **kwargs)
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"`bits` must be an integer in 2..8, got {bits!r}")
        if gradient_scale is not None:
            check_choice("gradient_scale", gradient_scale, STE_SCALES)
        self.bits = bits
        self.gradient_scale = gradient_scale or default_ste_scale(mode)
        self._default_first_last = exclude_first is None and exclude_last is None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.bits == 2 and self._default_first_last:
            self._warn_first_last_at_two_bits(pl_module)

    def _warn_first_last_at_two_bits(self, pl_module: pl.LightningModule) -> None:
        layers = select_targets(pl_module, exclude=None, types=self.module_types)
        quantized = [name for name in dict.fromkeys([layers[0], layers[-1]]) if name in self.targets]
        if quantized:
            rank_zero_warn(
                f"{type(self).__name__}(bits=2) quantizes the first and last layers {quantized} (the "
                "default, as in the reference ECQ); on a 2-bit grid these layers often cost the most "
                "accuracy. Pass exclude_first=True, exclude_last=True to keep them in full precision (as "
                "EC2T does), or exclude_first=False, exclude_last=False to quantize them without this "
                "warning."
            )

    def _check_checkpoint_settings(self, state: dict[str, Any]) -> None:
        tensors = (state.get("group") or {}).get("tensors") or state.get("tensors") or {}
        counts = sorted({len(e["grid"]["levels"]) for e in tensors.values() if "grid" in e})
        if counts and counts != [2 ** self.bits]:
            saved = ", ".join(str(count.bit_length() - 1) for count in counts)  # 2^bits levels
            raise ValueError(
                f"the checkpoint's {type(self).__name__} state was written with bits={saved}, but this "
                f"callback has bits={self.bits}; the grids are fixed when quantization starts. HINT: resume "
                f"with bits={saved}, or start a fresh run (no ckpt_path) to quantize with bits={self.bits}."
            )

    def _new_group(self, shapes: list[torch.Size], device: torch.device) -> UniformGroup:
        # The grids are snapped in both modes: the trained values must be exactly what NNC decodes.
        return UniformGroup(self.targets, shapes, bits=self.bits, lam=self.lam, mode=self.mode,
                            ste_scale=self.gradient_scale, device=device, **self._relevance_options())

    def _relevance_options(self) -> dict[str, Any]:
        return {}  # ECQ: no relevances


class ECQx(ECQ):
    """Explainability-driven ECQ: the zero-cluster cost is weighted by LRP weight relevances (spec §3).

    Args:
        bits, lam, start_epoch, mode, gradient_scale: as :class:`ECQ`.
        p: admissible sparsity band below the ECQ sparsity (reference ``--p``, 0.1).
        alpha: weight of the previous running relevance (reference ``--alpha``, 0.1).
        relevance_every_n_steps: refresh the relevances every n optimizer steps (and at the first step of
            every epoch, when the running relevance restarts); between refreshes the running relevance is
            reused. Default 10. The reference refreshes at every step (``1``), but one LRP pass costs
            0.7–1.5 ECQ training steps (measured with one thread, Lightning loop included: mean
            step 46 → 121 ms for LeNet-5/MNIST and 14 → 25 ms for the digits MLP going from ECQ to ECQx with
            n=1; with n=10, 58 ms and 15 ms, i.e. 1.26× and 1.02–1.2× ECQ;
            ``benchmarks/results/bench_relevance_t1.md``). The running relevance is an average over batches
            anyway (``alpha``), and on the digits default (3 seeds) n=10 reached the same mean decoded
            accuracy as n=1 (96.1 %) with slightly smaller files; use 1 to reproduce the reference exactly.
        relevance_source: ``"batch"`` (the current training batch) or ``"val"`` (a fixed reference: the first
            ``relevance_batches`` batches of the validation loader).
        relevance_batches: number of reference batches for ``relevance_source="val"``.
        backend: ``"zennit"`` or ``"captum"``.
        composite: a zennit ``Composite`` (``None``: :func:`ecqx.relevance.epsilon_plus_flat_bn_pass`).
        **kwargs: ``exclude_first``, ``exclude_last`` (as :class:`ECQ`), ``include``, ``exclude``,
            ``log_per_layer``, ``module_types``.

    Models with integer inputs (token ids into an ``nn.Embedding`` / ``nn.EmbeddingBag``) work with both
    backends: the zennit pass starts at the logits and stops at the quantized layers' outputs, and an
    embedding's weight relevance is the ε rule applied to the lookup — the relevance arriving at its output
    flows back into the rows that the batch used (:mod:`ecqx.relevance`). The inputs are ``batch[0]`` (or
    ``batch["x"]``) and are passed to the module as one argument.

    Example::

        trainer = pl.Trainer(max_epochs=5, callbacks=[ECQx(bits=4, lam=0.05, start_epoch=1)])
    """

    method = "ecqx"

    def __init__(
        self,
        bits: int = 4,
        lam: float = 0.05,
        start_epoch: int = 0,
        mode: str = "clean",
        gradient_scale: str | None = None,
        p: float = DEFAULT_P,
        alpha: float = 0.1,
        relevance_every_n_steps: int = 10,
        relevance_source: str = "batch",
        relevance_batches: int = 1,
        backend: str = "zennit",
        composite: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            bits=bits, lam=lam, start_epoch=start_epoch, mode=mode, gradient_scale=gradient_scale, **kwargs
        )
        check_number("p", p, 0.0, 1.0)
        check_number("alpha", alpha, 0.0, 1.0)
        check_int("relevance_every_n_steps", relevance_every_n_steps, 1)
        check_choice("relevance_source", relevance_source, RELEVANCE_SOURCES)
        check_int("relevance_batches", relevance_batches, 1)
        check_choice("backend", backend, RELEVANCE_BACKENDS)
        if composite is not None and backend != "zennit":
            raise ValueError(f"`composite` applies to backend='zennit' only, got backend={backend!r}")
        self.p = float(p)
        self.alpha = float(alpha)
        self.relevance_every_n_steps = relevance_every_n_steps
        self.relevance_source = relevance_source
        self.relevance_batches = relevance_batches
        self.backend = backend
        self.composite = composite

    @property
    def relevances(self) -> dict[str, torch.Tensor]:
        """The running relevance of every tensor (empty before the first refresh of an epoch), by name."""
        return {} if self.group is None else self.group.relevances()

    def _on_epoch_begin(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.group is not None:
            self.group.reset_relevance()  # the reference keeps the running relevance per epoch
        super()._on_epoch_begin(trainer, pl_module)

    def _relevance_options(self) -> dict[str, Any]:
        return {"relevance": True, "p": self.p, "relevance_alpha": self.alpha}

    def _after_shadow_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        if self.group.relevance is not None and self.optimizer_steps % self.relevance_every_n_steps:
            return
        self._write_quantized(pl_module)  # relevances of the model as it is quantized, not of the shadows
        fresh = self._compute_relevances(trainer, pl_module, batch)
        flat = self.group.layout.flatten([fresh[name] for name in self.targets], dtype=torch.float32)
        self.group.update_relevance(trainer.strategy.reduce(flat, reduce_op="mean"))

    def _compute_relevances(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any
    ) -> dict[str, torch.Tensor]:
        from ecqx.relevance import weight_relevances

        batches = [batch] if self.relevance_source == "batch" else self._reference_batches(trainer, pl_module)
        total: dict[str, torch.Tensor] = {}
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.enable_grad():
                for item in batches:
                    inputs, targets = _inputs_and_targets(item)
                    found = weight_relevances(
                        pl_module,
                        inputs,
                        targets,
                        backend=self.backend,
                        composite=self.composite,
                        names=self.targets,
                    )
                    for name in self.targets:
                        total[name] = found[name] if name not in total else total[name] + found[name]
        finally:
            pl_module.train(was_training)
        return total

    def _reference_batches(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Any]:
        loader = find_loader(trainer, "val")
        if loader is None:
            raise RuntimeError(
                "ECQx(relevance_source='val') found no validation dataloader. HINT: give the "
                "trainer a validation loader or use relevance_source='batch'."
            )
        batches = []
        for index, item in enumerate(loader):
            if index == self.relevance_batches:
                break
            batches.append(move_data_to_device(item, pl_module.device))
        return batches

    def _epoch_metrics(self) -> dict[str, float]:
        metrics = super()._epoch_metrics()
        if self.log_per_layer:
            for name, s in self.stats.items():
                metrics[f"quant/{name}/relevance_flips"] = float(s.relevance_flips)
        return metrics


def _inputs_and_targets(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and {"x", "y"} <= set(batch):
        return batch["x"], batch["y"]
    raise TypeError(
        "ECQx needs (inputs, targets) batches to compute relevances: a tuple/list (x, y, ...) or a dict with "
        f"'x' and 'y', got {type(batch).__name__}"
    )
