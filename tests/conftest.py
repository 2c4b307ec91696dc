"""Shared fixtures: an isolated ROS domain, a small random model, a real rclpy peer and node processes."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

# Keep DDS traffic on this machine and away from other test runs, before rclpy is imported anywhere.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(100, 200)))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"

from ros_harness import NodeProcess, RosPeer  # noqa: E402

RANDOM_MODEL_SIZE = (96, 128)


def make_random_model(out_stem, architecture=None, size=RANDOM_MODEL_SIZE, seed=0):
    """Export a randomly initialised (untrained) model with its card; for tests only."""
    import torch
    from seg_node.data import CAMVID_CLASSES, CAMVID_PALETTE
    from seg_node.export import export_model
    from seg_node.model_card import InputSpec
    from seg_node.models import build_model
    torch.manual_seed(seed)
    architecture = architecture or {"name": "unet", "base_width": 8, "depth": 3}
    model = build_model(architecture, len(CAMVID_CLASSES))
    spec = InputSpec(height=size[0], width=size[1])
    calibrate_batchnorm(model, size, seed)
    inputs = np.random.default_rng(seed).standard_normal((2, 3, *size)).astype(np.float32)
    export_model(model, out_stem, name=f"random-{architecture['name']} (untrained, tests only)",
                 architecture=architecture, classes=CAMVID_CLASSES, palette=CAMVID_PALETTE, spec=spec,
                 parity_inputs=inputs, notes="randomly initialised at test time; not a trained model")
    return out_stem.with_suffix(".onnx")


def calibrate_batchnorm(model, size, seed):
    """Set BatchNorm statistics from image-like inputs, so an untrained model's masks vary across the image
    (with fresh statistics every pixel gets the same class and mask comparisons would prove little)."""
    import cv2
    import torch
    from seg_node.model_card import InputSpec
    from seg_node.preprocess import normalize
    rng = np.random.default_rng(seed)
    spec = InputSpec(height=size[0], width=size[1])
    images = [cv2.resize(rng.integers(0, 256, (6, 8, 3), np.uint8), (size[1], size[0]),
                         interpolation=cv2.INTER_CUBIC) for _ in range(8)]
    batch = torch.from_numpy(np.stack([normalize(image, spec, "rgb") for image in images]))
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(batch)
    model.eval()


@pytest.fixture(scope="session")
def random_model(tmp_path_factory):
    return make_random_model(tmp_path_factory.mktemp("models") / "random_unet")


@pytest.fixture(scope="session")
def ros():
    peer = RosPeer()
    yield peer
    peer.close()


@pytest.fixture
def seg_node(request, random_model):
    """Factory: start_node(**params) -> NodeProcess running the seg_node console script."""
    started = []

    def start(wait=True, **parameters):
        parameters.setdefault("model", str(random_model))
        process = NodeProcess(request.node.name, parameters)
        started.append(process)
        if wait:
            process.wait_until_ready()
        return process

    yield start
    for process in started:
        process.stop()
