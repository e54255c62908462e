#!/usr/bin/env bash
# Real-size GPU benchmark (random weights, bf16). Usage: bench/gpu.sh [OUT.json] [extra bench/gpu.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results/gpu-$(date +%Y%m%d).json}
shift || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
PYTHONUNBUFFERED=1 python3 bench/gpu.py --json "$out" "$@"
