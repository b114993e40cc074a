#!/usr/bin/env bash
# One device call: FLUX.1-dev shapes at full size (transformer 12 B, T5-XXL, CLIP-L, VAE), random weights, bf16,
# 1024×1024, 28 steps — stock FluxPipeline vs LongCLIPFluxPipeline with the same components: median wall time, ratio,
# peak CUDA memory. Needs one GPU with ≥ 48 GB (about 36 GB of bf16 weights, plus activations).
#
# Run from the repository root on the device machine (a tool's `run` call, or any CUDA box):
#   bash benchmarks/gpu_flux.sh            # build, 1 warm-up + 2 timed runs per pipeline (never run yet; budget ≤ 10 min)
#   REPEATS=3 STEPS=28 SIZE=1024 bash benchmarks/gpu_flux.sh
# Writes the table to stdout and to ${OUT:-.}/bench_flux_gpu.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# The package maps pipelines/ under longclip_diffusion (pyproject.toml): install it without touching dependencies.
if ! "$PYTHON" -c "import longclip_diffusion.pipelines" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e . >/dev/null
fi
"$PYTHON" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
"$PYTHON" benchmarks/bench_flux.py --gpu --repeats "${REPEATS:-2}" --steps "${STEPS:-28}" --size "${SIZE:-1024}" \
    | tee "${OUT:-.}/bench_flux_gpu.txt"
