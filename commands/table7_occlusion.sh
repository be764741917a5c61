#!/usr/bin/env bash
# Table VII of the paper: perspective and occlusion augmentation of training queries (presets
# occlusion:M1..M6: RandomPerspective + RandomErasing) against no augmentation. Trained on
# nordland train (summer database, winter queries), tested on nordland test; Recall@1/5/10/20 in
# one table (OUT/table7.json).
#
# Usage: commands/table7_occlusion.sh [DATA [OUT]]   (OUT default: results/table7)
# Environment [defaults]: BACKBONE [efficientnet_lite0] WEIGHTS [imagenet] AGGREGATION [gem]
#   QUERIES [500] queries per epoch, EPOCHS [2], WORKERS [2], TRAIN_ARGS [--lr 1e-4]
# Each run is a folder OUT/<name> with its log, metrics, curves.png and best.pth; a finished run
# is not trained again.
set -euo pipefail
default_out=results/table7
# shellcheck source=commands/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"
augmentation_table occlusion table7
