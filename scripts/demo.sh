#!/usr/bin/env bash
# The whole pipeline, small and on the CPU. Results land in runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=runs/demo
mkdir -p "$OUT"
echo "[demo] human twin (MM-Fi layout): the cached default dataset, built once"
HUMANS=$($PY -m twin default humans | tail -n 1)
$PY -m twin report "$HUMANS" --out "$OUT/twin_humans_report"
# the split of the pipeline's own twin shards (pretrain/data.py, TWIN_SPLITS): the same held-out subjects
FRACTIONS=$($PY -c 'from pretrain.data import TWIN_SPLITS; print(",".join(map(str, TWIN_SPLITS["humans"]["fractions"])))')
$PY -m shards.write --source mmfi --root "$HUMANS" --out "$OUT/shards/humans" --split subject --fractions "$FRACTIONS"
$PY -m shards.summary "$OUT/shards/humans" > "$OUT/shards/humans/summary.json"
echo "[demo] human shards: $(grep -c '' "$OUT/shards/humans/summary.json") summary lines in $OUT/shards/humans/summary.json"
echo "[demo] vehicle twin (DeepSense layout): the cached default dataset, ray-traced once (≈ 8 min the first time)"
VEHICLES=$($PY -m twin default vehicles | tail -n 1)
$PY -m twin report "$VEHICLES" --out "$OUT/twin_vehicles_report"
echo "[demo] stage one: binding encoders to the wireless anchor (DeepSpeed, CPU)"
rm -rf "$OUT/pretrain"
$PY pretrain/run.py --preset demo --out "$OUT/pretrain" --no-progress > "$OUT/pretrain.log" 2>&1 \
  || { tail -n 40 "$OUT/pretrain.log"; exit 1; }
echo "[demo] stage one retrieval (validation): $(grep -o '"val/[a-z_]*->[a-z]*/[a-z]*R@1": [0-9.]*' "$OUT/pretrain/result.json" | tr '\n' ' ')"
echo "[demo] stage two: gated fusion + SmolLM2-135M (first 4 layers, LoRA) on beam, HAR, HPE and blockage"
rm -rf "$OUT/finetune"
$PY finetune/run.py --tasks all --preset demo --encoders "$OUT/pretrain" --out "$OUT/finetune" --no-progress \
  > "$OUT/finetune.log" 2>&1 || { tail -n 40 "$OUT/finetune.log"; exit 1; }
$PY - "$OUT/finetune/result.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
rows = [("beam top-1", "beam/top1", "beam/baseline_accuracy"), ("HAR top-1", "har/top1", "har/baseline_accuracy"),
        ("HPE MPJPE (mm, lower is better)", "hpe/mpjpe_mm", "hpe/baseline_mpjpe_mm"),
        ("HPE PA-MPJPE (mm, lower is better)", "hpe/pa_mpjpe_mm", "hpe/baseline_pa_mpjpe_mm"),
        ("blockage accuracy", "blockage/accuracy", "blockage/baseline_accuracy"),
        ("blockage balanced accuracy", "blockage/balanced_accuracy", 0.5)]  # 0.5: any constant decision
nan = float("nan")
for name, k, b in rows:
    d = k + "_minus_baseline"  # with its 95 % interval from a bootstrap over sequences (finetune/significance.py)
    lo, hi, n = r.get(d + "_ci_low", nan), r.get(d + "_ci_high", nan), r.get(k.split("/")[0] + "/sequences", nan)
    ci = f"95 % CI {lo:+.3f}, {hi:+.3f}" if lo == lo else "no interval: too few"
    base = b if isinstance(b, float) else r.get(b, nan)
    print(f"[demo] {name}: model {r.get(k, nan):.3f}  trivial baseline {base:.3f}  difference "
          f"{r.get(d, nan):+.3f} [{ci}; {n:.0f} sequences]")
if "blockage/persistence_minus_baseline" in r:  # frame t's own state as the answer: the room the split leaves
    d = "blockage/persistence_minus_baseline"
    print(f"[demo] blockage persistence reference (frame t's state, not given to the model): "
          f"{r['blockage/persistence_accuracy']:.3f}  difference to the baseline {r[d]:+.3f} "
          f"[95 % CI {r[d + '_ci_low']:+.3f}, {r[d + '_ci_high']:+.3f}]")
PYEOF
echo "[demo] evaluation: Tables I/II, zero-shot, few-shot, real scenario 5, figures -> reports/"
rm -rf "$OUT/evaluation"
$PY evaluation/run.py all --pretrain "$OUT/pretrain" --finetune "$OUT/finetune" --work "$OUT/evaluation" \
  --out reports --no-progress > "$OUT/evaluation.log" 2>&1 || { tail -n 40 "$OUT/evaluation.log"; exit 1; }
grep -A 12 "## Table I:" reports/tables.md || true
SCEN5=../shared/data/deepsense/scenario5
if [ -d "$SCEN5" ]; then
  echo "[demo] real DeepSense 6G scenario 5 -> WebDataset shards (official train/val/test CSVs)"
  $PY -m shards.write --source deepsense --root "$SCEN5" --out "$OUT/shards/scenario5" --split official
  $PY -m shards.summary "$OUT/shards/scenario5" > "$OUT/shards/scenario5/summary.json"
else
  echo "[demo] ../shared/data/deepsense/scenario5 not found: skipping the real-data step"
fi
echo "[demo] done: results under $OUT/"
