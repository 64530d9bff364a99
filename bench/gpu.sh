#!/usr/bin/env bash
# Full fine-tuning speed of tunesmith's loop on one GPU (bf16 autocast, fp32 master weights), on
# random-weight models of the SmolLM2-135M and Llama-3.2-1B shapes. For a session lent a GPU:
#
#   bash bench/gpu.sh            # ~5 minutes on an H200; results in $OUT (or ./bench-gpu-out)
#
# Anchors on one H200: TRL 1.16 packed 18.5k tokens/s (135M) and 11.2k (1B); a plain dense HF
# training step 169k (21 % MFU) and 51k (42 % MFU). Targets: 150k and 45k real tokens/s.
# Uses the machine's own torch/transformers/peft/accelerate; tunesmith runs from src/ (no install).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench-gpu-out}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1 TOKENIZERS_PARALLELISM=false
py=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
$py -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)" | tee -a "$out/gpu.txt"

# 1. correctness first: a packed example's logits equal its logits alone on this GPU
timeout 120 $py bench/gpu_full.py --check 2>&1 | tee "$out/check.txt" || echo "packing check FAILED (see check.txt)"

# 2. speed: 135M shape, then 1B shape
timeout 240 $py bench/gpu_full.py --shape 135m --json "$out/135m.json" 2>&1 | grep -v "step/s" | tail -n 8 | tee "$out/135m.txt"
timeout 300 $py bench/gpu_full.py --shape 1b --json "$out/1b.json" 2>&1 | grep -v "step/s" | tail -n 8 | tee "$out/1b.txt"

echo
echo "| shape | tokens/s | MFU | target | peak GB |"
echo "| --- | ---: | ---: | ---: | ---: |"
for s in 135m 1b; do
  [ -f "$out/$s.json" ] && $py - "$out/$s.json" "$s" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); target = {"135m": 150_000, "1b": 45_000}[sys.argv[2]]
print(f"| {r['shape']} | {r['tokens_per_s']:,} | {100 * r['mfu']:.1f} % | {target:,} | {r['peak_memory_gb']} |")
PY
done
