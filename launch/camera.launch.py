"""A camera and seg_node together: a V4L2 device or a video file published by this package's
OpenCV camera_publisher, segmented by seg_node.

    ros2 launch seg_node camera.launch.py source:=/dev/video0
    ros2 launch seg_node camera.launch.py source:=drive.mp4 rate:=15.0 rviz:=true

To use usb_cam or v4l2_camera instead, start that driver and run seg_node.launch.py with
image:=<its image topic> (for example image:=/image_raw for v4l2_camera's default).
"""

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

ARGUMENTS = (
    ("source", "/dev/video0", "V4L2 device (/dev/videoN or its index) or a video file"),
    ("rate", "30.0", "publish rate in Hz (a video file is paced to it; a device is polled at it)"),
    ("loop", "true", "restart a video file at its end"),
    ("frame_id", "camera", "frame_id in the image headers"),
    ("backend", "", "seg_node inference backend: onnxruntime or torch; empty: config/seg_node.yaml's"),
    ("device", "", "seg_node device: auto, cpu, cuda, cuda:N or tensorrt; empty: config/seg_node.yaml's"),
    ("model", "", "model card or model file; empty: config/seg_node.yaml's (the packaged default model)"),
    ("rviz", "false", "start RViz with config/seg_node.rviz"),
)


def generate_launch_description():
    arguments = [DeclareLaunchArgument(name, default_value=default, description=description)
                 for name, default, description in ARGUMENTS]
    config = LaunchConfiguration
    camera = Node(
        package="seg_node",
        executable="camera_publisher",
        name="camera_publisher",
        namespace="camera",
        output="screen",
        parameters=[{
            "source": ParameterValue(config("source"), value_type=str),
            "rate": ParameterValue(config("rate"), value_type=float),
            "loop": ParameterValue(config("loop"), value_type=bool),
            "frame_id": ParameterValue(config("frame_id"), value_type=str),
        }],
    )
    segmentation = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([FindPackageShare("seg_node"), "launch",
                                                            "seg_node.launch.py"])),
        launch_arguments={"image": "/camera/image_raw", "backend": config("backend"), "device": config("device"),
                          "model": config("model"), "rviz": config("rviz")}.items(),
    )
    return LaunchDescription([*arguments, camera, segmentation])
