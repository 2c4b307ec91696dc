"""A camera and seg_node together: a V4L2 device or a video file published by this package's
OpenCV camera_publisher, segmented by seg_node.

    ros2 launch seg_node camera.launch.py source:=/dev/video0
    ros2 launch seg_node camera.launch.py source:=drive.mp4 rate:=15.0 rviz:=true image:=/front/image_raw

The launch ends when camera_publisher exits, so seg_node is never left running without a camera: a source that
cannot be opened (its message shown), or a video file played to its end with loop:=false (exit 0).

To use usb_cam or v4l2_camera instead, start that driver and run seg_node.launch.py with
image:=<its image topic> (for example image:=/image_raw for v4l2_camera's default).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, SetEnvironmentVariable, Shutdown
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = (
    ("source", "/dev/video0", "V4L2 device (/dev/videoN or its index) or a video file"),
    ("rate", "30.0", "publish rate in Hz (a video file is paced to it; a device is polled at it)"),
    ("loop", "true", "restart a video file at its end; false: the launch ends with the file"),
    ("frame_id", "camera", "frame_id in the image headers"),
    ("image", "/camera/image_raw", "topic the camera publishes on and seg_node reads"),
    ("backend", "", "seg_node inference backend; empty: config/seg_node.yaml's. onnxruntime runs every packaged "
                    "model; torch only cards with a safetensors file (not the INT8/FP16 ONNX-only cards)"),
    ("device", "", "seg_node device: auto, cpu, cuda, cuda:N or tensorrt; empty: config/seg_node.yaml's"),
    ("model", "", "model card or model file; empty: config/seg_node.yaml's (the packaged default model)"),
    ("rviz", "false", "start RViz showing the camera, overlay and colour mask (needs rviz2 installed)"),
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
        remappings=[("image_raw", config("image"))],
        on_exit=Shutdown(reason="camera_publisher exited"),
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
        launch_arguments={"image": config("image"), "backend": config("backend"), "device": config("device"),
                          "model": config("model"), "rviz": config("rviz")}.items(),
    )
    # The camera publisher needs the shipped Fast DDS profile as much as the node (the sender's transports decide
    # whether an HD frame goes over shared memory); kept when the user already named a profiles file.
    profile = PathJoinSubstitution([FindPackageShare("seg_node"), "config", "fastdds_large_images.xml"])
    dds = SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                                 EnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", default_value=profile))
    return LaunchDescription([*arguments, dds, camera, segmentation])
