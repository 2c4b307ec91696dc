"""Tools around a running node: rosbag2 conversion and replay (the `rosbags` library, no `ros2 bag` needed),
live evaluation, the stress runs, the benchmarks, the demo, and the peer/process helpers they share with the
tests."""
