"""Shared fixtures: an isolated ROS domain, a small random model (also with a dynamic batch axis) and its pipeline,
a real rclpy peer, node processes and a crafted pickle."""

from __future__ import annotations

import os
import pickle
import random
from contextlib import ExitStack

import numpy as np
import pytest
from ros_harness import node_name_for

from seg_node.core.pipeline import SegmentationPipeline
from seg_node.ros_tools.node_process import ros_environment, running_seg_node
from seg_node.ros_tools.ros_peer import RosPeer
from seg_node.toolchain.export import export_model
from seg_node.toolchain.random_model import make_random_model

# Keep DDS traffic on this machine and away from other test runs; set before any participant is created. This
# process keeps Fast DDS's defaults (tests that need the large-image profile start processes with it).
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(100, 200)))
os.environ.update(ros_environment(dds_profile=None))


@pytest.fixture(scope="session")
def random_model(tmp_path_factory):
    return make_random_model(tmp_path_factory.mktemp("models") / "random_unet")


@pytest.fixture
def pipeline(random_model):
    """The random model's pipeline in this process: what the node's masks must equal."""
    return SegmentationPipeline.from_model(random_model, backend="onnxruntime", device="cpu")


@pytest.fixture(scope="session")
def dynamic_batch_model(random_model, tmp_path_factory):
    """The random model exported again with a dynamic batch axis (seg-export --dynamic-batch), its card saying so."""
    folder = tmp_path_factory.mktemp("dynamic_batch")
    torch_pipeline = SegmentationPipeline.from_model(random_model, backend="torch", device="cpu")
    card = torch_pipeline.card
    inputs = np.random.default_rng(0).standard_normal((2, 3, card.input.height, card.input.width)).astype(np.float32)
    export_model(torch_pipeline.backend.model.float(), folder / "batched", name="batched",
                 architecture=card.architecture, classes=card.classes, palette=card.palette, spec=card.input,
                 parity_inputs=inputs, dynamic_batch=True)
    return folder / "batched.json"


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
    with RosPeer() as peer:
        yield peer


@pytest.fixture
def seg_node(request, ros, random_model, tmp_path):
    """Factory: seg_node(**params) -> SegNodeProcess running the seg_node console script (running_seg_node with
    the `ros` peer), stopped after the test; `suffix` names a second node of the same test, `wait=False` returns
    before it is ready (several start side by side, or one is expected to fail)."""
    with ExitStack() as running:
        def start(wait=True, suffix="", **parameters):
            parameters.setdefault("model", str(random_model))
            name = node_name_for(f"{request.node.name}_{suffix}" if suffix else request.node.name)
            return running.enter_context(running_seg_node(parameters, name=name, peer=ros, wait=wait,
                                                          log_dir=tmp_path))

        yield start
