"""Start seg_node in its own process the way ROS does (console script, params file, -p overrides).

Used by the benchmarks, the live evaluation and the tests, so all of them measure the real node.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..core.model_files import PACKAGE_NAME, installed_prefix, package_path

PARAMS_FILE = package_path("config", "seg_node.yaml")
DDS_PROFILE = package_path("config", "fastdds_large_images.xml")
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")  # the second: deprecated


def with_dds_profile(environ: dict | None = None, profile: Path | None = DDS_PROFILE) -> dict:
    """A copy of `environ` (default os.environ) whose Fast DDS participants load `profile` (default: the shipped
    one, which carries HD images best effort), unless the user named a profiles file already; profile=None
    removes the shipped one (to measure without it)."""
    environ = dict(os.environ if environ is None else environ)
    if profile is None:
        if environ.get(PROFILE_VARIABLES[0]) == str(DDS_PROFILE):
            del environ[PROFILE_VARIABLES[0]]
    elif not any(environ.get(name) for name in PROFILE_VARIABLES):
        environ[PROFILE_VARIABLES[0]] = str(profile)
    return environ


def use_dds_profile() -> None:
    """Give this process the shipped profile (see with_dds_profile); call it before rclpy creates a participant,
    since Fast DDS reads the file once per process."""
    os.environ.update(with_dds_profile())


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
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(f"'{v}'" for v in value) + "]"
    return str(value)


class SegNodeProcess:
    """`seg_node --ros-args --params-file FILE -r __node:=NAME -p key:=value ...`, output in a log file; its DDS
    participant loads `dds_profile` unless the environment names a profiles file (None: Fast DDS's defaults)."""

    def __init__(self, name: str, parameters: dict, params_file: Path | None = PARAMS_FILE,
                 log_dir: str | Path | None = None, dds_profile: Path | None = DDS_PROFILE):
        self.name = name
        args = [executable(), "--ros-args", "-r", f"__node:={name}"]
        if params_file is not None:
            args[2:2] = ["--params-file", str(params_file)]
        for key, value in parameters.items():
            args += ["-p", f"{key}:={ros_value(value)}"]
        self.log_path = Path(log_dir or tempfile.gettempdir()) / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=with_dds_profile(profile=dds_profile))

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "segmenting" in self.output():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"seg_node exited with {self.process.returncode}:\n{self.output()}")
            time.sleep(0.05)
        raise TimeoutError(f"seg_node not ready after {timeout} s:\n{self.output()}")

    def wait_exit(self, timeout: float = 60.0) -> int:
        return self.process.wait(timeout)

    def stop(self) -> int:
        """Ctrl-C, as a user would; returns the exit status (0 for a clean shutdown)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def topic(self, name: str) -> str:
        return f"/{self.name}/{name}"
