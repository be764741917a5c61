#!/usr/bin/env bash
# The checks that need a GPU, as one short script (about 5 minutes on one H100):
#   1. extraction throughput on CUDA, float32 and --half (float16), against the benchmark loop;
#   2. training under torchrun on CUDA (NCCL + SyncBatchNorm path), one process per visible GPU,
#      on a small generated dataset, then extract with its best.pth.
# Usage: bash benchmarks/gpu_check.sh [OUT]   (OUT default: /tmp/vprkit-gpu-check; with $OUT set,
#        as on the lent device machine, the logs go there)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/vprkit-gpu-check}}
mkdir -p "$out"
python -c "import vprkit" 2>/dev/null || {
  python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
  python -m pip install --quiet -e ".[test]"
}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
gpus=$(python -c "import torch; print(torch.cuda.device_count())")

python benchmarks/bench_extract.py --device cuda --images 256 --size 480 640 \
  --aggregation netvlad --batch-size 32 --workers 8 --half --repeat 2 2>&1 | tee "$out/extract.txt"

python - "$out/data" <<'EOF'
import sys
from vprkit.synthetic import generate_dataset
generate_dataset(sys.argv[1], {"train": (200, 80), "val": (60, 30), "test": (60, 30)},
                 size=(120, 160), seed=0)
EOF
rm -rf "$out/run"
torchrun --standalone --nproc_per_node "$gpus" -m vprkit.cli train "$out/data" --out "$out/run" \
  --weights none --resize 120 160 --queries-per-epoch 40 --cache-refresh 20 --epochs 2 \
  --batch-size "$((2 * gpus))" --device cuda --workers 4 --quiet 2>&1 | tee "$out/train.txt"
vprkit extract "$out/data" -o "$out/test.h5" --checkpoint "$out/run/best.pth" --resize 120 160 \
  --device cuda --overwrite --quiet 2>&1 | tee "$out/extract_trained.txt"
vprkit evaluate "$out/test.h5" 2>&1 | tee "$out/evaluate.txt"
echo "gpu check done: logs in $out"
