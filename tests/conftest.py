"""Shared fixtures: an isolated ROS domain, a small random model and its pipeline, a real rclpy peer, node processes
and a crafted pickle."""

from __future__ import annotations

import os
import pickle
import random

import pytest

# Keep DDS traffic on this machine and away from other test runs, before rclpy is imported anywhere.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(100, 200)))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"

from ros_harness import NodeProcess, RosPeer  # noqa: E402

from seg_node.core.pipeline import SegmentationPipeline  # noqa: E402
from seg_node.toolchain.random_model import make_random_model  # noqa: E402


@pytest.fixture(scope="session")
def random_model(tmp_path_factory):
    return make_random_model(tmp_path_factory.mktemp("models") / "random_unet")


@pytest.fixture
def pipeline(random_model):
    """The random model's pipeline in this process: what the node's masks must equal."""
    return SegmentationPipeline.from_model(random_model, backend="onnxruntime", device="cpu")


class Boom:
    """Unpickling this runs code: it writes the file named in `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.fixture
def crafted_pickle(tmp_path):
    """(a pickle whose loading runs code, the file that code writes): for checks that no model file is unpickled."""
    marker = tmp_path / "pwned"
    return pickle.dumps(Boom(marker)), marker


@pytest.fixture(scope="session")
def ros():
    peer = RosPeer()
    yield peer
    peer.close()


@pytest.fixture
def seg_node(request, random_model, tmp_path):
    """Factory: seg_node(**params) -> NodeProcess running the seg_node console script; `suffix` names a second
    node of the same test, `wait=False` returns before it is ready (several start side by side)."""
    started = []

    def start(wait=True, suffix="", **parameters):
        parameters.setdefault("model", str(random_model))
        name = f"{request.node.name}_{suffix}" if suffix else request.node.name
        process = NodeProcess(name, parameters, tmp_path)
        started.append(process)
        if wait:
            process.wait_until_ready()
        return process

    yield start
    for process in started:
        process.stop()
