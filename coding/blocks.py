"""NNR_PT_BLOCK grouping: which tensors of a layer share one data unit (spec nnc-bitstream.md §2.8, §13).

A block is a weight together with the 1-D tensors of the same layer that NNC can carry beside it: a local
scaling vector (``weight.ls``), the four batch-norm tensors (``bn.beta``, ``bn.gamma``, ``bn.mean``,
``bn.var``) and a bias. The grouping is described as NNCodec describes it (``block_id_and_param_type``):

    {"parameter_type": {name: role, ...}, "block_identifier": {name: block id, ...}}

Tensors with the same block id form one block; a block id used by a single tensor means no block. This
module only validates that description against the tensors to be coded and orders the units; it knows no
model classes (the caller names the roles).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ecqx.coding import hls

ROLES = hls.BLOCK_ROLES


@dataclass
class Block:
    """The tensors of one NNR_PT_BLOCK unit: (name, role) in coding order, the weight last."""

    block_id: object
    members: list[tuple[str, str]]

    @property
    def weight(self) -> str:
        return self.members[-1][0]

    @property
    def cpt(self) -> int:
        return hls.block_cpt({role for _, role in self.members})


def _error(message: str) -> ValueError:
    return ValueError(f"block_id_and_param_type: {message}")


def check_block_description(description: object) -> tuple[dict[str, str], dict[str, object]]:
    """(parameter_type, block_identifier) of a block_id_and_param_type mapping, or ValueError naming what is
    wrong with it."""
    if not isinstance(description, Mapping):
        raise _error(f"must be a mapping with 'parameter_type' and 'block_identifier', got "
                     f"{type(description).__name__}")
    types, ids = description.get("parameter_type"), description.get("block_identifier")
    if not isinstance(types, Mapping) or not isinstance(ids, Mapping):
        raise _error("needs the mappings 'parameter_type' (name -> role) and 'block_identifier' "
                     "(name -> block id)")
    for name, role in types.items():
        if not isinstance(name, str) or not isinstance(role, str):
            raise _error(f"parameter_type maps tensor names to role strings, got {name!r}: {role!r}")
    return dict(types), dict(ids)


def plan_units(names: Sequence[str], shapes: Mapping[str, tuple[int, ...]],
               description: object | None) -> list[str | Block]:
    """The data units of a stream in NNCodec's order: each tensor alone, or a whole block at the position of
    its weight (its other tensors are skipped where they stand).

    ``shapes`` gives every tensor's shape. Raises ValueError, naming the block and tensor, when a block is
    not one NNC can carry: a weight and, of the same first dimension, 1-D tensors of distinct roles among
    ``weight.ls``, ``bias`` and all four ``bn.*``.
    """
    if description is None:
        return list(names)
    types, ids = check_block_description(description)
    unknown = sorted(n for n in set(types) | set(ids) if n not in shapes)
    if unknown:
        raise _error(f"names tensors that are not coded: {unknown[:8]}")
    groups: dict[object, list[str]] = {}
    for name in names:
        block_id = ids.get(name)
        if block_id is not None:
            groups.setdefault(block_id, []).append(name)
    blocks: dict[str, Block] = {}
    in_block: set[str] = set()
    for block_id, members in groups.items():
        if len(members) < 2:
            continue  # NNCodec: a block id used once names no block
        block = _block(block_id, members, types, shapes)
        blocks[block.weight] = block
        in_block.update(members)
    units: list[str | Block] = []
    for name in names:
        if name in blocks:
            units.append(blocks[name])
        elif name not in in_block:
            units.append(name)
    return units


def _block(block_id: object, members: list[str], types: Mapping[str, str],
           shapes: Mapping[str, tuple[int, ...]]) -> Block:
    roles: dict[str, str] = {}
    for name in members:
        role = types.get(name)
        if role not in ROLES:
            raise _error(f"tensor {name!r} of block {block_id!r} has role {role!r}; a block's tensors "
                         f"have the roles {', '.join(ROLES)}")
        if role in roles:
            raise _error(f"block {block_id!r} has two tensors of role {role!r}: {roles[role]!r} and {name!r}")
        roles[role] = name
    if "weight" not in roles:
        raise _error(f"block {block_id!r} ({members}) has no tensor of role 'weight'")
    bn = [r for r in hls.BN_ROLES if r in roles]
    if bn and len(bn) != len(hls.BN_ROLES):
        raise _error(f"block {block_id!r} has the batch-norm roles {bn}; a block carries all four "
                     f"({', '.join(hls.BN_ROLES)}) or none")
    weight = roles["weight"]
    rows = shapes[weight][0] if shapes[weight] else 1
    for role, name in roles.items():
        if role != "weight" and tuple(shapes[name]) != (rows,):
            raise _error(f"tensor {name!r} ({role}) of block {block_id!r} has shape {tuple(shapes[name])}; "
                         f"a block's 1-D tensors have the weight's first dimension ({rows},)")
    _, coded = hls.block_roles(hls.block_cpt(set(roles)))
    return Block(block_id, [(roles[role], role) for role in coded])


def fold_batch_norm(tensors: Mapping[str, object], block_id_and_param_type: object,
                    eps: float = 1e-5) -> tuple[dict[str, object], dict, dict[str, int]]:
    """Batch-norm folding as NNCodec's ``compress(..., bnf=True)`` does it, on float tensors.

    In every block with the four ``bn.*`` tensors, ``g = gamma / sqrt(var + eps)`` becomes (or multiplies)
    the block's local scaling vector ``<weight>_scaling`` (role ``weight.ls``) and
    ``(bias - mean) * g + beta`` its bias (named ``<weight>.bias`` when the block had none); the four
    ``bn.*`` tensors are dropped. The weight itself is unchanged, so a quantized weight stays quantized.
    All arithmetic is float32, operation by operation, as NNCodec computes it.

    Returns (tensors, block_id_and_param_type, parameter_ids): the folded tensors (every other tensor
    unchanged, as given), the description of the folded blocks, and the parameter_id NNCodec writes for each
    tensor (its position in the unfolded mapping; pass it to :func:`ecqx.coding.encode`).
    """
    import numpy as np
    import torch

    names = list(tensors)
    shapes = {}
    for name, value in tensors.items():
        shape = getattr(value, "shape", None)
        if shape is None:
            shape = getattr(getattr(value, "levels", None), "shape", None)
        if shape is None:
            raise TypeError(f"tensor {name!r}: expected a tensor or array, got {type(value).__name__}")
        shapes[name] = tuple(shape)
    units = plan_units(names, shapes, block_id_and_param_type)
    types, ids = check_block_description(block_id_and_param_type)
    types, ids = dict(types), dict(ids)
    out: dict[str, object] = {}
    parameter_ids: dict[str, int] = {}
    position = {name: i for i, name in enumerate(names)}

    def as_float32(name: str) -> np.ndarray:
        value = tensors[name]
        if isinstance(value, torch.Tensor):
            if not value.is_floating_point():
                raise TypeError(f"tensor {name!r}: batch-norm folding needs float tensors, got {value.dtype}")
            value = value.detach().to("cpu", torch.float32).numpy()
        array = np.asarray(value)
        if array.dtype.kind != "f":
            raise TypeError(f"tensor {name!r}: batch-norm folding needs float tensors, got {array.dtype}")
        return np.ascontiguousarray(array, dtype=np.float32)

    for unit in units:
        if isinstance(unit, str):
            out[unit] = tensors[unit]
            parameter_ids[unit] = position[unit]
            continue
        roles = {role: name for name, role in unit.members}
        weight = roles["weight"]
        if "bn.gamma" not in roles:
            for name, _ in unit.members:
                out[name] = tensors[name]
                parameter_ids[name] = position[name]
            continue
        g = as_float32(roles["bn.gamma"]) / np.sqrt(as_float32(roles["bn.var"]) + np.float32(eps))
        ls_name = roles.get("weight.ls", weight + "_scaling")
        bias_name = roles.get("bias", weight + ".bias")
        for new in (ls_name, bias_name):
            if new not in roles.values() and new in tensors:
                raise ValueError(f"block {unit.block_id!r}: folding creates {new!r}, which names another "
                                 "tensor")
        scaling = as_float32(ls_name) * g if "weight.ls" in roles else g
        bias = as_float32(bias_name) if "bias" in roles else np.zeros(g.shape, dtype=np.float32)
        bias = (bias - as_float32(roles["bn.mean"])) * g + as_float32(roles["bn.beta"])
        out[weight] = tensors[weight]
        out[ls_name] = torch.from_numpy(scaling)
        out[bias_name] = torch.from_numpy(bias)
        for name in (weight, ls_name, bias_name):
            parameter_ids[name] = position.get(name, position[weight])
        for name, _ in unit.members:
            if name not in out:
                types.pop(name, None)
                ids.pop(name, None)
        types.update({weight: "weight", ls_name: "weight.ls", bias_name: "bias"})
        ids.update({ls_name: unit.block_id, bias_name: unit.block_id})
    return out, {"parameter_type": types, "block_identifier": ids}, parameter_ids
