"""ament_python package: `colcon build` installs it into a ROS 2 workspace, `pip install -e .` into a venv."""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "seg_node"


def requirements(name: str) -> list[str]:
    """The requirement lines of a requirements file beside this one (comments and -r lines dropped)."""
    lines = (line.split(" #")[0].strip() for line in (Path(__file__).parent / name).read_text().splitlines())
    return [line for line in lines if line and not line.startswith(("#", "-"))]


setup(
    name=PACKAGE,
    version="0.2.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
        (f"share/{PACKAGE}/models", glob("models/*.json") + glob("models/*.onnx") + glob("models/*.safetensors")
         + glob("models/*.md")),
        (f"share/{PACKAGE}/data/camvid_clip", ["data/camvid_clip/README.md"]),
        (f"share/{PACKAGE}/data/camvid_clip/test", glob("data/camvid_clip/test/*")),
        (f"share/{PACKAGE}/data/camvid_clip/testannot", glob("data/camvid_clip/testannot/*")),
    ],
    install_requires=["setuptools"],
    # the offline toolchain and the torch backend: pip install '.[train]' (imagecorruptions-imaug and
    # cityscapesscripts separately, with --no-deps: see scripts/setup_env.sh)
    extras_require={"train": requirements("requirements-train.txt")},
    zip_safe=True,
    maintainer="seg_node maintainers",
    maintainer_email="seg-node-maintainers@example.com",
    description="Real-time semantic segmentation node for ROS 2 with a pruned U-Net.",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            # nodes
            f"seg_node = {PACKAGE}.ros.segmentation_node:main",
            f"camera_publisher = {PACKAGE}.ros.camera_publisher:main",
            # ROS tools
            f"seg-dataset-to-bag = {PACKAGE}.ros_tools.bag_convert:main",
            f"seg-bag-replay = {PACKAGE}.ros_tools.bag_replay:main",
            f"seg-live-eval = {PACKAGE}.ros_tools.live_eval:main",
            f"seg-demo = {PACKAGE}.ros_tools.demo:main",
            f"seg-benchmark = {PACKAGE}.ros_tools.benchmark:main",
            f"seg-stress = {PACKAGE}.ros_tools.stress:main",
            # offline toolchain
            f"seg-train = {PACKAGE}.toolchain.training.train:main",
            f"seg-class-bias = {PACKAGE}.toolchain.training.class_bias:main",
            f"seg-export = {PACKAGE}.toolchain.export:main",
            f"seg-import = {PACKAGE}.toolchain.import_model:main",
            f"seg-eval = {PACKAGE}.toolchain.evaluation.evaluate:main",
            f"seg-robustness = {PACKAGE}.toolchain.evaluation.robustness:main",
            f"seg-calibrate-confidence = {PACKAGE}.toolchain.evaluation.calibrate_confidence:main",
            f"seg-interpolate = {PACKAGE}.toolchain.training.interpolate:main",
            f"seg-prune = {PACKAGE}.toolchain.compression.prune:main",
            f"seg-quantize = {PACKAGE}.toolchain.compression.quantize:main",
            f"seg-sweep = {PACKAGE}.toolchain.compression.sweep:main",
            f"seg-camvid-compact = {PACKAGE}.toolchain.data.camvid_compact:main",
        ],
    },
)
