"""``EC2T``: entropy-constrained trained ternarization (spec ecqx-ec2t.md §4) as a Lightning callback.

Per ternary tensor the callback holds two learned magnitudes w_n, w_p (0-d float tensors) and a fixed NNC
step Δ
chosen when quantization starts (:func:`ecqx.ec2t.ternary_step`). The values used in training are always
{−a, 0, b}·Δ with a, b the rounded magnitudes (:func:`ecqx.ec2t.ternary_grid`), so the exported codebook
[−a, 0, b] reproduces them exactly (also in faithful mode; there ``mode`` only selects the reference's pmf
update
and the sign of the w_n gradient).

The magnitudes are not parameters of the user's module: the callback steps them with its own Adam
(``centroid_lr``, spec §4.6 ``--lr2`` = 1e-5) right after the user's optimizer stepped the shadows, then
clamps
them to ≥ 0.675·std(shadow) and re-assigns. From ``freeze_epoch`` on (the reference's frozen-assignment phase)
the assignment is kept, the shadows are no longer stepped (their gradient is set to ``None``) and only the
magnitudes and the non-quantized parameters train. The magnitude optimizer's state is part of the checkpoint.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from ecqx.callbacks._base import (
    PHASE_FROZEN,
    PHASE_QUANTIZE,
    QuantizationCallback,
    TensorStats,
    check_int,
    check_number,
)
from ecqx.callbacks.ecq import tensor_stats
from ecqx.ec2t import (
    DEFAULT_INIT_SCALE,
    DEFAULT_RESOLUTION,
    clamp_magnitudes,
    ec2t_assign,
    ec2t_gradients,
    frozen_values,
    init_magnitudes,
    magnitude_floor,
    ternary_grid,
    ternary_step,
)
from ecqx.entropy import size_decay
from ecqx.grid import Grid
from ecqx.quantized import QuantizedTensor


class EC2T(QuantizationCallback):
    """Entropy-constrained trained ternarization during training.

    Args:
        lam: the global entropy gain γ (reference ``--lambda-max-divrs``, 0.125–0.175).
        start_epoch: first ternarized epoch (full-precision warm-up before it).
        freeze_epoch: first epoch of the frozen-assignment phase (``None``: never freeze).
        init_scale: initial magnitudes w_p = s·max W, w_n = s·|min W| (reference ``--ini-c-divrs``).
        centroid_lr: learning rate of the callback's Adam for the magnitudes (reference 1e-5).
        resolution: Δ ≈ max(w_n, w_p) / 2^resolution (finer = magnitudes closer to their latent value).
        mode: ``"clean"`` or ``"faithful"``.
        exclude_first, exclude_last: keep the input and output layers in full precision (default True, as
            the reference: "all layers but the input and the output layer").
        **kwargs: ``include``, ``exclude``, ``log_per_layer``.

    Example::

        trainer = pl.Trainer(max_epochs=35, callbacks=[EC2T(lam=0.15, freeze_epoch=20)])
    """

    method = "ec2t"

    def __init__(
        self,
        lam: float = 0.15,
        start_epoch: int = 0,
        freeze_epoch: int | None = None,
        init_scale: float = DEFAULT_INIT_SCALE,
        centroid_lr: float = 1e-5,
        resolution: int = DEFAULT_RESOLUTION,
        mode: str = "clean",
        exclude_first: bool = True,
        exclude_last: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            lam=lam,
            start_epoch=start_epoch,
            mode=mode,
            exclude_first=exclude_first,
            exclude_last=exclude_last,
            **kwargs,
        )
        if freeze_epoch is not None:
            check_int("freeze_epoch", freeze_epoch, start_epoch)
        check_number("init_scale", init_scale, 0.0, 1.0)
        if init_scale == 0:
            raise ValueError("`init_scale` must be in (0, 1], got 0")
        check_number("centroid_lr", centroid_lr, 0.0)
        check_int("resolution", resolution, 1)
        if resolution > 16:
            raise ValueError(f"`resolution` must be an integer in 1..16, got {resolution!r}")
        self.freeze_epoch = freeze_epoch
        self.init_scale = float(init_scale)
        self.centroid_lr = float(centroid_lr)
        self.resolution = resolution
        self._centroid_optimizer: torch.optim.Optimizer | None = None

    # ---------------------------------------------------------------- phases
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if (
            self.phase == PHASE_QUANTIZE
            and self.freeze_epoch is not None
            and trainer.current_epoch >= self.freeze_epoch
        ):
            self.phase = PHASE_FROZEN

    def _build_tensor_state(self, name: str, weights: torch.Tensor, max_numel: int) -> dict[str, Any]:
        w_n, w_p = init_magnitudes(weights, self.init_scale)
        qp, qp_density, step = ternary_step(w_n, w_p, self.resolution)
        state = {
            "w_n": torch.tensor(w_n, dtype=torch.float32, device=weights.device),
            "w_p": torch.tensor(w_p, dtype=torch.float32, device=weights.device),
            "qp": qp,
            "qp_density": qp_density,
            "step": step,
            "decay": size_decay(weights.numel(), max_numel),
            "indices": None,
            "grid": None,
        }
        self._centroid_optimizer = None  # rebuilt over all magnitudes on first use
        return state

    def _magnitudes(self) -> list[torch.Tensor]:
        return [self.tensor_states[n][key] for n in self.targets for key in ("w_n", "w_p")]

    def _optimizer(self) -> torch.optim.Optimizer:
        if self._centroid_optimizer is None:
            for magnitude in self._magnitudes():
                magnitude.requires_grad_(True)
            self._centroid_optimizer = torch.optim.Adam(self._magnitudes(), lr=self.centroid_lr)
        return self._centroid_optimizer

    # ---------------------------------------------------------------- gradients and steps
    def _shadow_gradient(self, name: str, grad: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor | None:
        state = self.tensor_states[name]
        grid: Grid = state["grid"]
        a, b = -grid.levels[0] * grid.step, grid.levels[2] * grid.step
        shadow_grad, grad_w_n, grad_w_p = ec2t_gradients(grad, state["indices"], a, b, self.mode)
        self._accumulate(state["w_n"], grad_w_n)
        self._accumulate(state["w_p"], grad_w_p)
        return None if self.phase == PHASE_FROZEN else shadow_grad

    @staticmethod
    def _accumulate(magnitude: torch.Tensor, grad: torch.Tensor) -> None:
        grad = grad.detach().to(magnitude.dtype).reshape(magnitude.shape)
        magnitude.grad = grad.clone() if magnitude.grad is None else magnitude.grad + grad

    def _after_shadow_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        optimizer = self._optimizer()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for name in self.targets:
            state = self.tensor_states[name]
            clamp_magnitudes(state["w_n"], state["w_p"], self.shadows[name])

    def _reassign(self, name: str, shadow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, TensorStats]:
        state = self.tensor_states[name]
        grid = ternary_grid(
            state["w_n"].item(),
            state["w_p"].item(),
            state["qp"],
            state["qp_density"],
            state["step"],
            floor=magnitude_floor(shadow),
        )
        values = grid.values(shadow.device)
        lam = 0.0
        if self.phase == PHASE_FROZEN and state["indices"] is not None:
            indices = state["indices"]
        else:
            result = ec2t_assign(shadow, values, self.lam, state["decay"], self.mode)
            indices, lam = result.indices, result.lam
        state["indices"], state["grid"] = indices, grid
        levels = grid.level_tensor(shadow.device)[indices]
        return levels, frozen_values(indices, values), tensor_stats(levels, lam)

    def _describe(self, name: str) -> QuantizedTensor:
        grid: Grid = self.tensor_states[name]["grid"]
        return QuantizedTensor(
            self.levels[name].to(torch.int32), grid.qp, grid.qp_density, codebook=grid.level_tensor()
        )

    # ---------------------------------------------------------------- checkpoint state
    def _tensor_state_dict(self, name: str) -> dict[str, Any]:
        state = self.tensor_states[name]
        return {
            "w_n": state["w_n"].detach().clone(),
            "w_p": state["w_p"].detach().clone(),
            "qp": state["qp"],
            "qp_density": state["qp_density"],
            "step": state["step"],
            "decay": state["decay"],
            "indices": state["indices"].clone(),
            "grid": state["grid"].to_dict(),
        }

    def _load_tensor_state(self, name: str, entry: dict[str, Any], device: torch.device) -> None:
        self.tensor_states[name] = {
            "w_n": entry["w_n"].to(device).clone(),
            "w_p": entry["w_p"].to(device).clone(),
            "qp": entry["qp"],
            "qp_density": entry["qp_density"],
            "step": entry["step"],
            "decay": entry["decay"],
            "indices": entry["indices"].to(device).clone(),
            "grid": Grid.from_dict(entry["grid"]),
        }

    def _extra_state_dict(self) -> dict[str, Any]:
        optimizer = self._centroid_optimizer
        return {"centroid_optimizer": None if optimizer is None else optimizer.state_dict()}

    def _load_extra_state(self, extra: dict[str, Any], pl_module: pl.LightningModule) -> None:
        self._centroid_optimizer = None
        if extra.get("centroid_optimizer") is not None:
            self._optimizer().load_state_dict(extra["centroid_optimizer"])
