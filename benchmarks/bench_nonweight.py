"""Non-weight tensors in ``encode_state_dict``: bytes and accuracy of the fixed fine qp vs per-tensor steps.

The float tensors a state_dict does not quantize (BatchNorm weights, biases and running statistics, the
linear bias, layers left out of quantization) were coded with one fixed qp (-75 at qp_density 2, a step of
2.4e-6 whatever the tensor's scale). This benchmark compares, on pretrained CIFAR-10 ResNets and the CIFAR-10
JPEG test split (``--limit`` images evenly spaced over it; the archive is ordered by class):

* ``qp -75 (before)``: the previous coding, rebuilt exactly (every non-weight tensor at qp -75 through
  ``ecqx.coding.encode`` with the stream's unary length, no raw float32 units, the old metadata text);
* ``qp -75``: the same fixed qp through today's ``encode_state_dict`` (cheaper unary length per tensor, a raw
  float32 unit wherever that is not larger);
* ``auto, b bits``: ``nonweight_qp="auto"`` — each tensor's step the largest NNC step at most max|x|·2^-b;
* ``auto, b bits, no raw``: the same with ``raw_float=False`` (streams NNCodec 2.1.3 always reads).

Weights: ``ecqx.quantize(..., method="ecq", bits=4, lam=0.05)``. Per variant: file bytes, bytes of the 1-D
float tensors (whole units, i.e. with their headers, whose tensor names alone are ~25 bytes; and payload only)
against their float32 bytes, bits per value, how many 1-D tensors cost more than 32 bits per value, raw units,
the largest error relative to the tensor's max|x|, and top-1 accuracy of the decoded model — once with the
quantized weights, once with the float weights (the non-weight coding alone; agreement = share of test images
whose predicted class equals the float model's).

Downsample study (issue 11 item 3): the CIFAR-10 ResNets here use parameter-free option-A shortcuts, so
an option-B ResNet-20 is made from the pretrained one — each shortcut becomes ``downsample = 1×1 conv
(stride 2) + BN`` with a Kaiming-initialised conv — and the whole network is fine-tuned for
``--finetune-steps`` SGD steps on the training split (random crop + flip) so that the 1×1 convolutions hold
trained, dense weights. It is then coded with the downsample convolutions excluded from quantization (the
default of ``ecqx.targets``) and included (4-bit ECQ like the other convolutions, or an 8-bit grid).

    python benchmarks/bench_nonweight.py [--limit 2000] [--models resnet20 resnet56] [--bits 6 8 10 12]

Writes ``benchmarks/results/bench_nonweight.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import ecqx
from ecqx.coding import decode_levels, decode_state_dict, encode, encode_state_dict, hls, quantize_tensor
from ecqx.coding.hls import PayloadType, parse_stream
from ecqx.coding.model import DEFAULT_NONWEIGHT_BITS
from ecqx.training.data import CIFAR10JPEGDataModule
from ecqx.training.models import BasicBlock, PadShortcut, load_pretrained, resnet20, resnet56

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import environment  # noqa: E402

log = logging.getLogger("bench_nonweight")
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ECQX_SHARED", REPO.parent / "shared"))
MODELS = {
    "resnet20": (resnet20, SHARED / "models" / "resnet20.pt"),
    "resnet56": (resnet56, SHARED / "data" / "resnet-cifar10-pretrained" / "resnet56-4bfd9763.th"),
}
AKAMASTER_RESNET20 = SHARED / "data" / "resnet-cifar10-pretrained" / "resnet20-12fca82f.th"
OLD_QP = -75
EVAL_BATCH = 500


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=10000, help="test images, evenly spaced over the split")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    p.add_argument("--bits", type=int, nargs="+", default=[6, 8, 10, 12],
                   help=f"relative precisions of nonweight_qp='auto' (default {DEFAULT_NONWEIGHT_BITS})")
    p.add_argument("--finetune-steps", type=int, default=1000,
                   help="SGD steps of the option-B ResNet-20 of the downsample study (0 skips the study)")
    p.add_argument("--train-images", type=int, default=20000, help="training images of the fine-tuning")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", type=Path, default=SHARED / "data" / "cifar10-jpeg")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_nonweight")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ data
def _images(data: CIFAR10JPEGDataModule, split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images evenly spaced over the split (the archive is ordered by class)."""
    labels, images_at = data.read_split(split)
    count = min(count, labels.numel())
    picked = torch.arange(count) * (labels.numel() // count)
    return images_at(picked), labels[picked]


def _logits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(inputs[i:i + EVAL_BATCH]) for i in range(0, len(inputs), EVAL_BATCH)])


# ------------------------------------------------------------------------------------------------ coding
def _before_stream(state: dict, quantized: dict) -> bytes:
    """The previous encode_state_dict output: non-weight floats at qp -75, the stream's unary length, no raw
    units, metadata with dtypes and 0-d names only."""
    tensors, meta = {}, {"dtype": {}, "scalar": []}
    for name, tensor in state.items():
        flat = tensor.reshape(1) if tensor.dim() == 0 else tensor
        if name in quantized:
            tensors[name] = quantized[name]
        elif tensor.is_floating_point():
            tensors[name] = quantize_tensor(flat.float(), OLD_QP)
        else:
            tensors[name] = flat
        if tensor.dtype not in (torch.float32, torch.int32):
            meta["dtype"][name] = str(tensor.dtype).removeprefix("torch.")
        if tensor.dim() == 0:
            meta["scalar"].append(name)
    data = encode(tensors, topology_unit=True)
    head = len(data) - sum(n.unit_bytes for n in parse_stream(data).ndus)  # start unit, parameter set, TPL
    empty_tpl = hls.write_tpl("")
    assert data[:head].endswith(empty_tpl)
    text = json.dumps({hls.STATE_DICT_METADATA_KEY: meta}, separators=(",", ":"))
    return data[:head - len(empty_tpl)] + hls.write_tpl(text) + data[head:]


def _stream_rows(data: bytes, state: dict, quantized: dict) -> dict:
    stream = parse_stream(data)
    levels = decode_levels(data)
    one_d = [n for n, t in state.items() if t.is_floating_point() and t.dim() <= 1 and n not in quantized]
    other = [n for n, t in state.items() if t.is_floating_point() and t.dim() > 1 and n not in quantized]
    payload = {n.header.name: len(n.payload) for n in stream.ndus}
    values = sum(state[n].numel() for n in one_d)
    unit_bytes = sum(levels[n].unit_bytes for n in one_d)
    bits = [8.0 * levels[n].unit_bytes / state[n].numel() for n in one_d]
    index = {name: i for i, name in enumerate(state)}
    raw_unit = {n: _raw_unit_bytes(n, state[n], index[n]) for n in one_d + other}
    return {
        "file_bytes": len(data),
        "topology_unit_bytes": len(hls.write_tpl(stream.topology_data or "")),
        "quantized_bytes": sum(levels[n].unit_bytes for n in quantized if n in levels),
        "one_d_tensors": len(one_d),
        "one_d_values": values,
        "one_d_float32_bytes": 4 * values,
        "one_d_unit_bytes": unit_bytes,
        "one_d_payload_bytes": sum(payload[n] for n in one_d),
        "one_d_unit_ratio": unit_bytes / (4 * values),
        "one_d_payload_ratio": sum(payload[n] for n in one_d) / (4 * values),
        "one_d_bits_per_value": 8.0 * unit_bytes / values,
        "one_d_mean_tensor_bits_per_value": sum(bits) / len(bits),
        "one_d_over_32_bits": sum(b > 32 for b in bits),
        "one_d_payload_over_32_bits": sum(8 * payload[n] > 32 * state[n].numel() for n in one_d),
        "units_larger_than_raw": sum(levels[n].unit_bytes > raw_unit[n] for n in one_d + other),
        "other_unquantized_bytes": sum(levels[n].unit_bytes for n in other),
        "other_unquantized_values": sum(state[n].numel() for n in other),
        "raw_units": sum(t.payload_type == PayloadType.NNR_PT_RAW_FLOAT for t in levels.values()),
    }


def _raw_unit_bytes(name: str, tensor: torch.Tensor, index: int) -> int:
    """Bytes of the tensor as a raw float32 unit (NNR_PT_RAW_FLOAT) at stream position ``index``."""
    header = hls.NduHeader(name=name, payload_type=PayloadType.NNR_PT_RAW_FLOAT,
                           dims=tuple(tensor.shape) or (1,), parameter_id=index)
    return len(hls.write_ndu(header, 1, bytes(4 * tensor.numel())))


def _max_relative_error(decoded: dict, state: dict, quantized: dict) -> float:
    worst = 0.0
    for name, tensor in state.items():
        if tensor.is_floating_point() and name not in quantized:
            peak = float(tensor.abs().max())
            if peak > 0:
                worst = max(worst, float((decoded[name].float() - tensor.float()).abs().max()) / peak)
    return worst


def evaluate_variants(build, state: dict, quantized: dict, inputs, labels, bits_list, reference=None) -> dict:
    """Every coding variant of one state_dict: bytes (see _stream_rows) and decoded accuracy."""
    model = build()
    model.load_state_dict(state)
    float_logits = _logits(model, inputs) if reference is None else reference
    float_pred = float_logits.argmax(1)
    variants = [("qp -75 (before)", None), ("qp -75", dict(nonweight_qp=OLD_QP))]
    variants += [(f"auto, {b} bits", dict(nonweight_bits=b)) for b in bits_list]
    variants += [(f"auto, {DEFAULT_NONWEIGHT_BITS} bits, no raw",
                  dict(nonweight_bits=DEFAULT_NONWEIGHT_BITS, raw_float=False))]
    rows = []
    for label, options in variants:
        start = time.perf_counter()
        data = _before_stream(state, quantized) if options is None else encode_state_dict(state, quantized,
                                                                                           **options)
        seconds = time.perf_counter() - start
        decoded = decode_state_dict(data)
        row = {"variant": label, "options": options, "encode_seconds": seconds,
               **_stream_rows(data, state, quantized),
               "max_error_over_max_abs": _max_relative_error(decoded, state, quantized)}
        model.load_state_dict(decoded, strict=True)
        row["top1_quantized"] = float((_logits(model, inputs).argmax(1) == labels).float().mean())
        model.load_state_dict({**decoded, **{n: state[n] for n in quantized}}, strict=True)
        nonweight_logits = _logits(model, inputs)
        row["top1_float_weights"] = float((nonweight_logits.argmax(1) == labels).float().mean())
        row["agreement_float_weights"] = float((nonweight_logits.argmax(1) == float_pred).float().mean())
        row["logit_rms_error_float_weights"] = float((nonweight_logits - float_logits).pow(2).mean().sqrt()
                                                     / float_logits.std())
        rows.append(row)
        log.info("%s: %d bytes, 1-D %.3f of float32, top-1 %.4f / %.4f", label, row["file_bytes"],
                 row["one_d_unit_ratio"], row["top1_quantized"], row["top1_float_weights"])
    return {"top1_float": float((float_pred == labels).float().mean()), "variants": rows}


# ------------------------------------------------------------------------------------------------ option B
class DownsampleBlock(nn.Module):
    """BasicBlock with an option-B shortcut: ``downsample`` = 1×1 conv (stride) + BN."""

    def __init__(self, block: BasicBlock):
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = block.conv1, block.bn1, block.conv2, block.bn2
        self.downsample = None
        if isinstance(block.shortcut, PadShortcut):
            cin, cout = block.conv1.in_channels, block.conv2.out_channels
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=block.shortcut.stride, bias=False),
                                            nn.BatchNorm2d(cout))
            nn.init.kaiming_normal_(self.downsample[0].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def option_b_resnet20(pretrained: Path | None) -> nn.Module:
    model = resnet20()
    if pretrained is not None:
        load_pretrained(model, pretrained)
    for stage in (model.layer1, model.layer2, model.layer3):
        for i, block in enumerate(stage):
            stage[i] = DownsampleBlock(block)
    return model


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    padded = F.pad(images, (4, 4, 4, 4))
    n = images.shape[0]
    dx, dy = torch.randint(0, 9, (2, n), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32] for i in range(n)])
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def finetune(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, steps: int, batch: int = 128,
             seed: int = 0) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    losses = []
    model.train()
    for step in range(steps):
        pick = torch.randint(0, len(inputs), (batch,), generator=generator)
        loss = F.cross_entropy(model(_augment(inputs[pick], generator)), labels[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0:
            log.info("fine-tune step %d: loss %.3f", step, losses[-1])
    model.eval()
    return losses


def downsample_study(args, data, inputs, labels) -> dict:
    train_images, train_labels = _images(data, "train", args.train_images)
    train_inputs = data.eval_transform()(train_images)
    torch.manual_seed(0)
    model = option_b_resnet20(AKAMASTER_RESNET20)
    start_top1 = float((_logits(model, inputs).argmax(1) == labels).float().mean())
    start = time.perf_counter()
    losses = finetune(model, train_inputs, train_labels, args.finetune_steps)
    seconds = time.perf_counter() - start
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    float_logits = _logits(model, inputs)
    names = [n for n in state if "downsample.0" in n]

    def build():
        return option_b_resnet20(None)

    out = {"pretrained": str(AKAMASTER_RESNET20.name), "finetune_steps": args.finetune_steps,
           "train_images": len(train_inputs), "finetune_seconds": seconds,
           "final_loss": losses[-1] if losses else None,
           "top1_before_finetune": start_top1, "downsample_tensors": names,
           "downsample_values": sum(state[n].numel() for n in names), "cases": []}
    excluded = ecqx.quantize(state, method="ecq", bits=4, lam=0.05, exclude=("downsample",))
    downsample_8bit = ecqx.quantize(state, method="ecq", bits=8, lam=0.05, include="downsample", exclude=())
    cases = (("downsample excluded", excluded),
             ("downsample included, 4 bit", ecqx.quantize(state, method="ecq", bits=4, lam=0.05, exclude=())),
             ("downsample included, 8 bit", {**excluded, **downsample_8bit}))
    for label, quantized in cases:
        for variant, options in (("qp -75 (before)", None), (f"auto, {DEFAULT_NONWEIGHT_BITS} bits", {})):
            data_bytes = (_before_stream(state, quantized) if options is None
                          else encode_state_dict(state, quantized, **options))
            levels = decode_levels(data_bytes)
            decoded = decode_state_dict(data_bytes)
            model = build()
            model.load_state_dict(decoded, strict=True)
            logits = _logits(model, inputs)
            out["cases"].append({
                "case": label, "variant": variant, "file_bytes": len(data_bytes),
                "downsample_bytes": sum(levels[n].unit_bytes for n in names),
                "downsample_bits_per_value": 8.0 * sum(levels[n].unit_bytes for n in names)
                / out["downsample_values"],
                "top1_quantized": float((logits.argmax(1) == labels).float().mean()),
                "agreement_with_float": float((logits.argmax(1) == float_logits.argmax(1)).float().mean()),
            })
            log.info("%s, %s: %s", label, variant, out["cases"][-1])
    out["top1_float"] = float((float_logits.argmax(1) == labels).float().mean())
    return out


# ------------------------------------------------------------------------------------------------ report
def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"Command: `{env['command']}`", "",
             f"Machine: {env['machine']}, {env['cpu_count']} CPUs, {env['torch_threads']} torch threads; "
             f"Python {env['python']}, torch {env['torch']}, ecqx {env['ecqx']}; {env['date_utc']} UTC.", "",
             f"Test images: {result['test_images']} evenly spaced over the CIFAR-10 JPEG (q75) test split. "
             "Weights: 4-bit ECQ, Λ = 0.05 (`ecqx.quantize`). 1-D bytes are whole units (header with the "
             "tensor name + payload) against 4 bytes per value; payload = CABAC or raw bytes only.", ""]
    for name, model in result["models"].items():
        lines += [f"## {name} (float top-1 {model['top1_float']:.2%})", "",
                  "| variant | file bytes | 1-D bytes (× float32) | 1-D payload × float32 | 1-D bits/value "
                  "| 1-D tensors > 32 bits (payload > 32) | units > raw float32 unit | raw units "
                  "| max err / max\\|x\\| | top-1, 4-bit weights "
                  "| top-1, float weights | agreement with float model | logit RMS error |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in model["variants"]:
            lines.append(
                f"| {r['variant']} | {r['file_bytes']:,} | {r['one_d_unit_bytes']:,} "
                f"({r['one_d_unit_ratio']:.3f}) | {r['one_d_payload_ratio']:.3f} "
                f"| {r['one_d_bits_per_value']:.1f} | {r['one_d_over_32_bits']} of {r['one_d_tensors']} "
                f"({r['one_d_payload_over_32_bits']}) | {r['units_larger_than_raw']} "
                f"| {r['raw_units']} | {r['max_error_over_max_abs']:.2e} | {r['top1_quantized']:.2%} "
                f"| {r['top1_float_weights']:.2%} "
                f"| {r['agreement_float_weights']:.2%} | {r['logit_rms_error_float_weights']:.2e} |")
        first = model["variants"][0]
        lines += ["", f"{first['one_d_tensors']} 1-D tensors, {first['one_d_values']:,} values "
                  f"({first['one_d_float32_bytes']:,} bytes as float32); topology unit (metadata) "
                  f"{model['variants'][1]['topology_unit_bytes']:,} bytes now, "
                  f"{first['topology_unit_bytes']:,} before.", ""]
    study = result.get("downsample_study")
    if study:
        lines += [f"## Downsample study: option-B ResNet-20 ({study['pretrained']} + 1×1 downsample convs, "
                  f"{study['finetune_steps']} fine-tuning steps on {study['train_images']} training images, "
                  f"{study['finetune_seconds']:.0f} s)", "",
                  f"Top-1: {study['top1_before_finetune']:.2%} before fine-tuning (random 1×1 convs), "
                  f"{study['top1_float']:.2%} after (float). Downsample convolutions: "
                  f"{len(study['downsample_tensors'])} tensors, {study['downsample_values']:,} weights.", "",
                  "| case | non-weight coding | file bytes | downsample bytes | downsample bits/weight "
                  "| top-1 | agreement with float model |", "|---|---|---|---|---|---|---|"]
        for c in study["cases"]:
            lines.append(f"| {c['case']} | {c['variant']} | {c['file_bytes']:,} | {c['downsample_bytes']:,} "
                         f"| {c['downsample_bits_per_value']:.2f} | {c['top1_quantized']:.2%} "
                         f"| {c['agreement_with_float']:.2%} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    data = CIFAR10JPEGDataModule(root=str(args.data))
    images, labels = _images(data, "test", args.limit)
    inputs = data.eval_transform()(images)
    result = {"environment": environment(args.threads), "test_images": len(labels),
              "default_nonweight_bits": DEFAULT_NONWEIGHT_BITS, "models": {}}
    for name in args.models:
        build, path = MODELS[name]
        state = load_pretrained(build(), path).state_dict()
        quantized = ecqx.quantize(state, method="ecq", bits=4, lam=0.05)
        result["models"][name] = {"weights": str(path.relative_to(SHARED)),
                                  **evaluate_variants(build, state, quantized, inputs, labels, args.bits)}
    if args.finetune_steps > 0:
        result["downsample_study"] = downsample_study(args, data, inputs, labels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    log.info("%s", table)


if __name__ == "__main__":
    main()
