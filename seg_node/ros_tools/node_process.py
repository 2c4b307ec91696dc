"""seg_node in its own process, started the way ROS starts it (console script, params file, -p overrides).

`running_seg_node` is the one way the benchmarks, the live evaluation, the stress runs and the tests run the
node: start it, wait until it is on the ROS graph and answering, stop it with Ctrl-C. `ros_environment` is the
one place that sets up the environment of the tools' DDS participants and of the nodes they start.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml
from rcl_interfaces.srv import GetParameters
from rclpy.node import NodeNameNonExistentError

from ..core.errors import UserError
from ..core.model_files import PACKAGE_NAME, installed_prefix, package_path
from ..ros import node_parameters
from .ros_peer import RosPeer

PARAMS_FILE = package_path("config", "seg_node.yaml")
DDS_PROFILE = package_path("config", "fastdds_large_images.xml")
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")  # the second: deprecated
DISCOVERY_RANGE_VARIABLE = "ROS_AUTOMATIC_DISCOVERY_RANGE"
PARAMETER_RETRY_SECONDS = 2.0


class NodeStartError(UserError):
    """seg_node exited during start-up, or was not up in time; the message ends with its log."""


def ros_environment(environ: Mapping[str, str] | None = None, dds_profile: Path | None = DDS_PROFILE) -> dict:
    """A copy of `environ` (default os.environ) for the tools' ROS processes and their nodes.

    DDS discovery stays on this machine unless the user chose a range (the node and its peer both run here).
    Fast DDS participants load `dds_profile` (default: the shipped one, which carries HD images best effort)
    unless the user named a profiles file; dds_profile=None removes the shipped one (to measure without it).
    Fast DDS reads the file once per process, so this process applies it before its first participant."""
    environ = dict(os.environ if environ is None else environ)
    environ.setdefault(DISCOVERY_RANGE_VARIABLE, "LOCALHOST")
    if dds_profile is None:
        if environ.get(PROFILE_VARIABLES[0]) == str(DDS_PROFILE):
            del environ[PROFILE_VARIABLES[0]]
    elif not any(environ.get(name) for name in PROFILE_VARIABLES):
        environ[PROFILE_VARIABLES[0]] = str(dds_profile)
    return environ


def use_ros_environment() -> None:
    """Give this process the tools' ROS environment (see ros_environment): a tool's main() calls it first."""
    os.environ.update(ros_environment())


def executable(name: str = "seg_node") -> str:
    """The console script in lib/seg_node of a sourced colcon install, beside this Python (a venv), or on PATH."""
    prefix = installed_prefix()
    candidates = [prefix / "lib" / PACKAGE_NAME / name] if prefix else []
    candidates += [Path(sys.executable).parent / name, shutil.which(name)]
    found = next((str(c) for c in candidates if c and Path(c).is_file()), None)
    if not found:
        raise FileNotFoundError(f"console script {name!r} not found: install the package (pip install -e . or "
                                f"colcon build, then source install/setup.bash)")
    return found


def ros_value(value) -> str:
    """A Python value as a `-p name:=value` argument."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(f"'{v}'" for v in value) + "]"
    return str(value)


def camera_topic_for(node_name: str) -> str:
    """An image topic that only the tool driving the node `node_name` publishes on."""
    return f"/{node_name}_camera/image_raw"


def start_values(node_name: str, parameters: dict, params_file: Path | None, names: tuple[str, ...]) -> dict:
    """The values of `names` the node starts with: `parameters`, else the params file's (its /** section, then the
    node's own), else the declared defaults."""
    sections = (yaml.safe_load(Path(params_file).read_text()) or {}) if params_file is not None else {}
    from_file = {}
    for section in ("/**", node_name, f"/{node_name}"):
        from_file.update((sections.get(section) or {}).get("ros__parameters", {}))
    return {name: parameters.get(name, from_file.get(name, node_parameters.PARAMETERS[name].default))
            for name in names}


class SegNodeProcess:
    """`seg_node --ros-args --params-file FILE -r __node:=NAME -p key:=value ...`, output in a log file; its DDS
    participant loads `dds_profile` unless the environment names a profiles file (None: Fast DDS's defaults).
    `peer`, a node in this process, watches the graph for it."""

    def __init__(self, name: str, parameters: dict, peer: RosPeer, params_file: Path | None = PARAMS_FILE,
                 log_dir: str | Path | None = None, dds_profile: Path | None = DDS_PROFILE):
        self.name, self.peer = name, peer
        self.parameters, self.params_file = dict(parameters), params_file
        args = [executable(), "--ros-args", "-r", f"__node:={name}"]
        if params_file is not None:
            args[2:2] = ["--params-file", str(params_file)]
        for key, value in parameters.items():
            args += ["-p", f"{key}:={ros_value(value)}"]
        self.log_path = Path(log_dir or tempfile.gettempdir()) / f"{name}.log"
        with open(self.log_path, "w") as log:  # the child writes through its own copy of the descriptor
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            env=ros_environment(dds_profile=dds_profile))

    def output(self) -> str:
        return self.log_path.read_text()

    def topic(self, name: str) -> str:
        return f"/{self.name}/{name}"

    def endpoints(self) -> tuple[set[str], set[str]]:
        """(publishers, subscriptions) the node has once started: each camera's mask and latency outputs, and
        its image topics."""
        values = start_values(self.name, self.parameters, self.params_file,
                              ("input_topics", "camera_names", "input_transport"))
        topics = list(values["input_topics"])
        names = node_parameters.camera_names(topics, list(values["camera_names"]))
        prefixes = [f"{name}/" if name else "" for name in names]
        publishers = {self.topic(prefix + output) for prefix in prefixes for output in ("mask", "latency")}
        suffix = "/compressed" if values["input_transport"] == "compressed" else ""
        return publishers, {topic + suffix for topic in topics}

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Return once the peer sees the node's publishers and subscriptions on the graph and the node answers a
        parameter request: it then spins, its model loaded and warmed up (the graph entries alone appear just
        before it starts spinning). NodeStartError if it exits first or takes longer than `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            publishers, subscriptions = self.endpoints()
        except ValueError:  # cameras the node refuses as well: report its exit and log
            self._wait(lambda: False, deadline, "start with these cameras")
        self._wait(lambda: self._on_graph(publishers, subscriptions), deadline,
                   f"publishers {sorted(publishers)} and subscriptions {sorted(subscriptions)} on the ROS graph")
        self._wait_for_parameter_answer(deadline)

    def _on_graph(self, publishers: set[str], subscriptions: set[str]) -> bool:
        graph = self.peer.node
        try:
            published = {topic for topic, _ in graph.get_publisher_names_and_types_by_node(self.name, "/")}
            subscribed = {topic for topic, _ in graph.get_subscriber_names_and_types_by_node(self.name, "/")}
        except NodeNameNonExistentError:
            return False
        return publishers <= published and subscriptions <= subscribed

    def _wait_for_parameter_answer(self, deadline: float) -> None:
        """Ask again when an answer does not come: a service can see a request before it has discovered the
        client's reply reader, and Fast DDS then drops the reply ("failed to send response (timeout)")."""
        client = self.peer.node.create_client(GetParameters, self.topic("get_parameters"))
        try:
            self._wait(client.service_is_ready, deadline, "its parameter service")
            while True:
                answer = client.call_async(GetParameters.Request(names=["input_topics"]))
                retry_at = time.monotonic() + PARAMETER_RETRY_SECONDS  # past the deadline: _wait raises
                self._wait(lambda answer=answer, retry_at=retry_at: answer.done() or time.monotonic() > retry_at,
                           deadline, "an answer to a parameter request")
                if answer.done():
                    return
        finally:
            self.peer.node.destroy_client(client)

    def _wait(self, condition, deadline: float, what: str) -> None:
        while not condition():
            if self.process.poll() is not None:
                raise NodeStartError(f"{self.name} exited with {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise NodeStartError(f"{self.name}: no {what} in time:\n{self.output()}")
            time.sleep(0.02)

    def wait_exit(self, timeout: float = 60.0) -> int:
        return self.process.wait(timeout)

    def stop(self) -> int:
        """Ctrl-C, as a user would, then a kill if it has not ended in 15 s; returns the exit status (0 for a
        clean shutdown). Stopping a stopped node returns its status again."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextmanager
def running_seg_node(parameters: dict, *, name: str, peer: RosPeer | None = None, wait: bool = True,
                     params_file: Path | None = PARAMS_FILE, log_dir: str | Path | None = None,
                     dds_profile: Path | None = DDS_PROFILE, timeout: float = 60.0) -> Iterator[SegNodeProcess]:
    """seg_node named `name`, started with `parameters` over `params_file`, ready (see
    SegNodeProcess.wait_until_ready) unless `wait` is False, and stopped on leaving however the block ends.

    Without a `peer`, the node gets one in this process (`node.peer`, the other end for publishing frames and
    receiving outputs), closed after the node has stopped."""
    with ExitStack() as stack:
        if peer is None:
            peer = stack.enter_context(RosPeer(f"{name}_peer"))
        node = SegNodeProcess(name, parameters, peer, params_file, log_dir, dds_profile)
        stack.callback(node.stop)
        if wait:
            node.wait_until_ready(timeout)
        yield node
