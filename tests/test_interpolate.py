"""seg-interpolate: weight-space interpolation of two models of one structure, exported like any other model."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file

from seg_node.core.model_card import ModelCard
from seg_node.core.pipeline import SegmentationPipeline
from seg_node.toolchain.random_model import make_random_model
from seg_node.toolchain.training.interpolate import main as interpolate_main

ARCHITECTURE = {"name": "unet", "base_width": 8, "depth": 3}


@pytest.fixture()
def endpoints(tmp_path):
    """Two differently initialised models of the same structure (cards a.json, b.json)."""
    for name, seed in (("a", 0), ("b", 1)):
        make_random_model(tmp_path / name, ARCHITECTURE, seed=seed)
    return tmp_path / "a.json", tmp_path / "b.json"


def test_the_interpolated_weights_are_the_weighted_mean_and_the_card_records_both_endpoints(tmp_path, endpoints):
    first, second = endpoints
    interpolate_main(["--model", str(first), "--model", str(second), "--alpha", "0.25", "--out", str(tmp_path / "mix")])
    a, b, mix = (load_file(str(tmp_path / f"{n}.safetensors")) for n in ("a", "b", "mix"))
    assert mix.keys() == a.keys()
    for key, tensor in mix.items():
        if tensor.is_floating_point():
            np.testing.assert_allclose(tensor.numpy(), 0.75 * a[key].numpy() + 0.25 * b[key].numpy(), atol=1e-6)
        else:  # BatchNorm's batch counts
            assert (tensor == a[key]).all()
    assert any(not np.allclose(a[k].numpy(), b[k].numpy()) for k in a if a[k].is_floating_point())
    card = ModelCard.load(tmp_path / "mix.json")
    assert [e["weight"] for e in card.training["endpoints"]] == [0.75, 0.25]
    assert card.training["interpolation"]["command"].startswith("seg-interpolate --model")
    assert card.compression["export_parity"]["mask_agreement"] >= 0.999  # the ONNX file agrees with the weights


def test_alpha_zero_is_the_first_model_through_the_node_pipeline(tmp_path, endpoints):
    first, second = endpoints
    interpolate_main(["--model", str(first), "--model", str(second), "--alpha", "0", "--out", str(tmp_path / "same")])
    image = np.random.default_rng(3).integers(0, 256, (96, 128, 3), np.uint8)
    expected = SegmentationPipeline.from_model(first).logits(image, "rgb")
    np.testing.assert_allclose(SegmentationPipeline.from_model(tmp_path / "same.json").logits(image, "rgb"), expected,
                               atol=1e-5)


def test_models_of_different_structure_or_a_bad_alpha_stop_with_a_message(tmp_path, endpoints, capsys):
    first, _ = endpoints
    make_random_model(tmp_path / "wide", {**ARCHITECTURE, "base_width": 16})
    with pytest.raises(SystemExit) as stopped:
        interpolate_main(["--model", str(first), "--model", str(tmp_path / "wide.json"), "--alpha", "0.5",
                          "--out", str(tmp_path / "never")])
    assert stopped.value.code == 2
    assert "interpolation needs the same (pruned) structure" in capsys.readouterr().err
    assert not (tmp_path / "never.json").exists()
    flipped = ModelCard.load(first)
    flipped.flip_average = True
    flipped.save(tmp_path / "flipped.json")
    with pytest.raises(SystemExit):
        interpolate_main(["--model", str(first), "--model", str(tmp_path / "flipped.json"), "--alpha", "0.5",
                          "--out", str(tmp_path / "never")])
    assert "flip averaging or logit offsets" in capsys.readouterr().err
    for bad in (["--alpha", "1.5"], ["--alpha", "0.5", "--model", str(first)]):
        with pytest.raises(SystemExit):
            interpolate_main(["--model", str(first), "--model", str(first), *bad, "--out", str(tmp_path / "x")])
    assert "--alpha must be in [0, 1]" in capsys.readouterr().err
