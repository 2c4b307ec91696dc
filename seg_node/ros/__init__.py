"""The ROS 2 side: the seg_node node, its parameters and run-time settings, camera frames checked once, each
camera's outputs, camera health for /diagnostics, message conversion, the OpenCV camera publisher and the helpers
of the launch files."""
