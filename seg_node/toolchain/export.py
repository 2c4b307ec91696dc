"""Export a torch model to the files the node loads: weights (safetensors), ONNX and the model card.

Every export ends with a parity check: ONNX Runtime's masks must agree with torch's.
"""

from __future__ import annotations

import argparse
import csv
import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ..core.architectures import build_model
from ..core.architectures.weights import save_weights
from ..core.command_line import reports_user_errors
from ..core.model_card import InputSpec, InterfaceSpec, ModelCard
from ..core.preprocess import normalize, resize_for_network
from .data import DatasetError, SegmentationDataset
from .data.arguments import add_dataset_arguments, dataset_from_args
from .training.config import checkpoint_record

ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "logits"


def export_onnx(model: nn.Module, path: str | Path, height: int, width: int, dynamic_batch: bool = False,
                dynamic_size: bool = False, opset: int = ONNX_OPSET) -> Path:
    """Trace the model (fp32, NCHW) into an ONNX file whose input is `image` and output `logits`."""
    path = Path(path)
    model = model.eval().float().to(memory_format=torch.contiguous_format)
    dummy = torch.zeros(1, 3, height, width)
    dynamic_axes = {}
    if dynamic_batch or dynamic_size:
        batch = {0: "batch"} if dynamic_batch else {}
        dynamic_axes = {INPUT_NAME: batch | ({2: "height", 3: "width"} if dynamic_size else {}),
                        OUTPUT_NAME: batch | ({2: "logits_height", 3: "logits_width"} if dynamic_size else {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=opset, dynamic_axes=dynamic_axes or None, dynamo=False)
    onnx.checker.check_model(str(path))
    return path


def mask_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of pixels whose argmax class is the same in two N x C x H x W logits arrays."""
    return float((reference.argmax(1) == candidate.argmax(1)).mean())


def parity_check(model: nn.Module, onnx_path: Path, inputs: np.ndarray, threshold: float = 0.999) -> dict:
    """Run torch and ONNX Runtime on the same inputs; raise if their masks agree on < threshold of pixels."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        reference = np.concatenate([model(torch.from_numpy(x[None])).numpy() for x in inputs])
    candidate = np.concatenate([session.run(None, {INPUT_NAME: x[None]})[0] for x in inputs])
    result = {"frames": len(inputs), "mask_agreement": round(mask_agreement(reference, candidate), 6),
              "max_abs_logit_diff": float(np.abs(reference - candidate).max())}
    if result["mask_agreement"] < threshold:
        raise RuntimeError(f"ONNX export of {onnx_path} disagrees with torch: {result}")
    return result


def export_model(model: nn.Module, out_stem: str | Path, *, name: str, architecture: dict, classes, palette,
                 spec: InputSpec, parity_inputs: np.ndarray, metrics: dict | None = None,
                 training: dict | None = None, compression: dict | None = None,
                 class_bias: dict | None = None, flip_average: bool = False, logit_offsets: list | None = None,
                 notes: str = "", dynamic_batch: bool = False, dynamic_size: bool = False) -> ModelCard:
    """Write <stem>.safetensors, <stem>.onnx and <stem>.json (the card) and check ONNX against torch. The card's
    architecture records `upsample_logits: false` when the model returns logits at its classifier's resolution."""
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    weights_path, onnx_path = out_stem.with_suffix(".safetensors"), out_stem.with_suffix(".onnx")
    model = model.eval().float().cpu()
    save_weights(model, weights_path)
    export_onnx(model, onnx_path, spec.height, spec.width, dynamic_batch, dynamic_size)
    parity = parity_check(model, onnx_path, parity_inputs)
    architecture = {k: v for k, v in architecture.items() if k not in ("pretrained", "upsample_logits")}
    if not getattr(model, "upsample_logits", True):
        architecture["upsample_logits"] = False
    card = ModelCard(
        name=name, architecture=architecture,
        classes=list(classes), palette=[list(c) for c in palette], input=spec,
        files={"onnx": onnx_path.name, "torch": weights_path.name},
        metrics=dict(metrics or {}), training=dict(training or {}),
        compression={"precision": "fp32", **(compression or {}), "export_parity": parity},
        class_bias=dict(class_bias or {}), flip_average=flip_average, logit_offsets=list(logit_offsets or []),
        notes=notes,
        interface=InterfaceSpec(input_size="dynamic" if dynamic_size else "fixed",
                                batch="dynamic" if dynamic_batch else "fixed"))
    card.validate(str(out_stem))
    card.save(out_stem.with_suffix(".json"))
    return card


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    """`seg-export`: turn a training checkpoint (best.pt) into the node's model files, with the classes, palette
    and input the run recorded."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("checkpoint", help="best.pt written by seg-train (loaded with weights_only=True)")
    parser.add_argument("--out", required=True, help="output stem, e.g. models/camvid_mobile_unet")
    parser.add_argument("--name", help="model name for the card (default: the stem)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="network input size (default: the run's)")
    parser.add_argument("--dynamic-batch", action="store_true")
    parser.add_argument("--dynamic-size", action="store_true")
    add_native_logits_argument(parser)
    add_dataset_arguments(parser, class_map=False)
    parser.add_argument("--parity-frames", type=int, default=8, help="val frames of --data for the parity check")
    args = parser.parse_args(argv)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    run = checkpoint_record(state, args.checkpoint)
    architecture = {k: v for k, v in run["arch"].items() if k != "pretrained"}
    model = build_model(architecture, len(run["classes"]))
    model.load_state_dict(state["model"])
    model.upsample_logits = model.upsample_logits and not args.native_logits
    spec = InputSpec(**run["config"]["model"]["input"])
    if args.input_size:
        spec = replace(spec, height=args.input_size[0], width=args.input_size[1])
    card = export_model(model, args.out, name=args.name or Path(args.out).name, architecture=architecture,
                        classes=run["classes"], palette=run["palette"], spec=spec,
                        parity_inputs=parity_frames(parity_dataset(args), args.parity_frames, spec),
                        training=training_record(args.checkpoint, state),
                        dynamic_batch=args.dynamic_batch, dynamic_size=args.dynamic_size)
    print(f"wrote {args.out}.{{onnx,safetensors,json}}; parity {card.compression['export_parity']}")


def training_record(checkpoint: str | Path, state: dict | None = None) -> dict:
    """What the card says of a run: best epoch, val mIoU, wall time, hardware and options; for a run started
    with `seg-train --init`, the run it started from too (`initialized_from`), as far back as the files go: a
    checkpoint's own record, or the card beside a shipped model's weights.
    `state` is the checkpoint already loaded, if the caller has it."""
    if state is None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    run = json.loads(state["run"])
    log = Path(checkpoint).with_name("log.csv")
    wall_seconds = (sum(float(row["seconds"]) for row in csv.DictReader(log.read_text().splitlines()))
                    if log.exists() else None)
    record = {"best_epoch": state["epoch"], "val_miou": state.get("val_miou", state.get("best_miou")),
              **({"averaged_epochs": state["averaged_epochs"]} if state.get("averaged_epochs") else {}),
              "wall_seconds": wall_seconds, "hardware": run.pop("hardware", "not recorded"), **run}
    init = run["config"]["model"]["init"] if "config" in run else None  # a 0.1 record is kept as it was written
    found = init and where_the_run_saw(init, Path(checkpoint), run["config"]["run"]["out"])
    if found and found.suffix == ".pt" and found.exists():
        record["initialized_from"] = {"checkpoint": init, **training_record(found)}
    elif found and found.with_suffix(".json").exists():
        card = ModelCard.load(found.with_suffix(".json"))
        record["initialized_from"] = {"weights": init, "model": card.name, **card.training,
                                      **({"class_bias": card.class_bias} if card.class_bias else {})}
    return record


def where_the_run_saw(recorded: str, checkpoint: Path, out: str) -> Path:
    """A path a run recorded relative to the folder it was started in, as seen from here: that folder is the
    checkpoint's run folder less the run's relative `--out` (a run started in runs/ with `--init first/best.pt
    --out second`, exported from the checkout, read runs/first/best.pt). As recorded where that cannot be told."""
    path, out_parts = Path(recorded), Path(out).parts
    folder = Path(checkpoint).parent
    if (path.is_absolute() or Path(out).is_absolute() or len(folder.parts) < len(out_parts)
            or folder.parts[-len(out_parts):] != out_parts):
        return path
    started_in = folder.parts[:-len(out_parts)]
    seen = (Path(*started_in) if started_in else Path()) / path
    return seen if seen.exists() or seen.with_suffix(".json").exists() else path


def add_native_logits_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--native-logits", action="store_true",
                        help="logits at the classifier's resolution (stride 2 for a mobile U-Net), upsampled to the "
                             "frame by the pipeline, which computes the bilinear logits only where classes change: "
                             "the network no longer resizes every class map to its input")


def parity_dataset(args: argparse.Namespace) -> SegmentationDataset | None:
    """The val split of the data set the options name, for parity frames; None when no data set is named (no
    --data, no $CAMVID_ROOT). A --data folder given but wrong is an error, not a silent fall-back."""
    try:
        return dataset_from_args(args, "val")
    except DatasetError:
        if args.data:
            raise
        return None


def parity_frames(dataset: SegmentationDataset | None, count: int, spec: InputSpec) -> np.ndarray:
    """`count` normalized frames spread over `dataset`, or seeded random images without one."""
    if dataset is None:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (spec.height, spec.width, 3), np.uint8) for _ in range(count)]
    else:
        samples = dataset.samples()
        images = [dataset.load(s)[0] for s in samples[:: max(1, len(samples) // count)][:count]]
    return np.stack([normalize(resize_for_network(image, spec), spec, "rgb") for image in images])


if __name__ == "__main__":
    main()
