"""The GPU check and the GPU training path rehearsed on this CPU (opt-in: SEG_NODE_GPU_DRY_RUN=1; docs/gpu.md).

A Python 3.12 venv stands in for the GPU machine's image, with its versions of torch (PyPI's 2.11.0, the same
CUDA 13 build, which runs on a CPU), numpy, onnxruntime and OpenCV: `scripts/gpu_wheels machine`, built once with
network (SEG_NODE_GPU_STAND_IN names it; a Python 3.12 from SEG_NODE_PYTHON312, PATH or pyenv). What a device
call would send is copied to a folder (`scripts/gpu_wheels copy`), and the scripts run there with device cpu,
tiny amounts and, where `unshare` may make one, in a network namespace with loopback only: they need nothing
they do not bring. Both tests rebuild gpu_wheels/ (the training test first; the check's set is left)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ros_harness import REPO

pytestmark = pytest.mark.skipif(os.environ.get("SEG_NODE_GPU_DRY_RUN") != "1",
                                reason="opt-in: SEG_NODE_GPU_DRY_RUN=1 (minutes; docs/gpu.md)")
STAND_IN = Path(os.environ.get("SEG_NODE_GPU_STAND_IN", Path.home() / ".cache" / "seg_node" / "gpu_machine"))
GPU_WHEELS = [sys.executable, str(REPO / "scripts" / "gpu_wheels")]
GPU_TRAIN = [sys.executable, str(REPO / "scripts" / "gpu_train")]
COMPACT = ".camvid_compact_dry_run"  # git-ignored; .camvid_compact stays the user's
PHASES = ("setup", "machine", "correctness", "latency", "batch", "training", "tests", "node")


def python312() -> str | None:
    candidates = [os.environ.get("SEG_NODE_PYTHON312"), shutil.which("python3.12"),
                  *sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))]
    return next((c for c in candidates if c), None)


@pytest.fixture(scope="module")
def stand_in() -> Path:
    """The stand-in's Python, built on first use (downloads about 3 GB: torch and its CUDA libraries)."""
    python = STAND_IN / "bin" / "python"
    if not python.exists():
        interpreter = python312()
        if interpreter is None:
            pytest.skip("no Python 3.12 for the stand-in (set SEG_NODE_PYTHON312)")
        subprocess.run([*GPU_WHEELS, "machine", str(STAND_IN), "--python", interpreter], check=True)
    return python


def offline(command: list) -> list[str]:
    """The command in a network namespace with loopback only (DDS still runs), where one can be made."""
    command = [str(part) for part in command]
    if shutil.which("unshare") and shutil.which("ip") and subprocess.run(
            ["unshare", "-rn", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]
    return command  # the installs are offline anyway: pip --no-index, the machine's configuration ignored


def clip_as_camvid(root: Path, frames: int = 4) -> Path:
    """The first clip frames as a tiny CamVid (SegNet layout) with train and val splits."""
    images = sorted((REPO / "data" / "camvid_clip" / "test").iterdir())[:frames]
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for image in images:
            shutil.copy(image, root / split)
            shutil.copy(REPO / "data" / "camvid_clip" / "testannot" / f"{image.stem}.png", root / f"{split}annot")
    return root


def run_sent(command: list, sent: Path, timeout: float) -> float:
    """Run in the copy of what travels, offline; its seconds."""
    started = time.monotonic()
    result = subprocess.run(offline(command), cwd=sent, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return time.monotonic() - started


def test_gpu_train_runs_a_command_within_its_budget_and_brings_back_checkpoints_that_load(stand_in, tmp_path):
    import torch
    subprocess.run([*GPU_TRAIN, "pack", "--data", str(clip_as_camvid(tmp_path / "camvid")), "--compact", COMPACT,
                    "--encoder", "lite0"], check=True)
    sent, out = tmp_path / "sent", tmp_path / "out"
    subprocess.run([*GPU_WHEELS, "copy", str(sent), "--keep", "--carry", "gpu_wheels", COMPACT], check=True)
    # far more epochs than the budget holds on a CPU: the command is interrupted, what it saved comes back
    seconds = run_sent([stand_in, "scripts/gpu_train", "run", "--budget", "150", out, "--", "seg-train", "--data",
                        COMPACT, "--out", "runs/dry_run", "--epochs", "300", "--max-steps-per-epoch", "1",
                        "--batch-size", "2", "--val-every", "1", "--device", "cpu",
                        "--arch", '{"name": "mobile_unet", "pretrained": true}'], sent, timeout=400)
    print(f"gpu_train run: {seconds:.0f} s")
    log = (out / "gpu_train.log").read_text()
    assert "stopped at the budget" in log and "brought back" in log, log[-3000:]
    returned = list(out.iterdir())
    assert len(returned) <= 8 and all(f.stat().st_size <= 16 * 2**20 for f in returned)  # the device tool's limits
    subprocess.run([*GPU_TRAIN, "unpack", str(out), str(tmp_path / "back")], check=True)
    run = tmp_path / "back" / "runs" / "dry_run"
    with open(run / "log.csv") as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    checkpoints = sorted(run.glob("*.pt"))
    assert epochs and checkpoints
    for path in checkpoints:
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert 1 <= state["epoch"] <= max(epochs) and "model" in state, path


def test_the_gpu_check_runs_end_to_end_on_what_travels(stand_in, tmp_path):
    subprocess.run([*GPU_WHEELS, "check"], check=True)
    sent, out = tmp_path / "sent", tmp_path / "out"
    subprocess.run([*GPU_WHEELS, "copy", str(sent), "--carry", "gpu_wheels"], check=True)
    seconds = run_sent([stand_in, "scripts/gpu_check", "--device", "cpu", "--tiny", "--budget", "1500", out], sent,
                       timeout=1600)
    print(f"gpu_check dry run: {seconds:.0f} s")
    report = json.loads((out / "gpu_check.json").read_text())
    phases = report["phases"]
    ros = report["travelled"]["ros"]["included"]
    expected = dict.fromkeys(PHASES, "ok") | ({} if ros else {"node": "skipped"})
    assert {name: phase["status"] for name, phase in phases.items()} == expected, (out / "gpu_check.md").read_text()
    results = {name: phase.get("results", {}) for name, phase in phases.items()}
    assert results["machine"]["versions"]["torch"].startswith("2.11.0")
    assert results["correctness"]["fp32"]["pixels_equal"] == 1.0  # CPU against CPU: the comparison itself
    assert "CUDA" in results["correctness"]["fp16_error"]  # fp16 needs CUDA: recorded, the rest ran
    for size in ("480x360", "640x360"):
        assert results["latency"][f"pipeline_{size}"]["fp32"]["total"]["median"] > 0
        assert results["latency"][f"network_fp32_{size}_contiguous"]["median"] > 0
    assert all(results["batch"][f"fp32_batch_{n}"]["frames_per_second"] > 0 for n in (1, 2))
    assert results["training"]["fp32"]["images_per_second"] > 0
    outcomes = results["tests"]["outcomes"]
    assert outcomes and set(outcomes.values()) == {"skipped"}  # no CUDA here; on the GPU the torch tests run
    if ros:
        assert "torch on cpu" in results["node"]["start_up"]
        assert results["node"]["480x360"]["mask_received"]["median"] > 0
    assert "| correctness | ok |" in (out / "gpu_check.md").read_text()
