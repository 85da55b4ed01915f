"""``python finetune/export.py CHECKPOINT --out beam.pt2`` (or ``--out beam.onnx``): the beam-prediction path
of a stage-two model (encoders → gating → fusion → backbone → task attention → head) as a ``torch.export``
program or an ONNX model for ONNX Runtime, checked against the eager model on real batches (``--int8``: the ONNX
model with the backbone's weights in int8, checked by its top-1 agreement with eager). Neither file holds
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
        device = next(self.model.parameters()).device
        return tuple(t.to(device) for t in out)


class CudaGraphPredictor:
    """A predictor captured once as a CUDA graph for fixed input shapes: each call copies its inputs into the
    captured buffers and replays every kernel with one launch, so Python's per-kernel launch cost (most of
    the batch-1 latency of a model this size on a GPU) is paid once, at capture. CUDA devices only.

    ``dtype`` (e.g. ``torch.bfloat16``) captures the model under CUDA autocast to that precision, the one stage
    one and two train in on a GPU; its logits are returned in float32 and differ from eager's (measure them).
    """

    def __init__(self, predictor: nn.Module, example: tuple[torch.Tensor, ...], warmup: int = 3,
                 dtype: torch.dtype | None = None):
        if not all(t.is_cuda for t in example):
            raise ValueError("CUDA graphs need the example inputs on a CUDA device")
        self.inputs = [t.clone() for t in example]
        precision = torch.autocast("cuda", dtype=dtype, enabled=dtype is not None)
        side = torch.cuda.Stream()  # warm-up on a side stream, as capture requires (lazy init, autotuning)
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), precision, torch.cuda.stream(side):
            for _ in range(warmup):
                predictor(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), precision, torch.cuda.graph(self.graph):
            self.output = predictor(*self.inputs).float()

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        if [t.shape for t in tensors] != [t.shape for t in self.inputs]:
            raise ValueError(f"the graph was captured for inputs {[tuple(t.shape) for t in self.inputs]}, "
                             f"got {[tuple(t.shape) for t in tensors]}")
        for dst, src in zip(self.inputs, tensors):
            dst.copy_(src, non_blocking=True)
        self.graph.replay()
        return self.output.clone()


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


# the MLP's output projection of common decoder LMs (Llama / Qwen / SmolLM, GPT-2, OPT / Phi, GPT-NeoX): its
# input holds the few outlier channels of LLM activations (Dettmers et al., LLM.int8(), 2022), which one
# dynamic uint8 scale per tensor cannot resolve
MLP_OUTPUT_PROJECTIONS = ("down_proj", "mlp.c_proj", "fc2", "dense_4h_to_h")


def quantize_int8(src: Path, dst: Path, scope: str = "model.backbone",
                  exclude: tuple[str, ...] = MLP_OUTPUT_PROJECTIONS, reduce_range: bool = False) -> Path:
    """Dynamic int8 quantisation with ONNX Runtime of the backbone's matrix products: the weights of the
    MatMul / Gemm nodes under the module ``scope`` (torch's name scopes, kept by the exporter as node metadata)
    are stored as int8 per output channel, and their inputs are quantised to uint8 at each call. The nodes of
    the ``exclude`` modules (the MLP output projections) stay fp32, and so do the encoders, fusion, task
    attention and head: small layers whose quantisation saves little. On the demo checkpoint every matrix
    product in int8 agreed with eager on 82 % of the validation top-1 beams, the backbone's without its down
    projections on 98 %. The result is a different model numerically: compare it with :func:`agreement`.

    ``reduce_range``: weights in 7 bits, ONNX Runtime's remedy for its u8 x s8 kernels on x86 CPUs without VNNI
    int8 dot products, whose 16-bit pairwise sums can saturate. Measured on an AVX2-only CPU (2026-12-05): on
    the demo checkpoint 8-bit weights agreed with eager on 0.949 of 256 validation beams, 7-bit ones on 0.930;
    on six random tiny Llamas 7-bit weights gave 3-5 x less logit error (0.04-0.05 against 0.14-0.27 of the
    logits' spread). So 8 bits by default; compare both with :func:`agreement` on your model and CPU."""
    import ast
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    model = onnx.load(str(src))
    # the exporter's intermediate shapes: the quantiser re-runs ONNX shape inference, which rejects some of them
    # (a reshape in the point encoders); ONNX Runtime infers every shape again when it loads the model
    del model.graph.value_info[:]
    _fold_weight_transposes(model)
    nodes = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))  # a list of str literals
        path = "/".join(scopes)
        if any(sc.startswith(scope) for sc in scopes) and not any(e in path for e in exclude):
            nodes.append(node.name)
    if not nodes:
        raise ValueError(f"{src}: no MatMul/Gemm node under module {scope!r} (the file must come from "
                         "torch.onnx.export(dynamo=True), which records module names)")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # not the quantiser's advice to pre-process, printed for every model
    try:
        quantize_dynamic(model, str(dst), op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=nodes,
                         per_channel=True, reduce_range=reduce_range, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return dst


def _fold_weight_transposes(model) -> None:
    """Replace each Transpose of a stored weight by the transposed weight (what the exporter's optimiser does):
    the quantiser only quantises a MatMul whose weight is stored, not computed."""
    from onnx import numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    keep = []
    for node in model.graph.node:
        src = node.input[0] if node.input else ""
        if node.op_type == "Transpose" and src in inits:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            folded = numpy_helper.to_array(inits[src]).transpose(perm)
            model.graph.initializer.append(numpy_helper.from_array(folded, node.output[0]))
            if users[src] == 1:
                model.graph.initializer.remove(inits.pop(src))
            continue
        keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def agreement(predictor: BeamPredictor, runner, batches: list[dict]) -> dict[str, float]:
    """How a numerically different model (int8) compares with eager on the samples of ``batches`` that have a
    beam label: the share with the same top-1 beam, the top-1 accuracy of each, and the largest logit
    difference."""
    same = hits_eager = hits_other = n = 0
    worst = 0.0
    with torch.no_grad():
        for b in batches:
            x = predictor.flatten(b)
            rows = b["beam_label"].cpu() >= 0
            ref, out = predictor(*x).cpu()[rows], runner(*x).cpu()[rows]
            label = b["beam_label"].cpu()[rows]
            same += int((ref.argmax(1) == out.argmax(1)).sum())
            hits_eager += int((ref.argmax(1) == label).sum())
            hits_other += int((out.argmax(1) == label).sum())
            n += len(label)
            worst = max(worst, float((ref - out).abs().max())) if len(label) else worst
    return {"samples": n, "top1_agreement": same / max(n, 1), "top1_eager": hits_eager / max(n, 1),
            "top1": hits_other / max(n, 1), "max_abs_diff": worst}


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
    p.add_argument("--shards", nargs="*", type=Path, default=None,
                   help="folders for example batches (default: the validation split of the training run's vehicle data)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("beam.pt2"), help=".pt2 (torch.export) or .onnx (ONNX Runtime)")
    p.add_argument("--int8", action="store_true",
                   help="with an .onnx file: dynamic int8 quantisation of the backbone's matrix products (faster on "
                        "CPUs with int8 dot products; checked by top-1 agreement with the eager model, not equal outputs)")
    p.add_argument("--int8-reduce-range", action="store_true",
                   help="--int8: weights in 7 bits instead of 8 (on x86 CPUs without VNNI, ONNX Runtime's u8 x s8 "
                        "products can saturate; compare the agreement printed with and without it)")
    p.add_argument("--min-agreement", type=float, default=0.9,
                   help="--int8: refuse to write the model below this top-1 agreement with eager (measured on up "
                        "to 256 samples of --shards)")
    a = p.parse_args(argv)
    if a.out.suffix not in (".pt2", ".onnx"):
        p.error(f"--out {a.out}: the file name must end in .pt2 or .onnx")
    if a.int8 and a.out.suffix != ".onnx":
        p.error("--int8 needs an .onnx --out")
    if a.int8_reduce_range and not a.int8:
        p.error("--int8-reduce-range goes with --int8")
    from airbind.checkpoint import checkpoint_at
    from finetune.train import load_model
    from evaluation.common import roots_for
    from pretrain.data import resolve_data, split_dirs
    ckpt = checkpoint_at(a.checkpoint, "stage-two")
    model, cfg = load_model(ckpt)
    dirs = a.shards or split_dirs(roots_for("beam", resolve_data(cfg.data)), "val")  # scenes with beam labels
    batches = example_batches(cfg, dirs, a.batch_size, n=-(-256 // a.batch_size) if a.int8 else 2)
    if not batches:
        p.error(f"no samples under {[str(d) for d in dirs]}: pass --shards with vehicle-scene shards")
    predictor = BeamPredictor(model, cfg.max_points)
    program = export(predictor, predictor.flatten(batches[0]))
    if a.out.suffix == ".onnx":  # written beside the target and moved there once it checks out
        partial = a.out.with_name(a.out.name + ".partial")
        quantized = a.out.with_name(a.out.name + ".int8.partial")
        try:
            worst = check(predictor, OnnxBeamPredictor(to_onnx(program, partial)), batches[:1])
            if a.int8:
                full = [b for b in batches if len(b["key"]) == a.batch_size]  # the model's one batch size
                q8 = quantize_int8(partial, quantized, reduce_range=a.int8_reduce_range)
                agree = agreement(predictor, OnnxBeamPredictor(q8), full)
                print(f"int8: top-1 agreement with eager {agree['top1_agreement']:.3f} on {agree['samples']} samples, "
                      f"max |eager - int8| = {agree['max_abs_diff']:.2e}")
                if agree["top1_agreement"] < a.min_agreement:
                    raise SystemExit(f"{a.out}: not written, int8 top-1 agreement {agree['top1_agreement']:.3f} "
                                     f"< --min-agreement {a.min_agreement}")
                quantized.replace(a.out)
            else:
                partial.replace(a.out)
        finally:
            partial.unlink(missing_ok=True)
            quantized.unlink(missing_ok=True)
    else:
        worst = check(predictor, program, batches[:1])
        torch.export.save(program, a.out)
    kind = "int8 " if a.int8 else ""
    print(f"wrote {a.out} ({kind}{a.out.suffix[1:]}): max |eager - exported fp32| = {worst:.2e} on {a.batch_size} samples")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
