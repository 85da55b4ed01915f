"""``python finetune/export.py CHECKPOINT --out beam.pt2`` (or ``--out beam.onnx``): the beam-prediction path
of a stage-two model (encoders → gating → fusion → backbone → task attention → head) as a ``torch.export``
program or an ONNX model for ONNX Runtime, checked against the eager model on real batches. Neither file holds
pickled Python objects: the .pt2 loads with ``torch.export.load(path).module()``, the .onnx with
:class:`OnnxBeamPredictor` (or any ONNX Runtime session). Both are exported for one batch size."""
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
        enc = self.model.normalise({m: self.model.encoders[m](batch) for m in self.inputs}, batch)
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


def to_onnx(program, path: Path, optimize: bool = True) -> Path:
    """Write the exported program as an ONNX model (torch's dynamo exporter) to ``path``. ``optimize`` runs
    onnxscript's graph optimiser (about 10 % faster in ONNX Runtime here, but minutes for a large graph)."""
    with torch.no_grad():
        onnx_program = torch.onnx.export(program, dynamo=True, optimize=optimize, verbose=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program.save(str(path))
    return path


class OnnxBeamPredictor:
    """ONNX Runtime (CPU, or CUDA when its provider is installed) session with :class:`BeamPredictor`'s
    positional interface: ``runner(*predictor.flatten(batch))`` → logits tensor."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.log_severity_level = 3  # errors only: not the constant-folding notes of every session
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # noqa: BLE001 — name the file; onnxruntime's own message says what is wrong
            raise ValueError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {e})") from e
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        if len(tensors) != len(self.names):
            raise ValueError(f"the ONNX model takes {len(self.names)} inputs, got {len(tensors)}")
        feed = {n: t.detach().cpu().numpy() for n, t in zip(self.names, tensors)}
        return torch.from_numpy(self.session.run(None, feed)[0])


def check(predictor: BeamPredictor, exported, batches: list[dict], atol: float = 1e-4) -> float:
    """Largest absolute difference between eager and exported logits over ``batches`` (raises above atol).
    ``exported``: a ``torch.export`` program or any callable with the predictor's inputs (ONNX Runtime)."""
    worst = 0.0
    module = exported.module() if hasattr(exported, "module") else exported
    with torch.no_grad():
        for b in batches:
            x = predictor.flatten(b)
            worst = max(worst, float((predictor(*x).cpu() - module(*x).cpu()).abs().max()))
    if worst > atol:
        raise AssertionError(f"exported model differs from eager by {worst:.2e} (> {atol})")
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="finetune/export.py", description=__doc__)
    p.add_argument("checkpoint", type=Path, help="stage-two checkpoint (or run folder: latest)")
    p.add_argument("--shards", nargs="*", type=Path, default=None, help="folders for example batches (default: val)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("beam.pt2"), help=".pt2 (torch.export) or .onnx (ONNX Runtime)")
    a = p.parse_args(argv)
    if a.out.suffix not in (".pt2", ".onnx"):
        p.error(f"--out {a.out}: the file name must end in .pt2 or .onnx")
    from airbind.checkpoint import checkpoint_at
    from finetune.train import load_model
    from pretrain.data import resolve_data, split_dirs
    ckpt = checkpoint_at(a.checkpoint, "stage-two")
    model, cfg = load_model(ckpt)
    dirs = a.shards or split_dirs(resolve_data(cfg.data), "val")
    batches = example_batches(cfg, dirs, a.batch_size)
    predictor = BeamPredictor(model, cfg.max_points)
    program = export(predictor, predictor.flatten(batches[0]))
    if a.out.suffix == ".onnx":  # written beside the target and moved there once it checks out
        partial = a.out.with_name(a.out.name + ".partial")
        try:
            worst = check(predictor, OnnxBeamPredictor(to_onnx(program, partial)), batches[:1])
            partial.replace(a.out)
        finally:
            partial.unlink(missing_ok=True)
    else:
        worst = check(predictor, program, batches[:1])
        torch.export.save(program, a.out)
    print(f"wrote {a.out}: max |eager - exported| = {worst:.2e} on {a.batch_size} samples")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
