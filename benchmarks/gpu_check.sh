#!/usr/bin/env bash
# shellcheck disable=SC2317  # the section functions are called indirectly, through bash -c
# The checks that need a GPU (issue 16), as one short script: about 4 to 5 minutes on one H100 or
# H200, each section capped by a timeout so that the whole stays under 8 minutes:
#   env      GPU, torch, CUDA and faiss (GPU support or not);
#   tests    tests/test_search_torch.py, whose "cuda" cases (torch search and k-means against
#            faiss-cpu, faiss GPU index) run only where CUDA is;
#   extract  images/s of extraction at 480x640, GeM and NetVLAD, float32 and --half (float16),
#            next to the benchmark's loop (benchmarks/bench_extract.py; NetVLAD's k-means runs
#            on the GPU, untimed);
#   search   exact search queries/s, faiss-cpu against the torch path on the CPU and the GPU,
#            100000 x 256 and 20000 x 4096 with 1000 queries, same results checked
#            (benchmarks/bench_search.py);
#   train    vprkit train under torchrun (one process per GPU; NCCL where there are several),
#            two steps, then extract with its best.pth and evaluate on the GPU (exact, and
#            --index, which notes when faiss has no GPU support);
#   ddp      DistributedDataParallel + SyncBatchNorm on ONE GPU under torchrun (NCCL, world size
#            1; vprkit train itself runs one process as a plain run): two steps, which must
#            equal the same two steps without DDP.
# A failing section is marked FAILED and the others still run; the summary at the end (and
# $OUT/summary.txt) gathers every figure; the exit status is 1 if any section failed.
#
# Usage: bash benchmarks/gpu_check.sh [OUT]   (OUT default: $OUT, else /tmp/vprkit-gpu-check)
#        VPRKIT_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh /tmp/dry   (a dry run of every
#        command on the CPU with tiny sizes, to check the commands and options, not the figures)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/vprkit-gpu-check}}
device=${VPRKIT_CHECK_DEVICE:-cuda}
mkdir -p "$out"
out=$(cd "$out" && pwd)
python -c "import vprkit" 2>/dev/null || {
  python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
  python -m pip install --quiet -e ".[test]"
}

if [ "$device" = cpu ]; then  # dry run: the same commands, tiny sizes
  images=16; height=120; width=160; batch=4; workers=2; repeat=1
  search_sizes="2000x64 1000x512"; queries=50; search_devices=cpu; gpus=1
  slack=5  # a CPU is slower: the timeouts are for the GPU
else
  images=256; height=480; width=640; batch=32; workers=8; repeat=2
  search_sizes="100000x256 20000x4096"; queries=1000; search_devices=cpu,cuda
  gpus=$(python -c "import torch; print(max(1, torch.cuda.device_count()))")
  slack=1
fi
export out device images height width batch workers repeat gpus
: > "$out/sections.txt"
failed=0

# section NAME SECONDS COMMAND...: runs COMMAND with its output in $out/NAME.log (and on the
# screen), at most SECONDS; records the outcome and time in $out/sections.txt
section() {
  local name=$1 limit=$(($2 * slack)) start=$SECONDS rc=0
  shift 2
  echo "=== $name: $*"
  # a subshell that has the functions below; timeout ends it and everything it started
  timeout --kill-after=10 "$limit" bash -euo pipefail -c '"$@"' "$name" "$@" 2>&1 \
    | tee "$out/$name.log" || rc=$?
  local outcome=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    outcome="FAILED (over ${limit} s)"
  elif [ "$rc" -ne 0 ]; then
    outcome="FAILED (exit $rc)"
  fi
  if [ "$rc" -ne 0 ]; then
    failed=1
  fi
  printf '%-16s %-28s %4d s   %s\n' "$name" "$outcome" "$((SECONDS - start))" \
    "$out/$name.log" | tee -a "$out/sections.txt"
}

env_report() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
  python - <<'EOF'
import faiss, torch
from vprkit.search.index import faiss_has_gpu
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: "
      f"{torch.cuda.is_available()}, GPUs: {torch.cuda.device_count()}, NCCL: "
      f"{torch.cuda.nccl.version() if torch.cuda.is_available() else 'n/a'}")
print(f"faiss {faiss.__version__}, GPU support: {faiss_has_gpu()}")
EOF
}

extract_bench() {  # extract_bench AGGREGATION
  python benchmarks/bench_extract.py --device "$device" --images "$images" --size "$height" "$width" \
    --aggregation "$1" --batch-size "$batch" --workers "$workers" --half --repeat "$repeat"
}

train_check() {
  rm -rf "$out/data" "$out/run"
  python - "$out/data" <<'EOF'
import sys
from vprkit.data.synthetic import generate_dataset
generate_dataset(sys.argv[1], {"train": (200, 80), "val": (60, 30), "test": (60, 30)},
                 size=(120, 160), seed=0)
EOF
  # 8 queries per process in groups of 4: two training steps
  torchrun --standalone --nproc_per_node "$gpus" -m vprkit.cli train "$out/data" -o "$out/run" \
    --weights none --resize 120 160 --queries-per-epoch "$((8 * gpus))" \
    --cache-refresh "$((8 * gpus))" --epochs 1 --batch-size "$((4 * gpus))" --device "$device" \
    --workers 4 --quiet
  vprkit extract "$out/data" -o "$out/test.h5" --checkpoint "$out/run/best.pth" --resize 120 160 \
    --device "$device" --overwrite --quiet
  vprkit evaluate "$out/test.h5" --device "$device" --json "$out/evaluate_exact.json"
  vprkit evaluate "$out/test.h5" --device "$device" --index IVF4,Flat --nprobe 4 \
    --json "$out/evaluate_index.json"
  rm -rf "${out:?}/data" "${out:?}/test.h5"* "${out:?}/run/"*.pth  # keep the logs only
}

evaluations() {  # one line per evaluate --json file: search, Recall@N
  python - "$@" <<'EOF'
import json, sys
for path in sys.argv[1:]:
    for row in json.load(open(path)):
        recalls = ", ".join(f"R@{n} {v:.1f}" for n, v in row["recalls"].items())
        print(f"{row['file']} scale {row['scale']}, {row['search']}: {recalls}")
EOF
}

ddp_check() {
  torchrun --standalone --nproc_per_node 1 benchmarks/ddp_one_gpu.py --device "$device"
}
export -f env_report extract_bench train_check ddp_check

section env 60 env_report
section tests 150 python -m pytest -q -p no:cacheprovider tests/test_search_torch.py
section extract_gem 100 extract_bench gem
section extract_netvlad 120 extract_bench netvlad
# shellcheck disable=SC2086  # two sizes, split on purpose
section search 90 python benchmarks/bench_search.py --database $search_sizes \
  --queries "$queries" --devices "$search_devices"
section train 150 train_check
section ddp 60 ddp_check

{
  echo "################ summary ($out)"
  cat "$out/sections.txt"
  echo "---- env";     grep -E "^(torch|faiss) |, [0-9]+ MiB" "$out/env.log" || true
  echo "---- tests";   tail -n 1 "$out/tests.log" || true
  for agg in gem netvlad; do
    echo "---- extraction, $agg (images/s; float32 and --half)"
    sed -n '/Extraction throughput/,/└/p' "$out/extract_$agg.log" || true
    grep -E "^--half vs float32" "$out/extract_$agg.log" || true
  done
  echo "---- exact search (queries/s)"; sed -n '/exact search,/,/└/p' "$out/search.log" || true
  echo "---- training (torchrun, $gpus process(es)) and evaluation of its best.pth"
  grep -E "processes \(|^untrained|^epoch" "$out/train.log" || true
  evaluations "$out/evaluate_exact.json" "$out/evaluate_index.json" || true
  grep -E "faiss has no GPU|cannot put this index" "$out/train.log" || true
  echo "---- DDP on one GPU"; grep -E "^DDP" "$out/ddp.log" || true
} 2>/dev/null | tee "$out/summary.txt"
exit "$failed"
