"""The offline toolchain (torch): CamVid data, the U-Net family, training, pruning, quantization, export,
evaluation and the corruption benchmark. Installed with the `train` extra; the node does not need it."""
