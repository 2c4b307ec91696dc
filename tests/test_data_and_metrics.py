"""CamVid readers for both layouts, class weights and the mIoU arithmetic."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
from camvid_fixtures import striped_label, write_camvid11, write_camvid32

from seg_node.toolchain.data import CAMVID_CLASSES, IGNORE_INDEX, DatasetError, open_dataset
from seg_node.toolchain.data.camvid_compact import main as compact_main
from seg_node.toolchain.evaluation.metrics import ConfusionMatrix
from seg_node.toolchain.training.augment import augment
from seg_node.toolchain.training.losses import median_frequency_weights


def test_camvid11_layout_reads_frames_and_labels(tmp_path):
    root = write_camvid11(tmp_path, {"train": 3, "val": 1})
    dataset = open_dataset(root, "train")
    assert dataset.layout == "camvid" and dataset.title == "CamVid (11-class SegNet split)"
    assert len(dataset.samples()) == 3 and dataset.classes == CAMVID_CLASSES
    image, label = dataset.load(dataset.samples()[0])
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1, 3, 8, IGNORE_INDEX}, "void (11 in the files) is IGNORE_INDEX"
    # colours follow the label: sky pixels are grey (128, 128, 128) +- noise in RGB order
    sky = image[label == 0].astype(int)
    assert np.abs(sky.mean(0) - 128).max() < 5


def test_camvid32_layout_folds_the_32_classes_into_11(tmp_path):
    root = write_camvid32(tmp_path)
    dataset = open_dataset(root, "train")
    assert dataset.layout == "camvid" and dataset.title == "CamVid (32-class release, mapped to 11 classes)"
    _, label = dataset.load(dataset.samples()[0])
    expected = striped_label(30, 40, [0, 1, 2, 3, 4], 0)
    # Sky -> Sky, Wall -> Building, LaneMkgsDriv -> Road, Child -> Pedestrian, Void -> void
    names = CAMVID_CLASSES.names
    mapping = {0: names.index("Sky"), 1: names.index("Building"), 2: names.index("Road"),
               3: names.index("Pedestrian"), 4: IGNORE_INDEX}
    np.testing.assert_array_equal(label, np.vectorize(mapping.get)(expected))


@pytest.mark.parametrize("layout", ["segnet", "kaggle"])
def test_compact_copy_keeps_labels_exact_and_frames_close_in_the_11_class_layout(layout, tmp_path):
    source = (write_camvid11(tmp_path / "source", {"train": 3, "val": 2}) if layout == "segnet"
              else write_camvid32(tmp_path / "source", "train", count=3))
    splits = ["train", "val"] if layout == "segnet" else ["train"]
    compact_main(["--data", str(source), "--out", str(tmp_path / "compact"), "--splits", *splits, "--quality", "95"])
    for split in splits:
        original, copy = open_dataset(source, split), open_dataset(tmp_path / "compact", split)
        assert copy.title == "CamVid (11-class SegNet split)"
        assert [s.name for s in copy.samples()] == [s.name for s in original.samples()]
        assert all(s.image_path.suffix == ".jpg" for s in copy.samples())
        for before, after in zip(original.samples(), copy.samples()):
            (image, label), (image_copy, label_copy) = original.load(before), copy.load(after)
            np.testing.assert_array_equal(label_copy, label)
            # JPEG drops the fixtures' per-pixel noise, not the picture: compare them smoothed
            smooth = [cv2.GaussianBlur(i, (5, 5), 0).astype(int) for i in (image, image_copy)]
            assert np.abs(smooth[0] - smooth[1]).mean() < 3.0
    for bad in (["--data", str(source), "--quality", "0"], ["--data", str(tmp_path / "nowhere")]):
        with pytest.raises(SystemExit):
            compact_main([*bad, "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_a_split_is_identified_by_name_and_the_checksum_sha256sum_gives_of_its_files(tmp_path):
    """What cards record instead of the data folder's path: the same digest as `sha256sum test/* testannot/* |
    LC_ALL=C sort -k2 | sha256sum` in the folder, whichever folder that is; a changed label changes it."""
    root = write_camvid11(tmp_path / "somewhere", {"train": 2, "val": 2})
    identity = open_dataset(root, "val").identity()
    files = sorted(f"{folder}/{p.name}" for folder in ("val", "valannot") for p in (root / folder).iterdir())
    listing = "".join(f"{hashlib.sha256((root / name).read_bytes()).hexdigest()}  {name}\n" for name in files)
    assert identity == {"name": "CamVid (11-class SegNet split)", "split": "val", "frames": 2,
                        "sha256": hashlib.sha256(listing.encode()).hexdigest()}
    moved = root.rename(tmp_path / "elsewhere")
    assert open_dataset(moved, "val").identity() == identity != open_dataset(moved, "train").identity()
    label = next((moved / "valannot").iterdir())
    cv2.imwrite(str(label), np.zeros((48, 64), np.uint8))
    assert open_dataset(moved, "val").identity()["sha256"] != identity["sha256"]


def test_wrong_layouts_name_what_is_missing(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nowhere", "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="trainannot"):
        open_dataset(tmp_path, "train")
    monkeypatch.delenv("CAMVID_ROOT", raising=False)
    with pytest.raises(DatasetError, match="CAMVID_ROOT"):
        open_dataset(None, "train")
    write_camvid32(tmp_path / "k")
    (tmp_path / "k" / "class_dict.csv").write_text("name,r,g,b\nMartian,1,2,3\n")
    with pytest.raises(DatasetError, match="Martian"):
        open_dataset(tmp_path / "k", "train")


def test_confusion_matrix_matches_a_hand_computed_example():
    label = np.array([[0, 0, 1, 1], [2, 2, IGNORE_INDEX, IGNORE_INDEX]], np.uint8)
    prediction = np.array([[0, 1, 1, 1], [2, 0, 0, 2]], np.uint8)
    matrix = ConfusionMatrix(3)
    matrix.update(prediction, label)
    np.testing.assert_array_equal(matrix.matrix, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 1 / (2 + 1 - 1) = 1/2
    np.testing.assert_allclose(matrix.iou(), [1 / 3, 2 / 3, 1 / 2])
    assert matrix.miou() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert matrix.pixel_accuracy() == pytest.approx(4 / 6)
    # precision: tp / predicted (columns 2, 3, 1); recall: tp / labelled (rows 2, 2, 2); F1 = 2 tp / (both)
    np.testing.assert_allclose(matrix.precision(), [1 / 2, 2 / 3, 1 / 1])
    np.testing.assert_allclose(matrix.recall(), [1 / 2, 2 / 2, 1 / 2])
    np.testing.assert_allclose(matrix.f1(), [2 / 4, 4 / 5, 2 / 3])
    summary = matrix.summary(["a", "b", "c"])
    assert summary["per_class"]["b"] == {"iou": 66.67, "precision": 66.67, "recall": 100.0, "f1": 80.0}
    assert summary["miou"] == 50.0 and summary["pixel_accuracy"] == 66.67
    matrix.update(prediction, label)  # accumulates over a split, not a mean of per-image scores
    np.testing.assert_array_equal(matrix.matrix, 2 * np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]]))


def test_absent_classes_are_left_out_of_the_mean():
    matrix = ConfusionMatrix(4)
    matrix.update(np.array([0, 1, 1]), np.array([0, 1, 1]))
    assert np.isnan(matrix.iou()[2:]).all() and matrix.miou() == 1.0
    assert matrix.summary(["a", "b", "c", "d"])["per_class"]["c"] == dict.fromkeys(("iou", "precision", "recall",
                                                                                       "f1"))


def test_median_frequency_weights_favour_rare_classes():
    # class 0: 198 pixels in images of 200 pixels; class 1: 1 pixel in one image of 100; class 2 never appears
    weights = median_frequency_weights(np.array([198, 1, 0]), np.array([200, 100, 0]))
    assert weights[2] == 0.0
    assert weights[1] > 1.0 > weights[0]
    f0, f1 = 198 / 200, 1 / 100  # median over the present classes = (f0 + f1) / 2
    np.testing.assert_allclose(weights[:2], [((f0 + f1) / 2) / f0, ((f0 + f1) / 2) / f1], rtol=1e-5)


def test_augmentation_keeps_image_and_label_aligned():
    rng = np.random.default_rng(0)
    label = striped_label(60, 80, [0, 3, 8], 1)
    image = np.dstack([label * 20] * 3).astype(np.uint8)
    for _ in range(10):
        _, out_image, out_label = augment(image, label, rng, (32, 48), (0.5, 2.0))
        assert out_image.shape == (32, 48, 3) and out_label.shape == (32, 48)
        valid = out_label != IGNORE_INDEX
        brightness = out_image[..., 0].astype(float)
        for class_id in np.unique(out_label[valid]):
            region = (out_label == class_id).astype(np.uint8)
            interior = cv2.erode(region, np.ones((5, 5), np.uint8)).astype(bool)  # away from blended borders
            if interior.any():
                inside = brightness[interior]
                assert np.ptp(inside) <= 2, "labels stay on their pixels through scale, crop and flip"
