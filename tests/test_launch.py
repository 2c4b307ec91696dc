"""The launch files: the RViz configuration generated from the launch arguments, and the launch descriptions'
structure, read from their source as tests/test_package.py does (launch and launch_ros are not on PyPI, so not in
this venv); and, opt-in, the launch files under a real `ros2 launch`.

The real-launch tests run when SEG_NODE_ROS_SETUP names a bash file that, sourced, gives a `ros2` with the launch
verb and an installed seg_node (a ROS 2 install and a colcon workspace's install/setup.bash, or the environment of
../shared/ros2launch). Each launch runs as a terminal's foreground job would: its own process group, which is what
a terminal's Ctrl-C reaches.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from ros_harness import REPO, write_clip
from sensor_msgs.msg import Image

from seg_node.ros.launch_arguments import parameter_overrides, truthy
from seg_node.ros.rviz_config import RVIZ_MISSING, displayed_topics, node_settings, write_rviz_config

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
    # rviz2 is looked up in the ament index, and a missing one gives a warning (at WARN level) and the node alone
    handler = next(n for n in ast.walk(function) if isinstance(n, ast.ExceptHandler))
    assert ast.unparse(handler.type) == "PackageNotFoundError"
    assert "rviz2" in ast.unparse(next(n for n in ast.walk(function) if isinstance(n, ast.Try)).body[0])
    assert [ast.unparse(n) for n in handler.body] == ["get_logger('launch.user').warning(RVIZ_MISSING)",
                                                      "return actions"]
    assert not calls(tree, "LogInfo") and "WARNING" not in RVIZ_MISSING
    rviz = next(c for c in calls(function, "Node") if keyword(c, "package").value == "rviz2")
    assert "rviz_file" in ast.unparse(keyword(rviz, "arguments")), "the generated config, not the static file"
    # the generated config is a temporary file, removed when the launch shuts down
    cleanup = calls(function, "OnShutdown")[0]
    assert ast.unparse(keyword(cleanup, "on_shutdown")) == "lambda event, context: rviz_file.unlink(missing_ok=True)"
    assert calls(function, "RegisterEventHandler")[0].args[0] is cleanup
    assert "rviz2" not in ast.unparse(next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                                            and n.name == "generate_launch_description"))


def test_camera_launch_honours_image_and_ends_when_the_camera_exits():
    tree = ast.parse((REPO / "launch" / "camera.launch.py").read_text())
    camera = next(c for c in calls(tree, "Node") if keyword(c, "executable").value == "camera_publisher")
    assert ast.unparse(keyword(camera, "remappings")) == "[('image_raw', config('image'))]"
    assert ast.unparse(keyword(camera, "on_exit")).startswith("Shutdown(")  # the source's end ends everything
    include = calls(tree, "IncludeLaunchDescription")[0]
    assert "'image': config('image')" in ast.unparse(keyword(include, "launch_arguments"))


# --- under a real `ros2 launch` (opt-in: SEG_NODE_ROS_SETUP) -------------------------------------------------
ROS_SETUP = os.environ.get("SEG_NODE_ROS_SETUP", "")
real_launch = pytest.mark.skipif(not ROS_SETUP, reason="SEG_NODE_ROS_SETUP (a bash file giving `ros2 launch` and "
                                                       "an installed seg_node) is not set")
STARTED_LAUNCH = '''source "$SEG_NODE_ROS_SETUP" > /dev/null && export ROS_DOMAIN_ID="$TEST_DOMAIN" \
&& export AMENT_PREFIX_PATH="$EXTRA_PREFIX${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" && exec ros2 launch "$@"'''


class Launch:
    """`ros2 launch ARGUMENTS` in its own process group (as a terminal's foreground job), output in a log, its
    temporary files in `tmp_path`; `extra_prefix` is put before the ament prefixes (a package of the test's)."""

    def __init__(self, tmp_path: Path, *arguments: str, extra_prefix: Path | None = None):
        self.log_path = tmp_path / "launch.log"
        environment = {**os.environ, "TEST_DOMAIN": os.environ["ROS_DOMAIN_ID"], "TMPDIR": str(tmp_path),
                       "ROS_LOG_DIR": str(tmp_path / "ros_log"), "EXTRA_PREFIX": str(extra_prefix or "")}
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(["bash", "-c", STARTED_LAUNCH, "ros2", *arguments], stdout=log,
                                            stderr=subprocess.STDOUT, env=environment, start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text()

    def ctrl_c(self, times: int = 1, gap: float = 0.05) -> int:
        """A terminal's Ctrl-C (SIGINT to the whole process group), `times` times; the exit status."""
        for _ in range(times):
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGINT)
                time.sleep(gap)  # the interval under test, not a synchronisation
        return self.process.wait(60)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def launched(tmp_path):
    started = []

    def start(*arguments: str, extra_prefix: Path | None = None) -> Launch:
        started.append(Launch(tmp_path, *arguments, extra_prefix=extra_prefix))
        return started[-1]

    yield start
    for launch in started:
        launch.stop()


def camera_launch(launched, tmp_path, topic: str, *arguments: str) -> Launch:
    clip = write_clip(tmp_path / "clip.avi", 320, 240, 20)
    return launched("seg_node", "camera.launch.py", f"source:={clip}", "rate:=10.0", f"image:={topic}", *arguments)


def finished_cleanly(log: str) -> int:
    """How many processes launch reported ending with exit 0."""
    return log.count("process has finished cleanly")


@real_launch
def test_real_camera_launch_with_loop_false_ends_by_itself_with_exit_0(launched, tmp_path):
    launch = camera_launch(launched, tmp_path, "/finite_launch/image_raw", "loop:=false")
    status = launch.process.wait(180)
    log = launch.output()
    assert status == 0, log
    assert "the source ended after 20 frames (loop is false): stopping" in log, log
    assert finished_cleanly(log) == 2 and "Traceback" not in log, log  # camera_publisher and seg_node


@real_launch
@pytest.mark.parametrize("presses", [1, 2])
def test_real_launch_ctrl_c_with_frames_flowing_exits_0(ros, launched, tmp_path, presses):
    masks = ros.subscribe(Image, "/seg_node/mask")
    launch = camera_launch(launched, tmp_path, f"/ctrl_c_{presses}/image_raw")
    masks.wait_for(5, timeout=180)
    status = launch.ctrl_c(presses)
    log = launch.output()
    assert status == 0, log
    assert finished_cleanly(log) == 2 and "Traceback" not in log and "ERROR]" not in log, log


def seg_node_launch_until_up(ros, launched, topic: str, *arguments: str, extra_prefix: Path | None = None):
    launch = launched("seg_node", "seg_node.launch.py", f"image:={topic}", "rviz:=true", *arguments,
                      extra_prefix=extra_prefix)
    ros.wait_for_publishers("/seg_node/mask", timeout=180)
    return launch


@real_launch
def test_real_launch_without_rviz2_warns_at_warn_level_and_runs_the_node_alone(ros, launched, tmp_path):
    launch = seg_node_launch_until_up(ros, launched, "/no_rviz/image_raw")
    status = launch.ctrl_c()
    log = launch.output()
    assert status == 0, log
    assert f"[WARNING] [launch.user]: {RVIZ_MISSING}" in log, log
    assert "WARNING:" not in log and "rviz2-" not in log, log
    assert not list(tmp_path.glob("*.rviz")), "no RViz file is written without rviz2"


def fake_rviz2(prefix: Path, record: Path) -> Path:
    """An ament prefix holding a package rviz2 whose executable records the file it was given and waits: RViz's
    stand-in (the real one needs a display)."""
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / "rviz2").touch()
    (prefix / "share" / "rviz2").mkdir()
    executable = prefix / "lib" / "rviz2" / "rviz2"
    executable.parent.mkdir(parents=True)
    executable.write_text(f'#!/bin/sh\ncp "$2" {record}.tmp && mv {record}.tmp {record}\n'
                          f'echo "$2" > {record}.path\nexec sleep 600\n')
    executable.chmod(0o755)
    return prefix


@real_launch
def test_real_launch_with_rviz2_gives_it_the_generated_config_and_removes_it_at_shutdown(ros, launched, tmp_path):
    record = tmp_path / "rviz_given.rviz"
    prefix = fake_rviz2(tmp_path / "fake_rviz2", record)
    launch = seg_node_launch_until_up(ros, launched, "/with_rviz/image_raw", extra_prefix=prefix)
    deadline = time.monotonic() + 60
    while not Path(f"{record}.path").is_file():
        assert time.monotonic() < deadline and launch.process.poll() is None, launch.output()
        time.sleep(0.1)
    given = Path(Path(f"{record}.path").read_text().strip())
    assert given.parent == tmp_path and given.is_file(), given
    topics = [d["Topic"]["Value"] for d in yaml.safe_load(record.read_text())["Visualization Manager"]["Displays"]]
    assert topics == ["/with_rviz/image_raw", "/seg_node/overlay", "/seg_node/color_mask"]
    status = launch.ctrl_c()
    assert status == 0, launch.output()
    assert not given.exists(), "the generated RViz file must be removed at shutdown"
