"""Model compression: structured pruning, INT8/FP16 quantization and the pruning study over both."""
