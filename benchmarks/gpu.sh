#!/usr/bin/env bash
# The prepared GPU benchmark (issue #7): one run on one H100/H200 (sized, by estimate, for 5-8 minutes:
# four engine runs, two of them compiled, three paired with the plain MONAI loop, and two compiled inference
# models; not yet run on a GPU). Lower --train-steps / --infer-shape if it must fit less time.
#
# On the GPU machine, whose python3 has torch but not MONAI or pydantic, run from the repo root:
#   bash benchmarks/gpu.sh            # wheels from .whl/ (benchmarks/gpu_wheels.sh fetches them)
# It writes benchmarks/gpu.json (or $OUT/gpu.json where OUT is set); `make bench` then reports it
# in BENCHMARKS.md beside the CPU figures, naming the card.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import monai, pydantic" 2>/dev/null; then
  [ -d .whl ] || { echo "MONAI/pydantic missing and no .whl/: run benchmarks/gpu_wheels.sh first" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/medsegllm-site .whl/*.whl
  export PYTHONPATH="/tmp/medsegllm-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
out="${OUT:-benchmarks}"
nvidia-smi -L || true
python3 -m medsegllm.bench.gpu --params "${MEDSEGLLM_GPU_PARAMS:-configs/gpu.yaml}" --out "$out/gpu.json" "$@"
