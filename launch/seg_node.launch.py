"""Launch seg_node on one camera, optionally with RViz showing the image, overlay and colour mask.

    ros2 launch seg_node seg_node.launch.py image:=/camera/image_raw backend:=onnxruntime device:=auto

Launch arguments given override the values in params_file; those left empty keep the file's values.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription
from seg_node.ros.launch_arguments import LAUNCH_PARAMETERS, parameter_overrides

ARGUMENTS = (
    ("image", "", "camera image topic(s), comma-separated (base topic when transport is compressed); "
                  "empty: params_file's input_topics"),
    ("transport", "", "raw (sensor_msgs/Image) or compressed (CompressedImage on <image>/compressed); "
                      "empty: params_file's"),
    ("backend", "", "inference backend: onnxruntime or torch; empty: params_file's"),
    ("device", "", "auto, cpu, cuda, cuda:N or tensorrt (onnxruntime); empty: params_file's"),
    ("model", "", "model card or model file; empty: params_file's (there, empty is the packaged default)"),
    ("params_file", PathJoinSubstitution([FindPackageShare("seg_node"), "config", "seg_node.yaml"]),
     "parameter file for seg_node"),
    ("namespace", "", "namespace of the node and its outputs"),
    ("use_sim_time", "false", "use /clock (true when replaying a bag with --clock)"),
    ("rviz", "false", "start RViz with config/seg_node.rviz"),
)


def seg_node_with_overrides(context):
    """The node, its parameters from params_file and then from the launch arguments that were given."""
    config = LaunchConfiguration
    overrides = parameter_overrides({name: config(name).perform(context) for name in LAUNCH_PARAMETERS})
    return [Node(
        package="seg_node",
        executable="seg_node",
        name="seg_node",
        namespace=config("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[
            config("params_file"),
            {**overrides, "use_sim_time": ParameterValue(config("use_sim_time"), value_type=bool)},
        ],
    )]


def generate_launch_description():
    arguments = [DeclareLaunchArgument(name, default_value=default, description=description)
                 for name, default, description in ARGUMENTS]
    config = LaunchConfiguration
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="seg_node_rviz",
        arguments=["-d", PathJoinSubstitution([FindPackageShare("seg_node"), "config", "seg_node.rviz"])],
        parameters=[{"use_sim_time": ParameterValue(config("use_sim_time"), value_type=bool)}],
        condition=IfCondition(config("rviz")),
    )
    return LaunchDescription([*arguments, OpaqueFunction(function=seg_node_with_overrides), rviz])
