"""Launch seg_node on one camera, optionally with RViz showing the image, overlay and colour mask.

    ros2 launch seg_node seg_node.launch.py image:=/camera/image_raw backend:=onnxruntime device:=auto

Launch arguments override the values in params_file.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = (
    ("image", "/camera/image_raw", "camera image topic (base topic when transport is compressed)"),
    ("transport", "raw", "raw (sensor_msgs/Image) or compressed (CompressedImage on <image>/compressed)"),
    ("backend", "onnxruntime", "inference backend: onnxruntime or torch"),
    ("device", "auto", "auto, cpu, cuda, cuda:N or tensorrt (onnxruntime)"),
    ("model", "", "model card or model file; empty: the packaged default model"),
    ("params_file", PathJoinSubstitution([FindPackageShare("seg_node"), "config", "seg_node.yaml"]),
     "parameter file for seg_node"),
    ("namespace", "", "namespace of the node and its outputs"),
    ("use_sim_time", "false", "use /clock (true when replaying a bag with --clock)"),
    ("rviz", "false", "start RViz with config/seg_node.rviz"),
)


def generate_launch_description():
    arguments = [DeclareLaunchArgument(name, default_value=default, description=description)
                 for name, default, description in ARGUMENTS]
    config = LaunchConfiguration
    seg_node = Node(
        package="seg_node",
        executable="seg_node",
        name="seg_node",
        namespace=config("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[
            config("params_file"),
            {
                "input_topics": [config("image")],
                "input_transport": ParameterValue(config("transport"), value_type=str),
                "backend": ParameterValue(config("backend"), value_type=str),
                "device": ParameterValue(config("device"), value_type=str),
                "model": ParameterValue(config("model"), value_type=str),
                "use_sim_time": ParameterValue(config("use_sim_time"), value_type=bool),
            },
        ],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="seg_node_rviz",
        arguments=["-d", PathJoinSubstitution([FindPackageShare("seg_node"), "config", "seg_node.rviz"])],
        parameters=[{"use_sim_time": ParameterValue(config("use_sim_time"), value_type=bool)}],
        condition=IfCondition(config("rviz")),
    )
    return LaunchDescription([*arguments, seg_node, rviz])
