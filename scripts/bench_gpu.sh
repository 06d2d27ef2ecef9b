#!/usr/bin/env bash
# GPU benchmark of the extraction engines, for a machine with an NVIDIA GPU (NOT yet run: written on a
# CPU-only machine). One short script: install, build 5,000 real images, print images/s for each
# precision and the decode rate alone (benchmarks/bench_gpu.py, whose --smoke the slow suite runs
# on CPU so it cannot rot); with 2+ GPUs, one GPU against all of them
# (benchmarks/bench_devices.py, 8,000 images).
#
#   bash scripts/bench_gpu.sh            # from the repository root; ~5-10 minutes
#
# Offline machines: carry .cache/fashion-mnist and a wheelhouse, or set SKIP_INSTALL=1 to use an
# existing .venv-gpu. Real images: 4,000 Fashion-MNIST PNGs (train subset, from .cache/fashion-mnist, fetched by
# scripts/fetch_fashion_mnist.sh) and 1,000 480x360 JPEG crops of Debian's mate-backgrounds photographs
# (benchmarks/photos.py).
# On GPU, TensorFlow's float32 engine runs on the GPU and bfloat16 uses TF's own bf16 rewrite on
# supported GPUs; the int8 engine (LiteRT/XNNPACK) always runs on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
python3 -m venv .venv-gpu
.venv-gpu/bin/python -m pip install --quiet --upgrade pip
.venv-gpu/bin/python -m pip install --quiet 'tensorflow[and-cuda]>=2.16' -e '.[test,litert]'
fi
[ -f .cache/fashion-mnist/t10k-images-idx3-ubyte.gz ] || bash scripts/fetch_fashion_mnist.sh .cache/fashion-mnist
nvidia-smi --query-gpu=name,memory.total --format=csv
PYTHONPATH=$PWD .venv-gpu/bin/python -m benchmarks.bench_gpu --images 5000
# Several GPUs (--extraction_devices): GPU:0 alone against every GPU, float32, on real images.
if [ "$(nvidia-smi --list-gpus | wc -l)" -ge 2 ]; then
.venv-gpu/bin/python -m benchmarks.bench_devices --fashion 400 --photos 4000 --rounds 2
fi
