#!/usr/bin/env bash
# The whole pipeline as far as it exists, small and on the CPU. Results land in runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=runs/demo
mkdir -p "$OUT"
SCEN5=../shared/data/deepsense/scenario5
if [ -d "$SCEN5" ]; then
  echo "[demo] real DeepSense 6G scenario 5 -> WebDataset shards (official train/val/test CSVs)"
  $PY -m shards.write --source deepsense --root "$SCEN5" --out "$OUT/shards/scenario5" --split official
  $PY -m shards.summary "$OUT/shards/scenario5"
else
  echo "[demo] ../shared/data/deepsense/scenario5 not found: skipping the real-data step"
fi
echo "[demo] done: results under $OUT/"
