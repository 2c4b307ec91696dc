"""Launch seg_node on one or more cameras, optionally with RViz showing each image, overlay and colour mask.

    ros2 launch seg_node seg_node.launch.py image:=/camera/image_raw backend:=onnxruntime device:=auto

Launch arguments given override the values in params_file; those left empty keep the file's values.
RViz's configuration is generated from the arguments (namespace, image topics, camera names), so it shows
the topics the node really publishes, into a temporary file removed when the launch shuts down; without rviz2
installed, rviz:=true logs a warning and the node runs alone.
"""

import os
import tempfile
from pathlib import Path

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler, SetEnvironmentVariable
from launch.event_handlers import OnShutdown
from launch.logging import get_logger
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from seg_node.ros.launch_arguments import LAUNCH_PARAMETERS, parameter_overrides, truthy
from seg_node.ros.rviz_config import RVIZ_MISSING, write_rviz_config

ARGUMENTS = (
    ("image", "", "camera image topic(s), comma-separated (base topic when transport is compressed); "
                  "empty: params_file's input_topics"),
    ("transport", "", "raw (sensor_msgs/Image) or compressed (CompressedImage on <image>/compressed); "
                      "empty: params_file's"),
    ("backend", "", "inference backend; empty: params_file's. onnxruntime runs every packaged model (the "
                    "default INT8 card, FP16, FP32); torch runs only cards with a safetensors file "
                    "(camvid_mobile_unet, _robust, _flip, _pruned), not the INT8/FP16 ONNX-only cards"),
    ("device", "", "auto, cpu, cuda, cuda:N or tensorrt (onnxruntime); empty: params_file's"),
    ("model", "", "model card or model file; empty: params_file's (there, empty is the packaged default)"),
    ("params_file", PathJoinSubstitution([FindPackageShare("seg_node"), "config", "seg_node.yaml"]),
     "parameter file for seg_node (must exist)"),
    ("namespace", "", "namespace of the node and its outputs"),
    ("use_sim_time", "false", "use /clock (true when replaying a bag with --clock)"),
    ("rviz", "false", "start RViz showing each camera, overlay and colour mask (needs rviz2 installed)"),
)


def seg_node_with_overrides(context):
    """The node, its parameters from params_file and then from the launch arguments that were given; and
    RViz, configured for those topics, when asked for and installed. Checked before anything starts."""
    config = LaunchConfiguration
    params_file = Path(config("params_file").perform(context))
    if not params_file.is_file():
        raise RuntimeError(f"params_file {params_file} does not exist; pass params_file:=<a seg_node .yaml>")
    overrides = parameter_overrides({name: config(name).perform(context) for name in LAUNCH_PARAMETERS})
    use_sim_time = ParameterValue(config("use_sim_time"), value_type=bool)
    actions = [Node(
        package="seg_node",
        executable="seg_node",
        name="seg_node",
        namespace=config("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[str(params_file), {**overrides, "use_sim_time": use_sim_time}],
    )]
    if not truthy(config("rviz").perform(context)):
        return actions
    try:
        get_package_share_directory("rviz2")
    except PackageNotFoundError:
        get_logger("launch.user").warning(RVIZ_MISSING)
        return actions
    share = Path(get_package_share_directory("seg_node"))
    descriptor, rviz_path = tempfile.mkstemp(prefix="seg_node_", suffix=".rviz")
    os.close(descriptor)  # written by name below
    rviz_file = Path(rviz_path)
    write_rviz_config(share / "config" / "seg_node.rviz", rviz_file, config("namespace").perform(context),
                      params_file, overrides)
    actions.append(Node(
        package="rviz2",
        executable="rviz2",
        name="seg_node_rviz",
        arguments=["-d", str(rviz_file)],
        parameters=[{"use_sim_time": use_sim_time}],
    ))
    actions.append(RegisterEventHandler(OnShutdown(on_shutdown=lambda event, context: rviz_file.unlink(
        missing_ok=True))))
    return actions


def generate_launch_description():
    arguments = [DeclareLaunchArgument(name, default_value=default, description=description)
                 for name, default, description in ARGUMENTS]
    # The shipped Fast DDS profile (large images over shared memory); kept when the user already named one.
    profile = PathJoinSubstitution([FindPackageShare("seg_node"), "config", "fastdds_large_images.xml"])
    dds = SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                                 EnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", default_value=profile))
    return LaunchDescription([*arguments, dds, OpaqueFunction(function=seg_node_with_overrides)])
