"""Data sets beyond CamVid: the cityscapes and folders layouts, class matching by name, bad data named by file, the
streaming loader, and seg-eval on each layout against a confusion matrix counted here by hand."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist
from camvid_fixtures import striped_label, write_camvid11
from torch.utils.data import DistributedSampler

from seg_node.core.errors import UserError
from seg_node.core.model_files import resolve_model
from seg_node.core.pipeline import SegmentationPipeline
from seg_node.toolchain.data import IGNORE_INDEX, ClassTable, DatasetError, cityscapes_classes, open_dataset
from seg_node.toolchain.data.class_match import ClassMismatchError, dataset_for_model, label_lut, read_class_map
from seg_node.toolchain.data.loader import make_loader
from seg_node.toolchain.evaluation.evaluate import main as eval_main
from seg_node.toolchain.evaluation.evaluate import run_evaluation
from seg_node.toolchain.random_model import make_random_model

HEIGHT, WIDTH = 48, 64
# Cityscapes label ids written into the labels -> their training ids, from the benchmark's label definitions
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 21: 8, 23: 10, 24: 11, 26: 13, 33: 18, 0: IGNORE_INDEX, 1: IGNORE_INDEX,
                        4: IGNORE_INDEX}
# The folders data set: five classes and a void row, in an order unlike the model's
DATA_ROWS = [("void", (0, 0, 0)), ("sky", (70, 130, 180)), ("road", (128, 64, 128)), ("car", (0, 0, 142)),
             ("person", (220, 20, 60)), ("tree", (107, 142, 35))]
DATA_CLASSES = ("sky", "road", "car", "person", "tree")
MODEL_CLASSES = ClassTable(("road", "car", "tree", "sky", "person"),
                           ((128, 64, 128), (0, 0, 142), (107, 142, 35), (70, 130, 180), (220, 20, 60)))
IGNORED_COLOUR = (1, 2, 3)


def frame_image(label: np.ndarray, seed: int) -> np.ndarray:
    """An RGB frame whose brightness follows the label, with noise."""
    rng = np.random.default_rng(seed)
    return np.clip(label[..., None].astype(int) * 9 % 256 + rng.integers(0, 60, label.shape + (3,)), 0, 255
                   ).astype(np.uint8)


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_cityscapes(root: Path, split: str = "val", suffix: str = "_gtFine_labelIds.png") -> dict[str, np.ndarray]:
    """Three frames in two cities; returns frame name -> the training-id label expected back."""
    expected = {}
    ids = list(CITYSCAPES_TRAIN_IDS)
    for index, (city, number) in enumerate([("aachen", 19), ("aachen", 20), ("bochum", 7)]):
        stored = striped_label(HEIGHT, WIDTH, ids, seed=index)
        name = f"{city}_{number:06d}_000019"
        train_ids = np.vectorize(CITYSCAPES_TRAIN_IDS.get)(stored).astype(np.uint8)
        write_rgb(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", frame_image(train_ids, index))
        (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "gtFine" / split / city / f"{name}{suffix}"),
                    stored if "labelIds" in suffix else train_ids)
        expected[name] = train_ids
    return expected


def write_folders(root: Path, colour_labels: bool, split: str = "test", count: int = 3) -> dict[str, np.ndarray]:
    """A folders-layout split with id or colour labels; returns frame name -> the label expected back (data ids)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.csv").write_text("name,r,g,b\n" + "".join(f"{n},{r},{g},{b}\n" for n, (r, g, b) in DATA_ROWS))
    (root / split / "labels").mkdir(parents=True, exist_ok=True)
    colours = np.array([colour for _, colour in DATA_ROWS] + [IGNORED_COLOUR], np.uint8)
    expected = {}
    for index in range(count):
        rows = striped_label(HEIGHT, WIDTH, [1, 2, 3, 0, 4, 5, 6], seed=10 + index)  # 6: unlabelled
        data_ids = np.array([IGNORE_INDEX, 0, 1, 2, 3, 4, IGNORE_INDEX], np.uint8)[rows]
        name = f"cam0_{index:04d}"
        write_rgb(root / split / "images" / f"{name}.png", frame_image(data_ids, index))
        label_path = root / split / "labels" / f"{name}.png"
        if colour_labels:
            write_rgb(label_path, colours[rows])
        else:
            cv2.imwrite(str(label_path), np.where(rows == 6, IGNORE_INDEX, rows).astype(np.uint8))
        expected[name] = data_ids
    return expected


@pytest.fixture(scope="module")
def folders_model(tmp_path_factory) -> Path:
    return make_random_model(tmp_path_factory.mktemp("folders_model") / "random", classes=MODEL_CLASSES)


@pytest.fixture(scope="module")
def cityscapes_model(tmp_path_factory) -> Path:
    return make_random_model(tmp_path_factory.mktemp("cityscapes_model") / "random", classes=cityscapes_classes())


# --- reading the layouts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"])
def test_cityscapes_layout_reads_the_19_training_classes(tmp_path, suffix):
    expected = write_cityscapes(tmp_path, suffix=suffix)
    (tmp_path / "gtFine" / "val" / "aachen" / "aachen_000019_000019_gtFine_polygons.json").write_text("{}")
    dataset = open_dataset(tmp_path, "val")
    assert dataset.layout == "cityscapes" and dataset.classes.num_classes == 19
    assert dataset.classes.names[:3] == ("road", "sidewalk", "building") and dataset.classes.names[18] == "bicycle"
    assert dataset.classes.colours[0] == (128, 64, 128)
    assert [s.name for s in dataset.samples()] == sorted(expected)
    for sample in dataset.samples():
        image, label = dataset.load(sample)
        assert image.shape == (HEIGHT, WIDTH, 3)
        np.testing.assert_array_equal(label, expected[sample.name])


@pytest.mark.parametrize("colour_labels", [False, True], ids=["id labels", "colour labels"])
def test_folders_layout_reads_id_and_colour_labels_with_a_void_row(tmp_path, colour_labels):
    expected = write_folders(tmp_path, colour_labels)
    options = {"ignore_colours": (IGNORED_COLOUR,)} if colour_labels else {}
    dataset = open_dataset(tmp_path, "test", **options)
    assert dataset.layout == "folders"
    assert dataset.classes.names == DATA_CLASSES and dataset.classes.colours[0] == (70, 130, 180)
    for sample in dataset.samples():
        _, label = dataset.load(sample)
        np.testing.assert_array_equal(label, expected[sample.name])
    identity = dataset.identity()
    (tmp_path / "classes.csv").write_text((tmp_path / "classes.csv").read_text().replace("sky", "heaven"))
    assert open_dataset(tmp_path, "test", **options).identity()["sha256"] != identity["sha256"], \
        "the class table is part of what the checksum covers"


def test_class_table_round_trips_through_csv(tmp_path):
    MODEL_CLASSES.to_csv(tmp_path / "classes.csv")
    assert ClassTable.from_csv(tmp_path / "classes.csv") == MODEL_CLASSES
    assert MODEL_CLASSES.palette[0] == [128, 64, 128] and MODEL_CLASSES.num_classes == 5


def test_auto_layout_lists_what_each_layout_lacks_and_refuses_to_guess(tmp_path):
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetError) as error:
        open_dataset(tmp_path, "val")
    message = str(error.value)
    assert "camvid lacks" in message and "valannot/" in message and "class_dict.csv" in message
    assert "cityscapes lacks" in message and "leftImg8bit/val/" in message and "gtFine/val/" in message
    assert "folders lacks" in message and "classes.csv" in message and "val/images/" in message
    write_camvid11(tmp_path / "both", {"test": 1})
    write_folders(tmp_path / "both", colour_labels=False, count=1)
    with pytest.raises(DatasetError, match="matches the layouts camvid, folders: choose one with --layout"):
        open_dataset(tmp_path / "both", "test")
    assert open_dataset(tmp_path / "both", "test", "folders").classes.names == DATA_CLASSES
    with pytest.raises(DatasetError, match="the camvid layout takes no option ignore_colours"):
        open_dataset(tmp_path / "both", "test", "camvid", ignore_colours=((1, 2, 3),))


# --- bad data: a message naming the file -----------------------------------------------------------------------

def folders_error(root: Path, **options) -> str:
    with pytest.raises(DatasetError) as error:
        dataset = open_dataset(root, "test", "folders", **options)
        for sample in dataset.samples():
            dataset.load(sample)
    return str(error.value)


def test_a_label_of_another_size_than_its_image_names_both(tmp_path):
    write_folders(tmp_path, colour_labels=False)
    label = tmp_path / "test" / "labels" / "cam0_0001.png"
    cv2.imwrite(str(label), np.zeros((30, 40), np.uint8))
    message = folders_error(tmp_path)
    assert f"{label}: label is 40x30 but its image {tmp_path / 'test' / 'images' / 'cam0_0001.png'} is 64x48" \
        in message


def test_an_image_without_a_label_and_a_label_without_an_image_are_named(tmp_path):
    write_folders(tmp_path, colour_labels=False)
    (tmp_path / "test" / "labels" / "cam0_0002.png").unlink()
    message = folders_error(tmp_path)
    assert "1 images have no label" in message and str(tmp_path / "test" / "images" / "cam0_0002.png") in message
    shutil.copy(tmp_path / "test" / "labels" / "cam0_0000.png", tmp_path / "test" / "labels" / "cam0_0002.png")
    shutil.copy(tmp_path / "test" / "labels" / "cam0_0000.png", tmp_path / "test" / "labels" / "stray.png")
    message = folders_error(tmp_path)
    assert "1 labels have no image" in message and str(tmp_path / "test" / "labels" / "stray.png") in message


def test_label_ids_outside_the_class_table_are_counted_and_located(tmp_path):
    write_folders(tmp_path, colour_labels=False)
    label_path = tmp_path / "test" / "labels" / "cam0_0001.png"
    label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
    label[5, 7] = label[5, 9] = 9
    label[20, 3] = 40
    cv2.imwrite(str(label_path), label)
    message = folders_error(tmp_path)
    assert message.startswith(f"{label_path}: label ids [9, 40] are not in the class table")
    assert str(tmp_path / "classes.csv") in message and "3 pixels, first at (x, y) (7, 5), (9, 5), (3, 20)" in message


def test_colours_outside_the_class_table_are_counted_and_located(tmp_path):
    write_folders(tmp_path, colour_labels=True)
    label_path = tmp_path / "test" / "labels" / "cam0_0000.png"
    message = folders_error(tmp_path)  # the ignored colour, not listed as ignored
    assert message.startswith(f"{label_path}: ") and "(1, 2, 3)" in message and "--ignore-colour" in message
    label = cv2.cvtColor(cv2.imread(str(label_path)), cv2.COLOR_BGR2RGB)
    label[label.sum(-1) == 6] = (70, 130, 180)
    label[2, 4] = label[3, 1] = (9, 9, 9)
    write_rgb(label_path, label)
    message = folders_error(tmp_path, ignore_colours=(IGNORED_COLOUR,))
    assert message.startswith(f"{label_path}: 2 pixels have colours not in the class table")
    assert "[(9, 9, 9)], first at (x, y) (4, 2), (1, 3)" in message


def test_an_empty_split_is_named(tmp_path):
    write_folders(tmp_path, colour_labels=False, count=0)
    (tmp_path / "test" / "images").mkdir()
    assert "the split is empty" in folders_error(tmp_path) and str(tmp_path / "test" / "images") in folders_error(
        tmp_path)


@pytest.mark.parametrize(("text", "line", "shown"), [
    ("name,r,g,b\nsky,1,2\n", "line 2", "'sky,1,2'"),
    ("name,r,g,b\nsky,1,2,3\nroad,1,2,300\n", "line 3", "'road,1,2,300'"),
    ("name,r,g,b\nsky,1,2,3\n,4,5,6\n", "line 3", "',4,5,6'"),
    ("name,red,green,blue\nsky,1,2,3\n", "first line", "header"),
])
def test_a_malformed_classes_csv_row_is_named_by_line(tmp_path, text, line, shown):
    write_folders(tmp_path, colour_labels=False, count=1)
    (tmp_path / "classes.csv").write_text(text)
    message = folders_error(tmp_path)
    assert message.startswith(f"{tmp_path / 'classes.csv'}") and line in message and shown in message


def test_repeated_class_names_and_colours_in_classes_csv_are_refused(tmp_path):
    write_folders(tmp_path, colour_labels=False, count=1)
    (tmp_path / "classes.csv").write_text("name,r,g,b\nsky,1,2,3\nsky,4,5,6\n")
    assert "repeated: ['sky']" in folders_error(tmp_path)
    (tmp_path / "classes.csv").write_text("name,r,g,b\nsky,1,2,3\nroad,1,2,3\n")
    assert "colour (1, 2, 3) of 'road' is given to another class" in folders_error(tmp_path)


def test_a_cityscapes_folder_without_gtfine_is_named(tmp_path):
    write_cityscapes(tmp_path)
    shutil.rmtree(tmp_path / "gtFine")
    with pytest.raises(DatasetError) as error:
        open_dataset(tmp_path, "val", "cityscapes")
    assert f"lacks {tmp_path / 'gtFine' / 'val'}/" in str(error.value) and "gtFine_trainvaltest.zip" in str(error.value)
    with pytest.raises(DatasetError, match=r"cityscapes lacks .*gtFine/val/"):
        open_dataset(tmp_path, "val")


def test_a_cityscapes_label_id_the_benchmark_does_not_define_is_named(tmp_path):
    write_cityscapes(tmp_path)
    label_path = next((tmp_path / "gtFine" / "val" / "bochum").glob("*labelIds.png"))
    label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
    label[0, 0] = 200
    cv2.imwrite(str(label_path), label)
    dataset = open_dataset(tmp_path, "val")
    with pytest.raises(DatasetError, match=r"label ids \[200\] are not in the class table \(Cityscapes gtFine_labelIds"
                                           r"\): 1 pixels, first at \(x, y\) \(0, 0\)"):
        dataset.load(next(s for s in dataset.samples() if s.label_path == label_path))


# --- class matching --------------------------------------------------------------------------------------------

def test_classes_match_by_name_in_any_order():
    data = ClassTable(DATA_CLASSES, tuple(colour for _, colour in DATA_ROWS[1:]))
    lut = label_lut(data, MODEL_CLASSES.names)
    assert lut[:5].tolist() == [3, 0, 1, 4, 2] and lut[IGNORE_INDEX] == IGNORE_INDEX and lut[5] == IGNORE_INDEX


def test_a_class_map_renames_merges_and_drops_classes(tmp_path):
    data = ClassTable(("heaven", "road", "car", "truck", "person", "tree", "junk"), ((0, 0, 0),) * 7)
    (tmp_path / "map.csv").write_text("data_class,model_class\nheaven,sky\ntruck,car\njunk,void\n")
    class_map = read_class_map(tmp_path / "map.csv")
    lut = label_lut(data, MODEL_CLASSES.names, class_map)
    assert lut[:7].tolist() == [3, 0, 1, 1, 4, 2, IGNORE_INDEX]
    with_void = (*MODEL_CLASSES.names, "void")  # a model class named void: the map's void still leaves junk out
    assert label_lut(data, with_void, class_map)[6] == IGNORE_INDEX


def test_mismatched_classes_are_refused_with_both_lists(tmp_path):
    data = ClassTable(("sky", "road", "lorry"), ((0, 0, 0),) * 3)
    with pytest.raises(ClassMismatchError) as error:
        label_lut(data, MODEL_CLASSES.names)
    message = str(error.value)
    assert "data classes ['lorry'] match no model class" in message
    assert "Data set classes: ['sky', 'road', 'lorry']" in message
    assert "model classes: ['road', 'car', 'tree', 'sky', 'person']" in message and "--class-map" in message
    with pytest.raises(ClassMismatchError, match=r"model classes \['bus'\] the model lacks"):
        label_lut(data, MODEL_CLASSES.names, {"lorry": "bus"})
    with pytest.raises(ClassMismatchError, match=r"data classes \['van'\] the data set lacks"):
        label_lut(data, MODEL_CLASSES.names, {"lorry": "car", "van": "car"})
    (tmp_path / "map.csv").write_text("data_class,model_class\nlorry\n")
    with pytest.raises(UserError, match=r"map\.csv line 2: expected `data_class,model_class`"):
        read_class_map(tmp_path / "map.csv")


def test_a_data_set_for_a_model_gives_labels_in_the_model_ids(tmp_path):
    expected = write_folders(tmp_path, colour_labels=False, count=1)
    dataset = open_dataset(tmp_path, "test")
    matched = dataset_for_model(dataset, MODEL_CLASSES.names, model_palette=MODEL_CLASSES.palette)
    assert matched.classes == MODEL_CLASSES and matched.identity() == dataset.identity()
    _, label = matched.load(matched.samples()[0])
    in_model_ids = np.array([MODEL_CLASSES.names.index(n) for n in DATA_CLASSES] + [IGNORE_INDEX] * 251, np.uint8)
    np.testing.assert_array_equal(label, in_model_ids[expected["cam0_0000"]])
    assert dataset_for_model(dataset, DATA_CLASSES) is dataset


# --- the streaming loader --------------------------------------------------------------------------------------

def crop_transform(image, label, rng):
    y, x = rng.integers(0, HEIGHT - 16), rng.integers(0, WIDTH - 16)
    return image[y:y + 16, x:x + 16].transpose(2, 0, 1).astype(np.float32), label[y:y + 16, x:x + 16].astype(np.int64)


def epoch_batches(loader, epoch: int) -> list:
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_the_loader_streams_batches_reproducibly_whatever_the_workers(tmp_path):
    write_folders(tmp_path, colour_labels=False, count=5)
    dataset = open_dataset(tmp_path, "test")
    in_process = make_loader(dataset, crop_transform, batch_size=2, shuffle=True, workers=0, seed=3)
    batches = epoch_batches(in_process, 0)
    assert [tuple(x.shape) for x, _ in batches] == [(2, 3, 16, 16)] * 2 + [(1, 3, 16, 16)]
    assert batches[0][1].dtype == torch.int64
    in_worker = make_loader(dataset, crop_transform, batch_size=2, shuffle=True, workers=1, seed=3)
    for (x, y), (x_worker, y_worker) in zip(batches, epoch_batches(in_worker, 0), strict=True):
        assert torch.equal(x, x_worker) and torch.equal(y, y_worker)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches, epoch_batches(in_process, 1))), \
        "a new epoch draws new crops and a new order"
    whole = make_loader(dataset, batch_size=1)
    assert len(whole) == 5 and sum(int((y != IGNORE_INDEX).sum()) for _, y in whole) > 0
    assert len(make_loader(dataset, crop_transform, batch_size=2, drop_last=True)) == 2


def test_the_loader_shares_frames_out_under_torch_distributed(tmp_path):
    write_folders(tmp_path, colour_labels=False, count=4)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        loader = make_loader(open_dataset(tmp_path, "test"), crop_transform, batch_size=2, shuffle=True)
        assert isinstance(loader.loader.sampler, DistributedSampler)
        first, second = epoch_batches(loader, 0), epoch_batches(loader, 1)
        assert len(first) == len(second) == 2 and not torch.equal(first[0][0], second[0][0])
    finally:
        dist.destroy_process_group()


# --- seg-eval on other layouts, against a confusion matrix counted here ----------------------------------------

def hand_counted(model: Path, frames: dict[Path, np.ndarray], classes: int) -> np.ndarray:
    """Confusion matrix (rows: truth) of the model's masks on image files, counted pixel by pixel."""
    pipeline = SegmentationPipeline.from_model(model, "onnxruntime", "cpu")
    matrix = np.zeros((classes, classes), np.int64)
    for image_path, truth in frames.items():
        mask = pipeline.segment(cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB), "rgb").mask
        for t, p in zip(truth.ravel().tolist(), mask.ravel().tolist()):
            if t != IGNORE_INDEX:
                matrix[t, p] += 1
    return matrix


def expected_scores(matrix: np.ndarray, names) -> dict:
    """Per class, in percent: IoU = tp / (tp + fp + fn), precision = tp / predicted, recall = tp / labelled."""
    scores = {}
    for c, name in enumerate(names):
        tp, labelled, predicted = matrix[c, c], matrix[c].sum(), matrix[:, c].sum()
        def percent(num, den):
            return None if den == 0 else round(100 * num / den, 2)
        scores[name] = {"iou": percent(tp, labelled + predicted - tp), "precision": percent(tp, predicted),
                        "recall": percent(tp, labelled), "f1": percent(2 * tp, labelled + predicted)}
    return scores


def check_evaluation(result: dict, matrix: np.ndarray, names) -> None:
    assert result["confusion_matrix"] == matrix.tolist()
    assert result["per_class"] == expected_scores(matrix, names)
    ious = [v["iou"] for v in result["per_class"].values() if v["iou"] is not None]
    assert abs(result["miou"] - np.mean(ious)) <= 0.01
    assert result["pixel_accuracy"] == round(100 * np.trace(matrix) / matrix.sum(), 2)


def test_seg_eval_on_cityscapes_scores_the_19_classes(tmp_path, cityscapes_model):
    expected = write_cityscapes(tmp_path / "cityscapes")
    result = run_evaluation(["--model", str(cityscapes_model), "--data", str(tmp_path / "cityscapes"), "--split",
                             "val", "--out", str(tmp_path / "eval")])
    frames = {next((tmp_path / "cityscapes" / "leftImg8bit" / "val").glob(f"*/{name}_leftImg8bit.png")): label
              for name, label in expected.items()}
    check_evaluation(result, hand_counted(cityscapes_model, frames, 19), cityscapes_classes().names)
    assert result["frames"] == 3 and result["data"]["name"] == "Cityscapes (19 training classes)"


@pytest.mark.parametrize("colour_labels", [False, True], ids=["id labels", "colour labels"])
def test_seg_eval_on_folders_matches_classes_by_name(tmp_path, folders_model, colour_labels):
    expected = write_folders(tmp_path / "mine", colour_labels)
    options = ["--ignore-colour", ",".join(map(str, IGNORED_COLOUR))] if colour_labels else []
    result = run_evaluation(["--model", str(folders_model), "--data", str(tmp_path / "mine"), *options,
                             "--out", str(tmp_path / "eval")])
    to_model = np.array([MODEL_CLASSES.names.index(n) for n in DATA_CLASSES] + [IGNORE_INDEX] * 251, np.uint8)
    images = tmp_path / "mine" / "test" / "images"
    frames = {images / f"{name}.png": to_model[label] for name, label in expected.items()}
    check_evaluation(result, hand_counted(folders_model, frames, 5), MODEL_CLASSES.names)
    assert list(result["per_class"]) == list(MODEL_CLASSES.names)
    assert (tmp_path / "eval" / "confusion.png").is_file() and (tmp_path / "eval" / "predictions.png").is_file()


def test_seg_eval_refuses_other_classes_with_both_lists_and_takes_a_class_map(tmp_path, folders_model, capsys):
    write_folders(tmp_path / "mine", colour_labels=False, count=1)
    (tmp_path / "mine" / "classes.csv").write_text((tmp_path / "mine" / "classes.csv").read_text()
                                                   .replace("person", "pedestrian"))
    with pytest.raises(SystemExit) as stop:
        eval_main(["--model", str(folders_model), "--data", str(tmp_path / "mine"), "--out", str(tmp_path / "e")])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "data classes ['pedestrian'] match no model class" in error
    assert "['sky', 'road', 'car', 'pedestrian', 'tree']" in error
    assert "['road', 'car', 'tree', 'sky', 'person']" in error
    (tmp_path / "map.csv").write_text("data_class,model_class\npedestrian,person\n")
    result = run_evaluation(["--model", str(folders_model), "--data", str(tmp_path / "mine"), "--class-map",
                             str(tmp_path / "map.csv"), "--out", str(tmp_path / "e")])
    assert result["frames"] == 1 and list(result["per_class"]) == list(MODEL_CLASSES.names)


# --- opt-in: CamVid re-written into the folders layout gives the shipped default's card figure ------------------

CAMVID_ROOT = os.environ.get("CAMVID_ROOT")


def camvid_as_folders(source: Path, root: Path, colour_labels: bool) -> None:
    """CamVid's test split as <root>/test/{images,labels} with classes.csv in reversed order and a void row."""
    camvid = open_dataset(source, "test", "camvid")
    order = list(reversed(range(camvid.classes.num_classes)))
    rows = [("void", (0, 0, 0))] + [(camvid.classes.names[i], camvid.classes.colours[i]) for i in order]
    (root / "test" / "images").mkdir(parents=True)
    (root / "test" / "labels").mkdir()
    ClassTable(tuple(n for n, _ in rows), tuple(c for _, c in rows)).to_csv(root / "classes.csv")
    stored = np.zeros(256, np.uint8)  # CamVid id -> row of classes.csv (void: row 0)
    stored[order] = np.arange(1, len(order) + 1)
    palette = np.array([c for _, c in rows], np.uint8)
    for sample in camvid.samples():
        os.symlink(sample.image_path, root / "test" / "images" / sample.image_path.name)
        camvid_label = camvid.read_label(sample)
        if colour_labels:  # void in the void row's colour
            write_rgb(root / "test" / "labels" / f"{sample.name}.png", palette[stored[camvid_label]])
        else:  # void as 255
            cv2.imwrite(str(root / "test" / "labels" / f"{sample.name}.png"),
                        np.where(camvid_label == IGNORE_INDEX, IGNORE_INDEX, stored[camvid_label]).astype(np.uint8))


@pytest.mark.skipif(not CAMVID_ROOT, reason="set CAMVID_ROOT to run the full-data-set checks")
@pytest.mark.parametrize("colour_labels", [False, True], ids=["id labels", "colour labels"])
def test_camvid_rewritten_as_folders_gives_the_default_models_card_miou(tmp_path, colour_labels):
    camvid_as_folders(Path(CAMVID_ROOT), tmp_path / "camvid_folders", colour_labels)
    card, _ = resolve_model(None)
    result = run_evaluation(["--data", str(tmp_path / "camvid_folders"), "--threads", "2", "--out",
                             str(tmp_path / "eval")])
    assert result["frames"] == 233
    assert abs(result["miou"] - card.metrics["camvid_test"]["miou"]) <= 0.01, result["miou"]
