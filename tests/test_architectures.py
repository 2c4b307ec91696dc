"""BiSeNetV2 and ICNet, and the contract every architecture keeps: logits at the input size for any size,
auxiliary outputs in training only, what structured pruning keeps whole, DepGraph pruning at half the MACs,
ONNX parity and the pipeline."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from seg_node.core.architectures import build_model
from seg_node.core.architectures.efficientnet_lite import imagenet_weights_path
from seg_node.core.architectures.weights import load_weights, save_weights
from seg_node.core.confidence import SCORE_STRIDE, score_stride
from seg_node.core.model_card import ModelCard
from seg_node.core.pipeline import SegmentationPipeline
from seg_node.toolchain.compression.prune import count_macs_and_params
from seg_node.toolchain.export import export_onnx, parity_check
from seg_node.toolchain.random_model import calibrate_batchnorm, make_random_model

# Small widths keep each test to seconds; the structure is the papers'. ICNet's pretrained backbone has fixed widths.
NEW = {
    "bisenetv2": {"name": "bisenetv2", "detail_channels": [32, 32, 64], "semantic_channels": [16, 32, 32, 64],
                  "head_channels": 128, "aux_channels": 16},
    "icnet": {"name": "icnet", "sub1_channels": [16, 16, 32], "pyramid_channels": 64, "fusion_channels": 32},
}
EXISTING = [{"name": "unet", "base_width": 8, "depth": 3}, {"name": "attention_unet", "base_width": 8, "depth": 3},
            {"name": "mobile_unet", "decoder_channels": [32, 24, 16, 16]}]
# Channel ratio at which these widths lose about half of their MACs (with round_to=8 narrow layers lose channels
# in steps of 8, so the ratio differs from the full-width one).
HALF_MACS_RATIO = {"bisenetv2": 0.25, "icnet": 0.3}
AUX_STRIDES = {"bisenetv2": (4, 8, 16, 32), "icnet": (16, 8)}
ODD = (361, 479)
SMALL, SMALL_ODD = (96, 128), (97, 131)


def pruner_for(model: nn.Module, ratio: float, scope: str = "all") -> tp.pruner.MetaPruner:
    """DepGraph traced through every output, auxiliary heads included, so their inputs follow the trunk."""
    return tp.pruner.MetaPruner(model, torch.zeros(1, 3, *SMALL),
                                importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
                                round_to=8, ignored_layers=model.kept_whole(scope),
                                forward_fn=lambda network, x: network.all_outputs(x))


def conv_widths(modules) -> dict[str, int]:
    return {name: m.out_channels for name, m in modules if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("name", sorted(NEW))
def test_eval_gives_logits_at_any_input_size_and_training_adds_the_auxiliary_outputs(name):
    torch.manual_seed(0)
    model = build_model(NEW[name], 11).eval()
    with torch.inference_mode():
        for size in [(360, 480), ODD]:
            assert model(torch.randn(1, 3, *size)).shape == (1, 11, *size)
    model.train()
    logits, aux = model(torch.randn(2, 3, *SMALL_ODD))
    assert logits.shape == (2, 11, *SMALL_ODD)
    assert len(aux) == len(model.aux_weights) == len(AUX_STRIDES[name])
    for output, stride in zip(aux, AUX_STRIDES[name]):
        assert output.shape[:2] == (2, 11)
        assert all(abs(got - size / stride) <= 1 for got, size in zip(output.shape[-2:], SMALL_ODD)), output.shape
    (logits.mean() + sum(output.mean() for output in aux)).backward()
    assert all(p.grad is not None for p in model.aux_heads.parameters())


@pytest.mark.parametrize("name", sorted(NEW))
def test_without_auxiliary_heads_training_returns_logits_only(name):
    model = build_model({**NEW[name], "aux_heads": False}, 11).train()
    assert model(torch.randn(2, 3, *SMALL)).shape == (2, 11, *SMALL)
    assert model.aux_weights == () and model.kept_whole("all") == [model.classifier]
    assert not any(key.startswith("aux_heads") for key in model.state_dict())


@pytest.mark.parametrize("architecture", [*EXISTING, *NEW.values()], ids=lambda a: a["name"])
def test_every_architecture_names_what_pruning_keeps_whole(architecture):
    model = build_model(architecture, 11)
    assert model.kept_whole("all") == [model.classifier, *model.aux_heads]
    kept = {p for module in model.kept_whole("decoder") for p in module.parameters()}
    assert set(model.encoder.parameters()) | set(model.classifier.parameters()) <= kept
    assert len(kept) < len(list(model.parameters())), "a decoder is left to prune"
    with pytest.raises(ValueError, match="scope"):
        model.kept_whole("encoder")
    if not model.aux_heads:
        assert model.train()(torch.randn(2, 3, *SMALL)).shape == (2, 11, *SMALL)


@pytest.mark.parametrize("name", sorted(NEW))
def test_depgraph_prunes_half_the_macs_and_the_pruned_model_trains_reloads_and_exports(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(NEW[name], 11)
    calibrate_batchnorm(model, SMALL, seed=0)  # masks that vary across the image, so parity means something
    base_macs, base_params = count_macs_and_params(model, *SMALL)
    whole = {m for module in model.kept_whole("all") for m in module.modules()}
    kept = conv_widths((n, m) for n, m in model.named_modules() if m in whole)
    pruner_for(model, HALF_MACS_RATIO[name]).step()
    macs, params = count_macs_and_params(model, *SMALL)
    assert 0.4 <= 1 - macs / base_macs <= 0.6, f"MACs {base_macs} -> {macs}"
    assert params < 0.75 * base_params
    widths = conv_widths(model.named_modules())
    assert {n: widths[n] for n in kept} == kept, "classifier and auxiliary heads keep their outputs"
    assert all(w % 8 == 0 for n, w in widths.items() if n not in kept), "round_to=8 keeps hardware-friendly widths"

    logits, aux = model.train()(torch.randn(2, 3, *SMALL_ODD))  # fine-tuning with the auxiliary losses works
    assert logits.shape == (2, 11, *SMALL_ODD) and len(aux) == len(model.aux_weights)
    model.eval()
    x = torch.randn(1, 3, *SMALL_ODD)
    with torch.inference_mode():
        expected = model(x)
    save_weights(model, tmp_path / "pruned.safetensors")
    rebuilt = load_weights(build_model(NEW[name], 11), tmp_path / "pruned.safetensors").eval()
    assert count_macs_and_params(rebuilt, *SMALL) == (macs, params)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(x), expected)

    onnx_path = export_onnx(rebuilt, tmp_path / "pruned.onnx", *SMALL_ODD)
    inputs = np.random.default_rng(0).standard_normal((2, 3, *SMALL_ODD), np.float32)
    parity = parity_check(rebuilt, onnx_path, inputs)
    assert parity["mask_agreement"] >= 0.999 and parity["max_abs_logit_diff"] < 1e-3


@pytest.mark.parametrize("name", sorted(NEW))
def test_decoder_scope_prunes_around_the_encoder(name):
    torch.manual_seed(0)
    model = build_model(NEW[name], 11)
    encoder_widths = conv_widths(model.encoder.named_modules())
    base_macs, _ = count_macs_and_params(model, *SMALL)
    pruner_for(model, 0.5, scope="decoder").step()
    assert conv_widths(model.encoder.named_modules()) == encoder_widths
    assert count_macs_and_params(model, *SMALL)[0] < 0.95 * base_macs
    assert model.eval()(torch.randn(1, 3, *SMALL)).shape == (1, 11, *SMALL)


@pytest.mark.parametrize("name", sorted(NEW))
def test_a_random_model_card_runs_in_the_pipeline_with_both_backends(name, tmp_path):
    onnx_path = make_random_model(tmp_path / name, NEW[name], size=SMALL)  # export_model checks parity
    image = cv2.resize(np.random.default_rng(1).integers(0, 256, (6, 8, 3), np.uint8), (160, 120),
                       interpolation=cv2.INTER_CUBIC)
    masks = [SegmentationPipeline.from_model(onnx_path, backend=backend, device="cpu").segment(image).mask
             for backend in ("onnxruntime", "torch")]
    assert masks[0].shape == (120, 160) and masks[0].max() < 11
    assert len(np.unique(masks[0])) > 1
    assert (masks[0] == masks[1]).mean() >= 0.999


NATIVE_STRIDES = {"bisenetv2": 8, "icnet": 4, "mobile_unet": 2}


@pytest.mark.parametrize("name", sorted(NATIVE_STRIDES))
def test_native_logits_come_at_the_classifiers_stride_and_the_pipeline_upsamples_them_to_the_same_mask(name,
                                                                                                         tmp_path):
    """`upsample_logits: false`: inference returns the classifier's resolution (training still the input size),
    the card records it, and both backends' masks are the native logits resized bilinearly to the frame once
    (upsampling 'logits': the random network's logits are too rough for 'boundaries' to be exact)."""
    architecture = NEW.get(name, EXISTING[-1])
    native_architecture = {**architecture, "upsample_logits": False}
    model = build_model(native_architecture, 11)
    stride = NATIVE_STRIDES[name]
    with torch.inference_mode():
        assert model.eval()(torch.randn(1, 3, *SMALL)).shape == (1, 11, SMALL[0] // stride, SMALL[1] // stride)
    output = model.train()(torch.randn(2, 3, *SMALL))
    assert (output[0] if isinstance(output, tuple) else output).shape == (2, 11, *SMALL)
    native = make_random_model(tmp_path / "native", native_architecture, size=SMALL)
    card = ModelCard.load(native.with_suffix(".json"))
    assert card.architecture["upsample_logits"] is False
    assert "upsample_logits" not in ModelCard.load(make_random_model(tmp_path / "upsampled", architecture,
                                                                     size=SMALL).with_suffix(".json")).architecture
    image = cv2.resize(np.random.default_rng(2).integers(0, 256, (6, 8, 3), np.uint8), (160, 120),
                       interpolation=cv2.INTER_CUBIC)
    network = build_model(card.architecture, 11).eval()
    load_weights(network, native.with_suffix(".safetensors"))
    for backend in ("onnxruntime", "torch"):
        pipeline = SegmentationPipeline.from_model(native, backend=backend, device="cpu", upsampling="logits")
        mask = pipeline.segment(image).mask
        with torch.inference_mode():
            logits = network(torch.from_numpy(pipeline.prepare(image).copy()))
        expected = F.interpolate(logits, size=(120, 160), mode="bilinear", align_corners=False).argmax(1)[0]
        assert mask.shape == (120, 160) and len(np.unique(mask)) > 1
        assert (mask == expected.numpy()).mean() >= 0.995, backend
        assert pipeline.logits(image).shape == (11, *SMALL)  # tools that read logits get the input's size
    # the frame score reads the same input pixels whatever resolution the logits come at
    assert score_stride(SMALL[0] // stride, SMALL[0]) == max(1, round(SCORE_STRIDE / stride))


def test_icnet_cascades_three_resolutions_over_the_imagenet_backbone():
    model = build_model({**NEW["icnet"], "pretrained": True}, 11).eval()
    state = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.encoder._blocks[15]._project_conv.weight, state["_blocks.15._project_conv.weight"])
    with torch.inference_mode():
        branches = model.branches(torch.zeros(1, 3, *ODD))
    for branch, stride in zip(branches, (32, 16, 8)):
        assert all(abs(got - size / stride) <= 1 for got, size in zip(branch.shape[-2:], ODD)), (stride, branch.shape)


def test_branches_that_cannot_be_aggregated_are_refused():
    with pytest.raises(ValueError, match="same width"):
        build_model({"name": "bisenetv2", "detail_channels": [64, 64, 96]}, 11)
    with pytest.raises(ValueError, match="sub1_channels"):
        build_model({"name": "icnet", "sub1_channels": [32, 64]}, 11)
