"""rosbag2 tools: `convert` turns CamVid (or any folder of frames) into a bag, `replay` plays a bag through rclpy.

Bags are written and read with the pure-Python `rosbags` library, so neither tool needs `ros2 bag`, and the
bags are ordinary rosbag2 bags that `ros2 bag info/play` (Humble and later) read too. Nothing is imported here:
`convert` runs without ROS installed while `replay` needs rclpy, and `python -m seg_node.bags.<tool>` stays clean.
"""
