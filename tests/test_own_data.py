"""A team's own data, end to end: data sets in the cityscapes and folders layouts (19 classes; 5 classes of a
table of one's own, with id labels and with colour labels listed in another order than the model's) go through
seg-train -> seg-export -> seg-quantize -> seg-eval -> the node over DDS, whose colour mask is in the card's
palette; on the folders one seg-robustness and seg-calibrate-confidence complete."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from folders_fixtures import OWN_CLASSES, write_folders
from ros_harness import connect, make_image_msg
from test_datasets import write_cityscapes

from seg_node.core.model_card import ModelCard
from seg_node.toolchain.compression.quantize import main as quantize_main
from seg_node.toolchain.data import ClassTable, cityscapes_classes, open_dataset
from seg_node.toolchain.evaluation.calibrate_confidence import run_calibration
from seg_node.toolchain.evaluation.evaluate import run_evaluation
from seg_node.toolchain.evaluation.robustness import run_robustness
from seg_node.toolchain.export import main as export_main
from seg_node.toolchain.training.train import main as train_main

ARCH = '{"name": "unet", "base_width": 8, "depth": 2}'


def write_cityscapes_splits(root: Path) -> Path:
    for split in ("train", "val", "test"):
        write_cityscapes(root, split)
    return root


def recoloured_in_reverse(source: Path, target: Path, classes: ClassTable) -> Path:
    """The same frames with colour labels and classes.csv listing the classes in reverse order (and a void row):
    the class names are the model's, their ids are not."""
    reversed_table = ClassTable(classes.names[::-1], classes.colours[::-1])
    target.mkdir(parents=True)
    reversed_table.to_csv(target / "classes.csv")
    with (target / "classes.csv").open("a") as csv_file:
        csv_file.write("void,0,0,0\n")  # unlabelled pixels' colour: a row named void is ignored
    colours = np.array(classes.colours + ((0, 0, 0),), np.uint8)  # 255 (unlabelled) -> black, not in the table
    for image in sorted(source.glob("*/images/*.png")):
        split = image.parent.parent.name
        label = cv2.imread(str(source / split / "labels" / image.name), cv2.IMREAD_UNCHANGED)
        for folder, pixels in (("images", cv2.imread(str(image))),
                               ("labels", colours[np.minimum(label, classes.num_classes)][..., ::-1])):
            (target / split / folder).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target / split / folder / image.name), pixels)
    return target


def train_export_quantize(root: Path, layout: str, out: Path) -> Path:
    """The toolchain on a data set of one's own: one short epoch, ONNX export, static INT8; the INT8 card."""
    data = ["--data", str(root), "--layout", layout]
    train_main([*data, "--arch", ARCH, "--epochs", "1", "--batch-size", "2", "--crop", "32", "48",
                "--input-size", "32", "48", "--threads", "1", "--workers", "0", "--out", str(out / "run")])
    export_main([str(out / "run" / "best.pt"), *data, "--out", str(out / "own")])
    quantize_main(["--model", str(out / "own.json"), "--precision", "int8", "--calibration-frames", "4", *data,
                   "--out", str(out / "own_int8")])
    return out / "own_int8.json"


def node_colour_mask(ros, seg_node, card: Path, frame: np.ndarray, topic: str) -> tuple[np.ndarray, np.ndarray]:
    """(mask, colour mask) the node publishes for one frame."""
    node = seg_node(model=str(card), input_topics=[topic], qos_reliability="reliable")
    outputs, publisher = connect(ros, node, topic)
    publisher.publish(make_image_msg(frame, "rgb8", 7))
    height, width = frame.shape[:2]
    mask = outputs.mask.wait_for(1, 30.0)[0]
    colour = outputs.color_mask.wait_for(1, 30.0)[0]
    assert (mask.height, mask.width, colour.height, colour.width) == (height, width, height, width)
    return (np.frombuffer(mask.data, np.uint8).reshape(height, width),
            np.frombuffer(colour.data, np.uint8).reshape(height, width, 3))


@pytest.mark.parametrize("layout", ["cityscapes", "folders"])
def test_own_data_set_trains_exports_quantizes_evaluates_and_runs_in_the_node(ros, seg_node, tmp_path, layout):
    if layout == "cityscapes":
        root, classes = write_cityscapes_splits(tmp_path / "cityscapes"), cityscapes_classes()
    else:
        root = write_folders(tmp_path / "own", OWN_CLASSES, {"train": 6, "val": 2, "test": 2})
        classes = OWN_CLASSES
    card_path = train_export_quantize(root, layout, tmp_path / "models")
    card = ModelCard.load(card_path)
    assert list(card.classes) == list(classes.names) and card.palette == classes.palette
    assert card.num_classes == (19 if layout == "cityscapes" else 5)

    result = run_evaluation(["--model", str(card_path), "--data", str(root), "--layout", layout, "--split", "test",
                             "--threads", "1", "--out", str(tmp_path / "eval")])
    assert set(result["per_class"]) == set(classes.names) and 0.0 <= result["miou"] <= 100.0
    assert {"iou", "precision", "recall", "f1"} <= set(next(iter(result["per_class"].values())))

    dataset = open_dataset(root, "test", layout)
    frame = dataset.load(dataset.samples()[0])[0]
    mask, colour = node_colour_mask(ros, seg_node, card_path, frame, f"/own_{layout}/image_raw")
    assert mask.max() < card.num_classes
    np.testing.assert_array_equal(colour, np.asarray(card.palette, np.uint8)[mask])


def test_folders_in_another_class_order_with_colour_labels_score_as_with_id_labels(tmp_path):
    """The model's classes are matched to the data set's by name: the same frames listed in reverse order with
    colour labels give the same figures as the id labels in the model's order."""
    root = write_folders(tmp_path / "own", OWN_CLASSES, {"train": 6, "val": 2, "test": 3})
    card_path = train_export_quantize(root, "folders", tmp_path / "models")
    reordered = recoloured_in_reverse(root, tmp_path / "reordered", OWN_CLASSES)
    figures = [run_evaluation(["--model", str(card_path), "--data", str(folder), "--layout", "folders",
                               "--split", "test", "--threads", "1", "--out", str(tmp_path / folder.name)])
               for folder in (root, reordered)]
    assert figures[0]["per_class"] == figures[1]["per_class"] and figures[0]["miou"] == figures[1]["miou"]

    robustness = run_robustness(["--model", str(card_path), "--data", str(root), "--layout", "folders",
                                 "--split", "test", "--corruptions", "gaussian_noise", "--severities", "1",
                                 "--threads", "1", "--out", str(tmp_path / "robustness")])
    assert (tmp_path / "robustness" / "robustness.json").exists() and robustness
    calibration = run_calibration(["--model", str(card_path), "--data", str(root), "--layout", "folders",
                                   "--corruptions", "gaussian_noise", "--severities", "3", "--threads", "1",
                                   "--out", str(card_path.with_name("own_calibrated.json"))], progress=False)
    recorded = json.loads(card_path.with_name("own_calibrated.json").read_text())["confidence"]
    assert calibration and recorded["temperature"] > 0 and 0.0 <= recorded["threshold"] <= 1.0
