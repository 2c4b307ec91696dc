"""The launch files' behaviour that launch_ros cannot show here (it is not installable in this venv): the
RViz configuration generated from the launch arguments, and the launch descriptions' structure, read from
their source as tests/test_package.py does."""

from __future__ import annotations

import ast

import pytest
import yaml
from ros_harness import REPO

from seg_node.ros.launch_arguments import parameter_overrides, truthy
from seg_node.ros.rviz_config import displayed_topics, node_settings, write_rviz_config

TEMPLATE = REPO / "config" / "seg_node.rviz"
PARAMS = REPO / "config" / "seg_node.yaml"


def image_topics(path) -> list[tuple[str, str]]:
    return [(d["Name"], d["Topic"]["Value"]) for d in yaml.safe_load(path.read_text())["Visualization Manager"][
        "Displays"] if d["Class"] == "rviz_default_plugins/Image"]


def test_the_shipped_rviz_file_is_what_the_default_arguments_generate(tmp_path):
    out = write_rviz_config(TEMPLATE, tmp_path / "a.rviz", "", PARAMS, parameter_overrides({}))
    assert image_topics(out) == image_topics(TEMPLATE)
    assert yaml.safe_load(out.read_text())["Window Geometry"] == yaml.safe_load(TEMPLATE.read_text())["Window Geometry"]


def test_rviz_follows_namespace_several_cameras_and_relative_topics(tmp_path):
    overrides = parameter_overrides({"image": "/front/image_raw, rear/image_raw"})
    out = write_rviz_config(TEMPLATE, tmp_path / "b.rviz", "/car1", PARAMS, overrides)
    assert image_topics(out) == [
        ("Camera (front)", "/front/image_raw"),
        ("Segmentation overlay (front)", "/car1/seg_node/front/overlay"),
        ("Class colours (front)", "/car1/seg_node/front/color_mask"),
        ("Camera (rear)", "/car1/rear/image_raw"),
        ("Segmentation overlay (rear)", "/car1/seg_node/rear/overlay"),
        ("Class colours (rear)", "/car1/seg_node/rear/color_mask"),
    ]
    displays = yaml.safe_load(out.read_text())["Visualization Manager"]["Displays"]
    assert [d["Topic"]["Reliability Policy"] for d in displays[:3]] == ["Best Effort", "Reliable", "Reliable"]


def test_rviz_takes_topics_and_camera_names_from_the_params_file(tmp_path):
    params = tmp_path / "cars.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "input_topics": ["/a/image_raw", "/b/image_raw"], "camera_names": ["left", "right"]}}}))
    assert node_settings(params, {}) == {"input_topics": ["/a/image_raw", "/b/image_raw"],
                                         "camera_names": ["left", "right"]}
    assert [t for _, t in displayed_topics("", *node_settings(params, {}).values())][1::3] == [
        "/seg_node/left/overlay", "/seg_node/right/overlay"]
    with pytest.raises(ValueError, match="2 input topics"):  # the node would refuse it too
        displayed_topics("", ["/a/image_raw", "/b/image_raw"], ["one"])


@pytest.mark.parametrize("text, value", [("true", True), ("True", True), ("1", True), ("false", False), ("0", False)])
def test_boolean_launch_arguments_read_as_launch_reads_them(text, value):
    assert truthy(text) is value


def test_a_boolean_launch_argument_that_is_neither_is_refused():
    with pytest.raises(ValueError, match="expected true or false"):
        truthy("yes please")


def calls(tree, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", getattr(
        n.func, "attr", None)) == name]


def keyword(call: ast.Call, name: str):
    return next(k.value for k in call.keywords if k.arg == name)


def test_seg_node_launch_checks_params_file_and_rviz2_before_starting_anything():
    tree = ast.parse((REPO / "launch" / "seg_node.launch.py").read_text())
    function = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "seg_node_with_overrides")
    body = ast.unparse(function)
    # a missing params_file raises (launch ends with the message) before any Node is built
    assert body.index("if not params_file.is_file():") < body.index("raise RuntimeError") < body.index("Node(")
    # rviz2 is looked up in the ament index, and a missing one gives a warning and the node alone
    handler = next(n for n in ast.walk(function) if isinstance(n, ast.ExceptHandler))
    assert ast.unparse(handler.type) == "PackageNotFoundError"
    assert "rviz2" in ast.unparse(next(n for n in ast.walk(function) if isinstance(n, ast.Try)).body[0])
    assert [ast.unparse(a) for a in handler.body[0].value.elts][1] == "*actions"
    rviz = next(c for c in calls(function, "Node") if keyword(c, "package").value == "rviz2")
    assert "rviz_file" in ast.unparse(keyword(rviz, "arguments")), "the generated config, not the static file"
    assert "rviz2" not in ast.unparse(next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                                            and n.name == "generate_launch_description"))


def test_camera_launch_honours_image_and_ends_when_the_camera_exits():
    tree = ast.parse((REPO / "launch" / "camera.launch.py").read_text())
    camera = next(c for c in calls(tree, "Node") if keyword(c, "executable").value == "camera_publisher")
    assert ast.unparse(keyword(camera, "remappings")) == "[('image_raw', config('image'))]"
    assert ast.unparse(keyword(camera, "on_exit")).startswith("Shutdown(")
    include = calls(tree, "IncludeLaunchDescription")[0]
    assert "'image': config('image')" in ast.unparse(keyword(include, "launch_arguments"))
