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

from ecqx.callbacks._base import PHASE_FROZEN, PHASE_QUANTIZE, QuantizationCallback, check_int, check_number
from ecqx.ec2t import DEFAULT_INIT_SCALE, DEFAULT_RESOLUTION
from ecqx.group_state import TernaryGroup


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
            the reference: "all layers but the input and the output layer", spec ecqx-ec2t.md §4.2, verified
            on its released ResNet-20). This differs from ECQ/ECQx (default False, also as their reference,
            spec §2.1) for a reason: a ternary layer keeps only 3 values, and the input layer (which sees the
            raw data) and the output layer (one row per class) lose the most from that, while they hold a
            small share of the weights of the networks EC2T targets. With an embedding in front, the
            embedding is the input layer. Pass ``False`` to ternarize them too.
        **kwargs: ``include``, ``exclude``, ``log_per_layer``, ``module_types`` (see
            :class:`~ecqx.callbacks._base.QuantizationCallback`).

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
    def _on_epoch_begin(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super()._on_epoch_begin(trainer, pl_module)
        if (
            self.phase == PHASE_QUANTIZE
            and self.freeze_epoch is not None
            and trainer.current_epoch >= self.freeze_epoch
        ):
            self.phase = PHASE_FROZEN
            self.group.freeze()

    def _new_group(self, shapes: list[torch.Size], device: torch.device) -> TernaryGroup:
        self._centroid_optimizer = None  # rebuilt over the new magnitudes on first use
        return TernaryGroup(self.targets, shapes, gamma=self.lam, mode=self.mode, init_scale=self.init_scale,
                            resolution=self.resolution, device=device)

    def _after_group_loaded(self) -> None:
        if self.phase == PHASE_FROZEN:
            self.group.freeze()

    def _optimizer(self) -> torch.optim.Optimizer:
        if self._centroid_optimizer is None:
            self._centroid_optimizer = torch.optim.Adam([self.group.magnitudes], lr=self.centroid_lr)
        return self._centroid_optimizer

    # ---------------------------------------------------------------- steps
    def _after_shadow_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        # the magnitudes' gradients were accumulated by TernaryGroup.shadow_gradient
        optimizer = self._optimizer()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.group.clamp_magnitudes()

    # ---------------------------------------------------------------- checkpoint state
    def _extra_state_dict(self) -> dict[str, Any]:
        optimizer = self._centroid_optimizer
        return {"centroid_optimizer": None if optimizer is None else optimizer.state_dict()}

    def _load_extra_state(self, extra: dict[str, Any], pl_module: pl.LightningModule) -> None:
        self._centroid_optimizer = None
        state = extra.get("centroid_optimizer")
        if state is not None:
            self._optimizer().load_state_dict(_grouped_adam_state(state, len(self.targets)))


def _grouped_adam_state(state: dict[str, Any], num_tensors: int) -> dict[str, Any]:
    """The magnitude optimizer's state for the grouped ``[T, 2]`` magnitudes.

    Checkpoints of the per-tensor implementation hold one Adam parameter per magnitude (w_n, w_p of every
    tensor in turn); their moments are stacked into the one grouped parameter.
    """
    params = state["param_groups"][0]["params"]
    if len(state["param_groups"]) == 1 and len(params) == 1:
        return state
    if len(state["param_groups"]) != 1 or len(params) != 2 * num_tensors:
        raise ValueError(
            f"the checkpoint's EC2T magnitude optimizer holds {len(params)} parameters; expected 1 "
            "(grouped) or "
            f"{2 * num_tensors} (per-tensor, 2 per quantized tensor). HINT: resume with the same model and "
            "include/exclude arguments, or start a fresh run."
        )
    per_param = [state["state"].get(p) for p in params]
    if any(entry is None for entry in per_param):
        grouped_state = {}
    else:
        grouped_state = {0: {key: value if key == "step" else _stacked(per_param, key, num_tensors)
                             for key, value in per_param[0].items()}}
    group = dict(state["param_groups"][0], params=[0])
    return {"state": grouped_state, "param_groups": [group]}


def _stacked(per_param: list[dict[str, Any]], key: str, num_tensors: int) -> torch.Tensor:
    """The per-magnitude values of ``key`` as one ``[T, 2]`` tensor (w_n, w_p per row)."""
    return torch.stack([entry[key].reshape(()) for entry in per_param]).reshape(num_tensors, 2)
