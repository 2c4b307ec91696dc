"""The RViz configuration for what a launched seg_node publishes: per camera its image, overlay and colour
mask, on the topics the node will really use (namespace, image topics, camera names from params_file).

Kept free of launch and RViz imports, so it is tested here; launch/seg_node.launch.py writes its result to a
temporary file, hands that to rviz2 and removes it at shutdown. config/seg_node.rviz is what it generates for the
defaults.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from .node_parameters import PARAMETERS, camera_names

NODE_NAME = "seg_node"
RVIZ_MISSING = ("rviz:=true but the rviz2 package is not installed (apt install ros-$ROS_DISTRO-rviz2): starting "
                "seg_node without RViz")
OUTPUTS = (("overlay", "Segmentation overlay"), ("color_mask", "Class colours"))


def node_settings(params_file: Path, overrides: dict) -> dict:
    """input_topics and camera_names as the node will see them: params_file (its `/**` and `seg_node`
    sections), then the launch arguments' overrides, then the node's defaults."""
    data = yaml.safe_load(Path(params_file).read_text()) or {}
    settings = {name: PARAMETERS[name].default for name in ("input_topics", "camera_names")}
    for section in ("/**", NODE_NAME, f"/{NODE_NAME}"):
        settings.update({k: v for k, v in (data.get(section) or {}).get("ros__parameters", {}).items()
                         if k in settings})
    settings.update({k: v for k, v in overrides.items() if k in settings})
    return settings


def displayed_topics(namespace: str, input_topics: list[str], names: list[str]) -> list[tuple[str, str]]:
    """(display name, topic) for each camera's image and the node's outputs for it."""
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    prefix = f"{ns}/{NODE_NAME}"
    displays = []
    for name, topic in zip(camera_names(list(input_topics), list(names)), input_topics):
        label = f" ({name})" if name else ""
        displays.append((f"Camera{label}", topic if topic.startswith("/") else f"{ns}/{topic}"))
        for output, title in OUTPUTS:
            displays.append((f"{title}{label}", f"{prefix}/{name}/{output}" if name else f"{prefix}/{output}"))
    return displays


def rviz_config(template: dict, displays: list[tuple[str, str]]) -> dict:
    """The template (config/seg_node.rviz) with one Image display per (name, topic), in that order; the
    camera images keep the template's first display's QoS (best effort), the outputs its second's."""
    config = copy.deepcopy(template)
    camera_display, output_display = config["Visualization Manager"]["Displays"][:2]
    generated = []
    for name, topic in displays:
        display = copy.deepcopy(camera_display if name.startswith("Camera") else output_display)
        display["Name"], display["Topic"]["Value"] = name, topic
        generated.append(display)
    config["Visualization Manager"]["Displays"] = generated
    return config


def write_rviz_config(template_path: Path, out_path: Path, namespace: str, params_file: Path,
                      overrides: dict) -> Path:
    settings = node_settings(params_file, overrides)
    displays = displayed_topics(namespace, settings["input_topics"], settings["camera_names"])
    config = rviz_config(yaml.safe_load(Path(template_path).read_text()), displays)
    Path(out_path).write_text(yaml.safe_dump(config, sort_keys=False))
    return Path(out_path)
