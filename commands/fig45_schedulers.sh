#!/usr/bin/env bash
# Figures 4 and 5 of the paper: AdamW with and without the Plateau scheduler, ASGD with and
# without Cosine annealing, at the paper's best grid values (table III: AdamW lr 1e-4 wd 1e-3,
# ASGD lr 0.1 wd 1e-3). Each run's RUN/curves.png plots its loss and validation recalls per epoch;
# the final Recall@N on nordland test is one table (OUT/fig45.json).
#
# Usage: commands/fig45_schedulers.sh [DATA [OUT]]   (OUT default: results/fig45)
# Environment [defaults]: BACKBONE [efficientnet_lite0] WEIGHTS [imagenet] AGGREGATION [gem]
#   QUERIES [500] EPOCHS [3] WORKERS [2]
set -euo pipefail
default_out=results/fig45
EPOCHS=${EPOCHS:-3}
# shellcheck source=commands/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

train_and_test adamw --optimizer adamw --lr 0.0001 --weight-decay 0.001
train_and_test adamw_plateau --optimizer adamw --lr 0.0001 --weight-decay 0.001 --scheduler plateau
train_and_test asgd --optimizer asgd --lr 0.1 --weight-decay 0.001
train_and_test asgd_cosine --optimizer asgd --lr 0.1 --weight-decay 0.001 --scheduler cosine
run vprkit evaluate "${trained[@]}" --json "$out/fig45.json"
