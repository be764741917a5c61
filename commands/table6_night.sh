#!/usr/bin/env bash
# Table VI of the paper: night-robustness augmentation of training queries (presets night:M1..M6)
# against no augmentation. Trained on nordland train (summer database, winter queries), tested on
# nordland test; Recall@1/5/10/20 in one table (OUT/table6.json).
#
# Usage: commands/table6_night.sh [DATA [OUT]]   (OUT default: results/table6)
# Environment [defaults]: BACKBONE [efficientnet_lite0] WEIGHTS [imagenet] AGGREGATION [gem]
#   QUERIES [500] queries per epoch, EPOCHS [2], WORKERS [2], TRAIN_ARGS [--lr 1e-4]
# Each run is a folder OUT/<name> with its log, metrics, curves.png and best.pth; a finished run
# is not trained again.
set -euo pipefail
default_out=results/table6
# shellcheck source=commands/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"
augmentation_table night table6
