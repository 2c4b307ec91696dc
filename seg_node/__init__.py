"""seg_node: real-time semantic segmentation of camera images for ROS 2, with its offline toolchain."""

__version__ = "0.1.0"
