#!/usr/bin/env bash
# Tables II and III of the paper: a learning-rate / weight-decay grid for the ASGD and AdamW
# optimisers against the benchmark's Adam (lr 1e-5). Trained on nordland train (validation on
# val), tested on nordland test; one Recall@N table (OUT/table2.json). Table III is its best row
# per optimiser.
#
# Usage: commands/table2_optimizers.sh [DATA [OUT]]   (OUT default: results/table2)
# Environment [defaults]: BACKBONE [efficientnet_lite0] WEIGHTS [imagenet] AGGREGATION [gem]
#   QUERIES [500] EPOCHS [2] WORKERS [2]
#   ASGD_LRS ["0.01 0.1"]  ADAMW_LRS ["0.00001 0.0001"]  WDS ["0 0.001"]   (the paper's grid is
#   lr 1e-5..0.1 and wd 0..0.1: set these for a GPU server)
set -euo pipefail
default_out=results/table2
# shellcheck source=commands/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

train_and_test vanilla_adam --optimizer adam --lr 0.00001
for lr in ${ASGD_LRS:-0.01 0.1}; do
  for wd in ${WDS:-0 0.001}; do
    train_and_test "asgd_lr${lr}_wd${wd}" --optimizer asgd --lr "$lr" --weight-decay "$wd"
  done
done
for lr in ${ADAMW_LRS:-0.00001 0.0001}; do
  for wd in ${WDS:-0 0.001}; do
    train_and_test "adamw_lr${lr}_wd${wd}" --optimizer adamw --lr "$lr" --weight-decay "$wd"
  done
done
run vprkit evaluate "${trained[@]}" --json "$out/table2.json"
