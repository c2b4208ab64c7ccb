#!/usr/bin/env bash
# GPU throughput benchmark (bench/gpu.py) for one H100/H200, a few minutes including set-up.
# The GPU machine has torch but not diffusers/open_clip/pydantic: they come as wheels in
# .whl/ (made beforehand: see bench/README.md), installed to /tmp/site.
# Writes $OUT/gpu-<chip>.json when OUT is set (a folder copied back from the GPU machine),
# else bench/results/.
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ! python3 -c "import diffusers, open_clip, pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --ignore-requires-python --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,power.limit --format=csv,noheader
chip=$(python3 -c "import torch; n = torch.cuda.get_device_name(); print('h200' if 'H200' in n else 'h100' if 'H100' in n else 'gpu')")
python3 -m bench.gpu --out "${OUT:-bench/results}/gpu-$chip.json" "$@"
