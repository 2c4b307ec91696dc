"""Checks on the full CamVid data set: opt-in, they run only with CAMVID_ROOT set (a few minutes on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from seg_node.core.model_card import ModelCard
from seg_node.core.model_files import models_dir
from seg_node.ros_tools.bag_convert import dataset_frames, write_bag
from seg_node.ros_tools.live_eval import live_evaluate
from seg_node.toolchain.data import open_dataset
from seg_node.toolchain.data.camvid_compact import write_compact_copy
from seg_node.toolchain.evaluation.evaluate import run_evaluation

CAMVID_ROOT = os.environ.get("CAMVID_ROOT")
pytestmark = pytest.mark.skipif(not CAMVID_ROOT, reason="set CAMVID_ROOT to run the full-data-set checks")


@pytest.mark.parametrize("card_name", sorted(p.name for p in models_dir().glob("*.json")))
def test_shipped_models_reproduce_the_test_miou_in_their_cards(card_name, tmp_path):
    card_path = models_dir() / card_name
    recorded = ModelCard.load(card_path).metrics["camvid_test"]
    result = run_evaluation(["--model", str(card_path), "--data", CAMVID_ROOT, "--split", "test", "--threads", "2",
                             "--out", str(tmp_path)])
    assert result["frames"] == recorded["frames"] == 233
    assert abs(result["miou"] - recorded["miou"]) <= 0.1, (result["miou"], recorded["miou"])


def test_live_evaluation_of_seq05vd_matches_offline(tmp_path):
    bag = tmp_path / "seq05vd"
    write_bag(dataset_frames(Path(CAMVID_ROOT), "test", sequence="Seq05VD"), bag, rate=30.0, progress=False)
    live = live_evaluate(bag, tmp_path / "live", rate=0.1, node_name="seg_node_seq05vd")
    offline = run_evaluation(["--data", CAMVID_ROOT, "--split", "test", "--sequence", "Seq05VD", "--threads", "2",
                              "--out", str(tmp_path / "offline")])
    assert live["frames_published"] == offline["frames"] == 171 and live["frames_dropped"] == 0
    assert abs(live["miou"] - offline["miou"]) <= 0.1, (live["miou"], offline["miou"])



def test_the_compact_copy_keeps_every_val_label_and_nearly_the_trained_models_score(tmp_path):
    """What the README says of seg-camvid-compact: exact labels, and val mIoU within 1.5 points of the PNGs' (the
    shipped model: 77.43 against 78.56)."""
    sizes = write_compact_copy(CAMVID_ROOT, tmp_path / "compact", ["val"], quality=90)
    original, copy = open_dataset(CAMVID_ROOT, "val"), open_dataset(tmp_path / "compact", "val")
    assert len(copy.samples()) == len(original.samples()) == 101
    assert sizes["val"] < 0.25 * sum(s.image_path.stat().st_size + s.label_path.stat().st_size
                                     for s in original.samples())
    for before, after in zip(original.samples(), copy.samples()):
        np.testing.assert_array_equal(copy.load(after)[1], original.load(before)[1])
    model = str(models_dir() / "camvid_mobile_unet.json")
    scores = [run_evaluation(["--model", model, "--data", str(data), "--split", "val", "--threads", "2",
                              "--out", str(tmp_path / name)])["miou"]
              for name, data in (("png", CAMVID_ROOT), ("jpeg", tmp_path / "compact"))]
    assert abs(scores[0] - scores[1]) <= 1.5, scores


def test_the_shipped_defaults_robustness_figures_in_its_card_are_reproduced(tmp_path):
    """seg-robustness on the corruptions, severities and split the default's card records (the whole split: about
    20 minutes on 2 cores for all corruptions) gives its clean and corrupted mIoU within 0.2."""
    from seg_node.core.model_files import DEFAULT_MODEL_CARD
    from seg_node.toolchain.evaluation.robustness import run_robustness
    card_path = models_dir() / DEFAULT_MODEL_CARD
    recorded = ModelCard.load(card_path).metrics.get("robustness")
    if recorded is None:
        pytest.skip(f"{card_path.name} has no metrics['robustness'] yet: record it with seg-robustness --model "
                    f"models/{card_path.name} --data $CAMVID_ROOT --split test --update-card --out ...")
    result = run_robustness(["--model", str(card_path), "--data", CAMVID_ROOT, "--split", recorded["split"],
                             "--corruptions", *recorded["corruptions"],
                             "--severities", *map(str, recorded["severities"]), "--threads", "2",
                             "--out", str(tmp_path)])
    summary = next(iter(result["models"].values()))["summary"]
    assert result["frames"] == recorded["frames"]
    for key in ("clean", "mpc", "mpc_sev1_3"):
        assert abs(summary[key] - recorded[key]) <= 0.2, (key, summary[key], recorded[key])
    for name, by_severity in recorded["miou"].items():
        for severity, miou in by_severity.items():
            assert abs(summary["miou"][name][severity] - miou) <= 0.2, (name, severity, summary["miou"][name], miou)
