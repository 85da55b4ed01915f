"""``python finetune/export.py CHECKPOINT --out beam.pt2``: the beam-prediction path of a stage-two model
(encoders → gating → fusion → backbone → task attention → head) as a ``torch.export`` program, checked against
the eager model on real batches. The .pt2 file holds a graph and tensors (no pickled Python objects) and loads
with ``torch.export.load(path).module()``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

POINT_MODALITIES = ("radar", "lidar")


class BeamPredictor(nn.Module):
    """Beam logits (B, 64) from flat tensors: per input modality its data (and ``<m>_mask`` for clouds), and
    ``present`` (B, M) bool in the order of ``self.inputs``."""

    def __init__(self, model, max_points: int):
        super().__init__()
        self.model, self.max_points = model.eval(), max_points
        self.inputs = [m for m in model.specs["beam"].inputs if m in model.modalities]

    def forward(self, present: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        batch, i = {"present": {m: present[:, j] for j, m in enumerate(self.inputs)}}, 0
        for m in self.inputs:
            batch[m] = tensors[i]
            i += 1
            if m in POINT_MODALITIES:
                batch[m + "_mask"] = tensors[i]
                i += 1
        enc = {m: self.model.encoders[m](batch) for m in self.inputs}
        return self.model.task_forward("beam", batch, enc, slice(None))

    def flatten(self, batch: dict) -> tuple[torch.Tensor, ...]:
        """The positional inputs of :meth:`forward` from a collated batch."""
        out = [torch.stack([batch["present"][m] for m in self.inputs], 1)]
        for m in self.inputs:
            if m in POINT_MODALITIES:  # pad clouds to max_points: fixed shapes for the exported program
                pts, mask = batch[m][:, :self.max_points], batch[m + "_mask"][:, :self.max_points]
                pad = self.max_points - pts.shape[1]
                out += [torch.nn.functional.pad(pts, (0, 0, 0, pad)), torch.nn.functional.pad(mask, (0, pad))]
            else:
                out.append(batch[m])
        return tuple(out)


def example_batches(cfg, dirs: list[Path], batch_size: int, n: int = 2) -> list[dict]:
    from pretrain.train import stream_config
    from shards.stream import make_loader
    out = []
    for batch in make_loader(dirs, stream_config(cfg, batch_size, 0, False, cfg.model.binding.modalities)):
        out.append(batch)
        if len(out) >= n:
            break
    return out


def export(predictor: BeamPredictor, example: tuple[torch.Tensor, ...]):
    """torch.export program of ``predictor`` for the example's shapes (batch size; clouds padded to
    ``max_points`` by :meth:`BeamPredictor.flatten`, so one program serves every batch of that size)."""
    with torch.no_grad():
        return torch.export.export(predictor, example, strict=False)


def check(predictor: BeamPredictor, program, batches: list[dict], atol: float = 1e-4) -> float:
    """Largest absolute difference between eager and exported logits over ``batches`` (raises above atol)."""
    worst = 0.0
    module = program.module()
    with torch.no_grad():
        for b in batches:
            x = predictor.flatten(b)
            worst = max(worst, float((predictor(*x) - module(*x)).abs().max()))
    if worst > atol:
        raise AssertionError(f"exported model differs from eager by {worst:.2e} (> {atol})")
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="finetune/export.py", description=__doc__)
    p.add_argument("checkpoint", type=Path, help="stage-two checkpoint (or run folder: latest)")
    p.add_argument("--shards", nargs="*", type=Path, default=None, help="folders for example batches (default: val)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("beam.pt2"))
    a = p.parse_args(argv)
    from airbind.checkpoint import latest
    from finetune.train import load_model
    from pretrain.data import resolve_data, split_dirs
    ckpt = a.checkpoint if (a.checkpoint / "model.safetensors").is_file() else latest(a.checkpoint / "checkpoints")
    model, cfg = load_model(ckpt)
    dirs = a.shards or split_dirs(resolve_data(cfg.data), "val")
    batches = example_batches(cfg, dirs, a.batch_size)
    predictor = BeamPredictor(model, cfg.max_points)
    program = export(predictor, predictor.flatten(batches[0]))
    worst = check(predictor, program, batches[:1])
    torch.export.save(program, a.out)
    print(f"wrote {a.out}: max |eager - exported| = {worst:.2e} on {a.batch_size} samples")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
