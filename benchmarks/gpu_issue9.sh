#!/usr/bin/env bash
# Issue 9's accelerator run, as one script: benchmarks/bench_step.py on cuda, then the four CIFAR-10 ResNet-20
# proof runs (full precision, ECQ, ECQx, EC2T; benchmarks/proof_runs.py, the recipes' full 20 epochs, test
# split) in parallel on the one GPU.
#
#   bash benchmarks/gpu_issue9.sh SHARED_DIR OUT_DIR [--limit]
#
# SHARED_DIR holds data/cifar10-jpeg and models/resnet20.pt. OUT_DIR receives check_exp_monotone.txt,
# bench_step_<device>.{json,md},
# proof_runs/ (one JSON per run and summary.md, logs) and timing.txt. --limit: a short bench_step run and
# 1-epoch proof runs on 256 samples, to check the script on a CPU before spending device time.
set -euo pipefail
SHARED=$(realpath "$1"); OUT=$(realpath -m "$2"); LIMIT=${3:-}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT/proof_runs"
DEVICE=cpu
if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then DEVICE=cuda; fi
echo "device: $DEVICE" | tee "$OUT/timing.txt"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

BENCH=(--device "$DEVICE" --out "$OUT/bench_step")
PROOF=()
if [ "$LIMIT" = "--limit" ]; then
  BENCH+=(--limit --models resnet20)
  PROOF=(--epochs 1 --limit 256)
fi
# the grouped ECQx β search is exact only if float32 exp is monotone on this device (checked on CPUs)
python "$REPO/benchmarks/check_exp_monotone.py" --device "$DEVICE" > "$OUT/check_exp_monotone.txt" 2>&1 \
  || echo "check_exp_monotone FAILED (see check_exp_monotone.txt)" | tee -a "$OUT/timing.txt"
start=$(date +%s)
python "$REPO/benchmarks/bench_step.py" "${BENCH[@]}" > "$OUT/bench_step.log" 2>&1 \
  || echo "bench_step FAILED (see bench_step.log)" | tee -a "$OUT/timing.txt"
echo "bench_step: $(( $(date +%s) - start )) s" | tee -a "$OUT/timing.txt"

start=$(date +%s)
for experiment in cifar10_fp cifar10_ecq4 cifar10_ecqx4 cifar10_ec2t; do
  (
    t0=$(date +%s)
    if ECQX_SHARED="$SHARED" python "$REPO/benchmarks/proof_runs.py" --experiment "$experiment" \
         --out "$OUT/proof_runs" --results "$OUT/proof_runs" --threads 2 "${PROOF[@]}" > "$OUT/proof_runs/$experiment.log" 2>&1; then
      echo "$experiment: $(( $(date +%s) - t0 )) s" >> "$OUT/timing.txt"
    else
      echo "$experiment: FAILED after $(( $(date +%s) - t0 )) s" >> "$OUT/timing.txt"
    fi
  ) &
done
wait
echo "proof runs (4 in parallel): $(( $(date +%s) - start )) s" | tee -a "$OUT/timing.txt"
python "$REPO/benchmarks/proof_runs.py" --experiment summary --out "$OUT/proof_runs" --results "$OUT/proof_runs" >> "$OUT/timing.txt" 2>&1 || true
cat "$OUT/timing.txt"
