"""The runtime core: model cards, image decoding, the segmentation pipeline and its backends.

It imports neither ROS nor torch (the torch backend loads torch only when it is chosen), so the node, the
offline evaluator and the benchmarks share one implementation and a runtime-only install stays lean.
"""
