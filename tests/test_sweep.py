"""The pruning study (seg-sweep): its plan, the MACs target search, the Taylor criterion on every architecture, and
one end-to-end run on a tiny data set that resumes without redoing points and whose plots redraw from its JSON."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import cv2
import onnx
import pytest
import torch
import torch_pruning as tp
from camvid_fixtures import write_camvid11
from ros_harness import REPO
from torch import nn

from seg_node.core.architectures import build_model
from seg_node.core.model_card import ModelCard
from seg_node.toolchain.compression import study_points
from seg_node.toolchain.compression.config import IMPORTANCE_CRITERIA, FineTuning, PruningConfig
from seg_node.toolchain.compression.macs_target import ratio_for_macs
from seg_node.toolchain.compression.prune import accumulate_taylor_gradients, count_macs_and_params, make_pruner
from seg_node.toolchain.compression.study_plan import (
    Point,
    StudyPlanError,
    StudySettings,
    making_key,
    measuring_key,
    plan,
)
from seg_node.toolchain.compression.sweep import main as sweep_main
from seg_node.toolchain.compression.taylor import TaylorImportance
from seg_node.toolchain.evaluation.timing import call_times_in_turns
from seg_node.toolchain.random_model import make_random_model
from seg_node.toolchain.training.config import RecipeConfig

SIZE = (32, 48)
TINY_UNET = {"name": "unet", "base_width": 16, "depth": 2}
#: BiSeNetV2 at a sixteenth of its widths: its expansion's depthwise paths root pruning groups of their own
TINY_BISENETV2 = {"name": "bisenetv2", "detail_channels": [8, 8, 16], "semantic_channels": [8, 8, 16, 16],
                  "expand": 2, "head_channels": 16, "aux_channels": 8}
PRECISIONS = ("fp32", "int8_static", "int8_dynamic", "fp16")
DISTILLED = FineTuning(recipe=RecipeConfig(distill_weight=1.0))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny networks run fastest on one thread (two threads on two busy cores spend more time meeting than
    computing); as the study's --threads 1 below."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_plan_holds_every_comparison_and_keys_name_what_each_result_depends_on():
    settings = StudySettings(fine_tuning=DISTILLED)
    first = plan("m", settings, None)
    assert [p.label for p in first] == ["given", "unpruned", "l1 50% all", "l2 50% all", "taylor 50% all",
                                        "bn_scale 50% all", "random 50% all"]
    points = plan("m", settings, "taylor")
    assert list(points)[:len(first)] == list(first)
    compared = Point("m", "taylor", "all", 0.5)
    assert points[compared] == ["criteria", "ratios", "scopes", "precisions"]
    assert points[Point("m")] == ["ratios", "precisions"]
    assert {p.macs_target for p, groups in points.items() if "ratios" in groups} == {0.0, 0.3, 0.5, 0.7}
    assert {p.scope for p, groups in points.items() if "scopes" in groups} == {"all", "decoder"}
    quantized = [p for p in points if p.precision != "fp32"]
    assert {(p.criterion, p.precision) for p in quantized} == {
        (c, q) for c in (None, "taylor") for q in ("int8_static", "int8_dynamic", "fp16")}
    assert all(list(points).index(p.source) < list(points).index(p) for p in quantized)

    data = {"splits": {"train": "a", "val": "b", "test": "c"}}
    longer = replace(settings, fine_tuning=replace(settings.fine_tuning,
                                                   schedule=replace(settings.fine_tuning.schedule, epochs=9)))
    timed = replace(settings, timing_runs=7)
    key = making_key(compared, "sha", settings, data)
    assert making_key(compared, "sha", longer, data) != key, "another budget makes another model"
    assert making_key(compared, "sha", timed, data) == key, "other timing reuses the model and its result"
    assert measuring_key(key, data) != measuring_key(key, {"splits": {**data["splits"], "test": "d"}}), \
        "other test frames: measured again"
    assert making_key(compared, "other sha", settings, data) != key, "other weights under the same name"
    int8 = replace(compared, precision="int8_static")
    assert making_key(int8, "sha", replace(settings, calibration_frames=8), data) != making_key(
        int8, "sha", settings, data)
    assert making_key(Point("m", fine_tuned=False), "sha", longer, data) == making_key(
        Point("m", fine_tuned=False), "sha", settings, data), "the model as given depends on its weights only"
    for bad in ({"criteria": ("l3",)}, {"compared_target": 0.0}, {"precisions": ("int4",)},
                {"fine_tuning": FineTuning()}):  # seg-prune's default: no distillation
        with pytest.raises(StudyPlanError):
            StudySettings(**{"fine_tuning": DISTILLED, **bad})


def test_points_are_timed_in_turns_so_a_change_of_load_falls_on_all_alike():
    calls = []
    runs = {name: (lambda index, _name=name: calls.append((_name, index))) for name in ("a", "b")}
    times = call_times_in_turns(runs, count=5, warmup=1, turn=2)
    assert {name: len(values) for name, values in times.items()} == {"a": 5, "b": 5}
    block = [(name, index) for start, count in ((0, 2), (2, 2), (4, 1))
             for name in ("a", "b") for index in (start, *range(start, start + count))]  # one untimed call first
    assert calls == [("a", 0), ("b", 0), *block]


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_the_channel_ratio_for_a_share_of_the_macs_is_found_by_measuring(target):
    torch.manual_seed(0)
    model = build_model(TINY_UNET, 11)
    pruning = PruningConfig(0.0, "l2", steps=1, round_to=None)
    ratio, reduction = ratio_for_macs(model, pruning, target, *SIZE)
    assert abs(reduction - target) < 0.03
    assert ratio < target, "thinning both sides of a convolution removes more MACs than channels"
    base_macs, _ = count_macs_and_params(model, *SIZE)
    make_pruner(model, replace(pruning, ratio=ratio), *SIZE).step()
    assert 1 - count_macs_and_params(model, *SIZE)[0] / base_macs == pytest.approx(reduction)


def test_a_macs_target_the_scope_cannot_reach_ends_near_the_per_layer_cap():
    model = build_model(TINY_UNET, 11)
    ratio, reduction = ratio_for_macs(model, PruningConfig(0.0, steps=1, round_to=None, scope="decoder"), 0.9,
                                      *SIZE)
    assert ratio > 0.7 and reduction < 0.9


def test_taylor_importance_ranks_a_channel_the_loss_ignores_lowest_whatever_its_magnitude():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        model[0].weight[5] *= 100  # the largest weights, of a channel nothing downstream reads
        model[3].weight[:, 5] = 0
    x = torch.randn(2, 3, 8, 8)
    model(x).square().mean().backward()
    weights = [p.detach().clone() for p in model.parameters()]
    group = tp.DependencyGraph().build_dependency(model, example_inputs=x).get_pruning_group(
        model[0], tp.prune_conv_out_channels, idxs=list(range(8)))
    assert IMPORTANCE_CRITERIA["l1"]()(group).argmax() == 5
    assert TaylorImportance()(group).argmin() == 5
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters())), "scoring leaves the weights alone"


@pytest.mark.parametrize("ratio", [0.04, 0.3])
def test_taylor_pruning_keeps_bisenetv2_consistent_where_its_groups_are_rooted_at_depthwise_convolutions(ratio):
    """Torch-Pruning's own Taylor importance sized such groups by the projection after the concatenated paths
    (six times the root's channels) and left depthwise convolutions with fewer outputs than groups."""
    torch.manual_seed(0)
    model = build_model(TINY_BISENETV2, 11)
    pruner = make_pruner(model, PruningConfig(ratio, "taylor", steps=1, round_to=None), *SIZE)
    accumulate_taylor_gradients(model, [(torch.randn(2, 3, *SIZE), torch.randint(0, 11, (2, *SIZE)))])
    base_macs, _ = count_macs_and_params(model, *SIZE)
    pruner.step()
    assert count_macs_and_params(model, *SIZE)[0] < base_macs
    assert model.train()(torch.randn(2, 3, *SIZE))[0].shape == (2, 11, *SIZE)
    assert model.eval()(torch.randn(1, 3, *SIZE)).shape == (1, 11, *SIZE)


def study_arguments(cards, data, out) -> list[str]:
    return ["run", "--models", *map(str, cards), "--data", str(data), "--fine-tune-epochs", "1",
            "--max-steps-per-epoch", "1", "--batch-size", "2", "--crop", *map(str, SIZE), "--scale-range", "1", "1",
            "--class-weights", "none", "--workers", "0", "--threads", "1", "--timing-threads", "1", "--round-to", "0",
            "--calibration-frames", "2", "--timing-runs", "3", "--out", str(out)]


def check_points(points: list[dict], model: str, best: str, out) -> None:
    """Every comparison of the study is in the results, with figures that hold together."""
    mine = [p for p in points if p["model"] == model]
    by_label = {p["label"]: p for p in mine}
    assert len(by_label) == len(mine) == 16
    criteria = [p for p in mine if "criteria" in p["groups"]]
    assert {p["criterion"] for p in criteria} == {"l1", "l2", "taylor", "bn_scale", "random"}
    assert best == max(criteria, key=lambda p: p["val_miou"])["criterion"], "chosen on val"
    ratios = sorted((p for p in mine if "ratios" in p["groups"]), key=lambda p: p["macs_target"])
    assert [(p["macs_target"], p["criterion"]) for p in ratios] == [(0.0, None), (0.3, best), (0.5, best), (0.7, best)]
    assert [p["macs_reduction"] for p in ratios] == sorted({p["macs_reduction"] for p in ratios})
    assert all(abs(p["macs_reduction"] - p["macs_target"]) < 0.08 for p in ratios + criteria), "MACs measured"
    assert ratios[0]["gmacs"] > ratios[2]["gmacs"] and ratios[0]["params_m"] > ratios[2]["params_m"]
    assert {(p["scope"], p["criterion"]) for p in mine if "scopes" in p["groups"]} == {("all", best), ("decoder", best)}
    for source in ("unpruned", f"{best} 50% all"):
        fp32 = by_label[source]
        variants = {precision: by_label[f"{source} {precision}" if precision != "fp32" else source]
                    for precision in PRECISIONS}
        assert all("precisions" in v["groups"] and v["gmacs"] == fp32["gmacs"] for v in variants.values())
        assert variants["fp16"]["onnx_mb"] < fp32["onnx_mb"]
        for precision, made in variants.items():
            graph = onnx.load(str((out / made["card"]).with_suffix(".onnx"))).graph
            ops = {node.op_type for node in graph.node}
            assert {"fp32": "Conv" in ops, "int8_static": "QuantizeLinear" in ops,
                    "int8_dynamic": "DynamicQuantizeLinear" in ops and "ConvInteger" in ops,
                    "fp16": any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)}[precision]
    assert not by_label["given"]["fine_tuned"] and by_label["given"]["groups"] == ["reference"]
    for p in mine:
        assert 0 <= p["test_miou"] <= 100 and 0 <= p["val_miou"] <= 100
        assert 0 < p["latency_median_ms"] <= p["latency_p95_ms"]
        assert p["fps"] == pytest.approx(1e3 / p["latency_median_ms"], rel=0.01)


def check_headline(headline: str, results: dict) -> None:
    """A row per model: its best criterion, and under each heading the figures of the point it names."""
    rows = [line.split(" | ") for line in headline.splitlines() if line.startswith("| tiny_")]
    heading = next(line for line in headline.splitlines() if line.startswith("| model"))
    assert heading.split(" | ")[3:] == ["unpruned", "30%", "50%", "70%", "random 50%", "50% decoder only",
                                        "50% int8_static", "50% int8_dynamic", "50% fp16 |"]
    assert [row[0] for row in rows] == ["| tiny_unet", "| tiny_bisenetv2"]
    for row in rows:
        points = {p["label"]: p for p in results["points"] if p["model"] == row[0][2:]}
        best = results["models"][row[0][2:]]["best_criterion"]
        assert row[2] == best
        for column, label in ((3, "unpruned"), (5, f"{best} 50% all"), (7, "random 50% all"),
                              (8, f"{best} 50% decoder"), (10, f"{best} 50% all int8_dynamic")):
            point = points[label]
            assert row[column].strip(" |") == f"{point['test_miou']:.1f} / {point['latency_median_ms']:.1f}", label


def count_calls(monkeypatch, names: tuple[str, ...]) -> dict[str, int]:
    """Count calls of study_points' functions that make and measure models (still doing the work)."""
    calls = dict.fromkeys(names, 0)
    for name in names:
        original = getattr(study_points, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(study_points, name, counted)
    return calls


def test_the_study_runs_end_to_end_resumes_without_redoing_points_and_redraws_its_plots(tmp_path, monkeypatch,
                                                                                        capsys):
    data = write_camvid11(tmp_path / "camvid", {"train": 4, "val": 2, "test": 2}, *SIZE)
    cards = [make_random_model(tmp_path / name, architecture, size=SIZE).with_suffix(".json")
             for name, architecture in (("tiny_unet", TINY_UNET),  # BiSeNetV2 as its card ships: native logits
                                        ("tiny_bisenetv2", {**TINY_BISENETV2, "upsample_logits": False}))]
    monkeypatch.chdir(tmp_path)  # the models given as relative paths, as from a checkout
    cards = [card.relative_to(tmp_path) for card in cards]
    out = tmp_path / "study"
    sweep_main(study_arguments(cards, data, out))
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["tiny_unet", "tiny_bisenetv2"]
    for model, record in results["models"].items():
        check_points(results["points"], model, record["best_criterion"], out)
    assert "32 points, 32 measured now" in capsys.readouterr().out
    for point in (p for p in results["points"] if p["model"] == "tiny_bisenetv2" and p["precision"] == "fp32"
                  and p["fine_tuned"]):
        assert ModelCard.load(out / point["card"]).architecture["upsample_logits"] is False, point["label"]
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert [row["label"] for row in rows] == [p["label"] for p in results["points"]]
    assert any(row["pareto"] == "True" for row in rows)
    table = (out / "table.md").read_text()
    assert len(table.splitlines()) == 4 + len(rows) and "thread-pool spinning off" in table
    check_headline((out / "headline.md").read_text(), results)
    assert all((out / png).stat().st_size > 20_000 for png in ("miou_vs_latency.png", "miou_vs_ratio.png"))
    assert not (out / "work").exists(), "fine-tuning runs are removed once their model is exported"
    saved = {path: path.stat().st_mtime_ns for path in [*out.glob("points/*.json"), *out.glob("models/*"),
                                                          *out.glob("timing/*.json")]}
    assert len(list(out.glob("points/*.json"))) == 32 and len(list(out.glob("timing/*.json"))) == 2

    calls = count_calls(monkeypatch, ("make_pruned", "make_converted", "measure"))
    sweep_main(study_arguments(cards, data, out))
    assert calls == {"make_pruned": 0, "make_converted": 0, "measure": 0}
    assert {path: path.stat().st_mtime_ns for path in saved} == saved
    assert json.loads((out / "results.json").read_text())["points"] == results["points"]
    assert "32 points, 0 measured now, 32 found from an earlier run" in capsys.readouterr().out

    lost = next(p for p in results["points"] if p["label"] == "unpruned int8_dynamic")
    (out / "points" / f"{lost['key'][:24]}.json").unlink()  # as if the run had stopped before it
    sweep_main(study_arguments(cards, data, out))
    assert calls == {"make_pruned": 0, "make_converted": 0, "measure": 1}, "its model was kept: measured only"
    assert {path: path.stat().st_mtime_ns for path in saved if "timing" in path.parts} == {
        path: time for path, time in saved.items() if "timing" in path.parts}, "the same points: timed before"
    sweep_main([*study_arguments(cards, data, out), "--timing-runs", "2"])
    assert calls == {"make_pruned": 0, "make_converted": 0, "measure": 1}, "other timing: the results are kept..."
    assert len(list(out.glob("timing/*.json"))) == 4, "...and each model's points timed again"

    plots = tmp_path / "plots"
    sweep_main(["plot", str(out / "results.json"), "--out", str(plots)])
    assert (plots / "table.md").read_text() == (out / "table.md").read_text()
    assert (plots / "results.csv").read_text() == (out / "results.csv").read_text()
    assert (plots / "headline.md").read_text() == (out / "headline.md").read_text()
    assert all((plots / png).stat().st_size > 20_000 for png in ("miou_vs_latency.png", "miou_vs_ratio.png"))

    capsys.readouterr()
    pruned = out / next(p for p in results["points"] if p["label"] == "random 50% all")["card"]
    for refused, message in ((study_arguments([pruned], data, tmp_path / "refused"), "pruned or quantized"),
                             (["plot", str(pruned), "--out", str(plots)], "not a pruning study's")):
        with pytest.raises(SystemExit):
            sweep_main(refused)
        assert message in capsys.readouterr().err


def test_the_plots_hold_their_legends_whole(tmp_path):
    """The study's PNGs, redrawn from the shipped results, have nothing on their outer edges: the legends beside the
    axes lie inside the image (cut off at the right edge, their frames and the longer model names crossed it)."""
    sweep_main(["plot", str(REPO / "docs" / "study" / "results.json"), "--out", str(tmp_path)])
    for png in ("miou_vs_latency.png", "miou_vs_ratio.png"):
        image = cv2.imread(str(tmp_path / png), cv2.IMREAD_GRAYSCALE)
        for name, edge in (("top", image[0]), ("bottom", image[-1]), ("left", image[:, 0]), ("right", image[:, -1])):
            assert edge.min() == 255, f"{png}: something is drawn on its {name} edge"
