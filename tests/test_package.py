"""The ROS 2 package around the node: package.xml, setup.py, colcon, launch files, RViz and parameter files.

launch_ros and RViz cannot run here, so their files are checked for what they name: every executable,
parameter, file and topic must exist.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from rclpy.qos import qos_profile_sensor_data
from ros_harness import REPO, start_camera_publisher, write_clip
from sensor_msgs.msg import Image

from seg_node.ros import node_parameters as params
from seg_node.ros.launch_arguments import LAUNCH_PARAMETERS, parameter_overrides
from seg_node.ros_tools.node_process import NodeStartError, running_seg_node

LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))


def console_scripts() -> set[str]:
    tree = ast.parse((REPO / "setup.py").read_text())
    scripts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "seg_node" for v in node.values)
            if "=" in text and ":" in text:
                scripts.add(text.split("=")[0].strip())
    return scripts


def test_package_xml_is_format_3_ament_python_with_the_runtime_depends():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "seg_node"
    assert re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", root.find("maintainer").get("email"))
    depends = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "python3-numpy", "python3-opencv"} <= depends
    assert root.find("export/build_type").text == "ament_python"
    assert (REPO / "resource" / "seg_node").is_file()


def test_colcon_builds_the_package_as_ament_python(tmp_path):
    colcon = Path(sys.executable).parent / "colcon"
    if not colcon.exists():
        pytest.skip("colcon not installed (pip install colcon-common-extensions ros-ament-package)")
    (tmp_path / "src").mkdir()
    os.symlink(REPO, tmp_path / "src" / "seg_node")
    listing = subprocess.run([str(colcon), "list"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert re.search(r"^seg_node\s+\S+\s+\(ros\.ament_python\)$", listing.stdout, re.M), listing.stdout
    build = subprocess.run([str(colcon), "build", "--base-paths", "src"], cwd=tmp_path, capture_output=True,
                           text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    install = tmp_path / "install" / "seg_node"
    assert {"seg_node", "camera_publisher"} <= {p.name for p in (install / "lib" / "seg_node").iterdir()}
    share = install / "share" / "seg_node"
    for path in ("package.xml", "config/seg_node.yaml", "config/seg_node.rviz", "launch/seg_node.launch.py",
                 "launch/camera.launch.py"):
        assert (share / path).is_file(), path
    assert (install.parent.parent / "install" / "seg_node" / "share" / "ament_index" / "resource_index" /
            "packages" / "seg_node").is_file()
    assert len(list((share / "data" / "camvid_clip" / "test").iterdir())) == 24
    # The installed package finds its shipped files and console scripts in the install tree, not the checkout.
    site_packages = next(install.glob("lib/python3*/site-packages"))
    where = subprocess.run(
        [sys.executable, "-c", "from seg_node.ros_tools.node_process import PARAMS_FILE, executable; "
                               "from seg_node.toolchain.evaluation.timing import CLIP; "
                               "from seg_node.core.model_files import models_dir; "
                               "print(PARAMS_FILE, CLIP, models_dir(), executable('seg-demo'), sep='\\n')"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(site_packages), "AMENT_PREFIX_PATH": str(install),
             "PATH": "/usr/bin:/bin"})
    assert where.stdout.split() == [str(share / "config" / "seg_node.yaml"), str(share / "data" / "camvid_clip"),
                                    str(share / "models"), str(install / "lib" / "seg_node" / "seg-demo")]


def launch_nodes(path: Path) -> list[dict]:
    """Keyword arguments of every Node(...) call, constants only."""
    nodes = []
    for call in ast.walk(ast.parse(path.read_text())):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Node":
            nodes.append({k.arg: k.value for k in call.keywords})
    return nodes


def launch_arguments(path: Path) -> dict[str, str]:
    """ARGUMENTS = ((name, default, description), ...) in a launch file -> {name: description}."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "ARGUMENTS":
            return {item.elts[0].value: item.elts[2].value for item in node.value.elts}
    return {}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_files_name_real_executables_parameters_and_arguments(path):
    scripts = console_scripts()
    for node in launch_nodes(path):
        package, executable = node["package"].value, node["executable"].value
        if package == "seg_node":
            assert executable in scripts, f"{path.name} starts {executable}, which setup.py does not install"
        for dictionary in ast.walk(node.get("parameters", ast.Constant(None))):
            if isinstance(dictionary, ast.Dict) and executable == "seg_node":
                for key in filter(None, dictionary.keys):  # None: the **overrides of launch arguments
                    assert key.value in params.PARAMETERS or key.value == "use_sim_time", key.value
    arguments = launch_arguments(path)
    assert arguments and all(description.strip() for description in arguments.values())
    used = set(re.findall(r'config\("(\w+)"\)', path.read_text()))
    assert used <= set(arguments), f"undeclared launch arguments: {used - set(arguments)}"


def test_seg_node_launch_has_the_documented_arguments():
    arguments = launch_arguments(REPO / "launch" / "seg_node.launch.py")
    assert {"image", "backend", "device", "model", "params_file", "namespace", "use_sim_time", "rviz"} <= set(arguments)
    assert set(LAUNCH_PARAMETERS) <= set(arguments) and set(LAUNCH_PARAMETERS.values()) <= set(params.PARAMETERS)


def test_launch_arguments_left_empty_keep_the_parameter_file_and_given_ones_reach_a_real_node(seg_node):
    assert parameter_overrides(dict.fromkeys(LAUNCH_PARAMETERS, "")) == {}
    overrides = parameter_overrides({"image": "/front/image_raw, /rear/image_raw", "backend": "torch",
                                     "device": "cpu", "model": " ", "transport": ""})
    assert overrides == {"input_topics": ["/front/image_raw", "/rear/image_raw"], "backend": "torch", "device": "cpu"}
    node = seg_node(**overrides)  # over config/seg_node.yaml, the order launch_ros passes them in
    started = next(line for line in node.output().splitlines() if "segmenting" in line)
    assert "['/front/image_raw', '/rear/image_raw']" in started and "torch" in started, started


def test_the_node_harness_waits_for_the_graph_and_stops_the_node_cleanly(ros, random_model, tmp_path):
    """running_seg_node returns once every camera's outputs and inputs are on the graph and the node has finished
    starting (its start-up log is written), stops it with exit 0 on leaving, and reports a node that cannot start
    with its log."""
    parameters = {"model": str(random_model), "input_topics": ["/front/image_raw", "/rear/image_raw"],
                  "camera_names": [], "input_transport": "compressed"}
    with running_seg_node(parameters, name="seg_harness_check", peer=ros, log_dir=tmp_path) as node:
        published = {t for t, _ in ros.node.get_publisher_names_and_types_by_node(node.name, "/")}
        subscribed = {t for t, _ in ros.node.get_subscriber_names_and_types_by_node(node.name, "/")}
        assert {f"/seg_harness_check/{camera}/{output}" for camera in ("front", "rear")
                for output in ("mask", "latency")} <= published
        assert {"/front/image_raw/compressed", "/rear/image_raw/compressed"} <= subscribed
        assert "segmenting" in node.output()
    assert node.process.returncode == 0
    with (pytest.raises(NodeStartError, match=r"exited with 1:\n(.|\n)*model file .*missing\.onnx does not exist"),
          running_seg_node({"model": str(tmp_path / "missing.onnx")}, name="seg_harness_bad", peer=ros,
                           log_dir=tmp_path)):
        pass


def test_parameter_file_documents_exactly_the_declared_parameters():
    data = yaml.safe_load((REPO / "config" / "seg_node.yaml").read_text())
    values = data["/**"]["ros__parameters"]
    assert set(values) == set(params.PARAMETERS)
    for name, value in values.items():
        assert params.validate(name, value) is None, name


def test_rviz_config_shows_the_node_outputs_and_the_default_camera():
    config = yaml.safe_load((REPO / "config" / "seg_node.rviz").read_text())
    topics = {d["Topic"]["Value"] for d in config["Visualization Manager"]["Displays"]
              if d["Class"] == "rviz_default_plugins/Image"}
    defaults = yaml.safe_load((REPO / "config" / "seg_node.yaml").read_text())["/**"]["ros__parameters"]
    assert topics == {defaults["input_topics"][0], "/seg_node/overlay", "/seg_node/color_mask"}


def test_camera_publisher_streams_a_video_file(ros, tmp_path):
    video = write_clip(tmp_path / "clip.avi", 64, 48, 5, fps=10)
    inbox = ros.subscribe(Image, "/cam_test/image_raw", qos=qos_profile_sensor_data)
    process = start_camera_publisher("/cam_test", video, 50.0, "frame_id:=test_cam")
    try:
        frames = inbox.wait_for(8, timeout=30)
    finally:
        process.send_signal(2)
        assert process.wait(15) == 0
    assert all((m.width, m.height, m.encoding, m.header.frame_id) == (64, 48, "bgr8", "test_cam") for m in frames)
    levels = [int(np.frombuffer(m.data, np.uint8).mean()) for m in frames]
    assert len(set(levels)) >= 4, "consecutive frames of the clip, looping"


@pytest.mark.parametrize("parameter, message", [("source:=/nonexistent/video.mp4", "cannot open camera source"),
                                                ("rate:=30", "bad parameter rate"), ("rate:=0.0", "rate must be > 0")])
def test_camera_publisher_refuses_a_bad_parameter_with_a_message(parameter, message):
    result = subprocess.run([str(Path(sys.executable).parent / "camera_publisher"), "--ros-args",
                             "-p", parameter], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "FATAL" in result.stderr and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command, message", [
    (["seg-eval", "--model", "/nonexistent/model.json", "--out", "unused"], "does not exist"),
    (["seg-eval", "--data", "/nonexistent/camvid", "--out", "unused"], "/nonexistent/camvid"),
    (["seg-export", "/nonexistent/best.pt", "--out", "unused"], "/nonexistent/best.pt"),
    (["seg-benchmark", "latency", "--data", "/nonexistent/camvid"], "/nonexistent/camvid"),
    (["seg-benchmark", "hd", "--model", "/nonexistent/model.json"], "does not exist"),
    (["seg-stress", "soak", "--model", "/nonexistent/model.json"], "--random-model"),
    (["seg-bag-replay", "/nonexistent/bag"], "/nonexistent/bag"),
    (["seg-live-eval", "/nonexistent/bag", "--out", "unused"], "/nonexistent/bag"),
    (["seg-prune", "--model", "/nonexistent/model.json", "--ratio", "0.5", "--out", "unused"], "does not exist"),
    (["seg-camvid-compact", "--data", "/nonexistent/camvid", "--out", "unused"], "/nonexistent/camvid"),
])
def test_command_line_tools_report_a_users_mistake_without_a_traceback(command, message, tmp_path):
    result = subprocess.run([str(Path(sys.executable).parent / command[0]), *command[1:]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"{command[0]}: error:" in result.stderr and message in result.stderr, \
        result.stderr
    assert "Traceback" not in result.stderr


def test_ros_workspace_requirements_keep_the_distro_numpy_and_opencv():
    """ROS 2 distros build their Python message modules and cv_bridge against numpy 1.x."""
    ros = (REPO / "requirements-ros.txt").read_text() + (REPO / "requirements-base.txt").read_text()
    assert re.search(r"^numpy>=[\d.]+,<2\b", ros, re.M), ros
    assert not re.search(r"^(opencv|numpy==2)", ros, re.M | re.I), ros
    assert "-r requirements-base.txt" in (REPO / "requirements.txt").read_text()
