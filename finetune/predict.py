"""``python finetune/predict.py CHECKPOINT --shards DIR [DIR ...] --out predictions.jsonl``: predictions of
a stage-two model for any split, one JSON line per (sample, task)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def evaluate_checkpoint(checkpoint: Path, shards: list[Path], max_samples: int | None = None):
    """Metrics (with the trivial baselines from the checkpoint's training labels and the bootstrap intervals
    of the differences to them, finetune/significance.py) and per-task arrays
    (output, label, key, power) of a stage-two checkpoint on shard folders."""
    from airbind.checkpoint import load_state
    from finetune.significance import compare_to_baselines
    from finetune.train import baselines, evaluate, load_model
    model, cfg = load_model(checkpoint)
    metrics, arrays = evaluate(model, cfg, shards, max_samples)
    seen = load_state(Path(checkpoint) / "trainer_state").get("train_labels", {})
    seen = {t: [np.asarray(v) for v in vals] for t, vals in seen.items()}
    metrics.update(baselines(seen, arrays))
    metrics.update(compare_to_baselines(seen, arrays))
    return metrics, arrays


def predictions(checkpoint: Path, shards: list[Path], max_samples: int | None = None):
    """Yield one dict per (sample, task): key, task, prediction, label; last, the metrics of the split next to
    the trivial baselines from the checkpoint's training labels."""
    metrics, arrays = evaluate_checkpoint(checkpoint, shards, max_samples)
    for task, a in arrays.items():
        for i, key in enumerate(a["key"]):
            out, lab = a["output"][i], a["label"][i]
            if task == "beam":
                top = np.argsort(-out)[:5]
                pred = {"beam": int(top[0]), "top5": top.tolist()}
                truth = int(lab)
            elif task == "har":
                pred, truth = {"activity": int(out.argmax())}, int(lab)
            elif task == "hpe":
                pred, truth = {"keypoints": np.round(out.reshape(17, 3), 4).tolist()}, np.round(lab.reshape(17, 3), 4).tolist()
            else:  # the blockage output is the log-odds under the data's prior (the state head's mixture, or the
                # one-logit head's prior-corrected score): a probability, not a balanced score
                prob = float(1 / (1 + np.exp(-out[0])))
                pred, truth = {"blockage_probability": round(prob, 5), "blockage": int(prob >= 0.5)}, int(lab)
            yield {"key": str(key), "task": task, "prediction": pred, "label": truth}
    yield {"metrics": metrics}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="finetune/predict.py", description=__doc__)
    p.add_argument("checkpoint", type=Path, help="a stage-two checkpoint directory (or run folder: latest)")
    p.add_argument("--shards", nargs="+", type=Path, required=True, help="shard folders (e.g. OUT/test)")
    p.add_argument("--out", type=Path, default=Path("predictions.jsonl"))
    p.add_argument("--max-samples", type=int, default=None)
    a = p.parse_args(argv)
    from airbind.checkpoint import checkpoint_at
    ckpt = checkpoint_at(a.checkpoint, "stage-two")
    n = 0
    with a.out.open("w") as fh:
        for row in predictions(ckpt, a.shards, a.max_samples):
            fh.write(json.dumps(row) + "\n")
            n += "key" in row
    print(json.dumps(row["metrics"], indent=1))
    print(f"wrote {n} predictions to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
