"""Model compression: structured and unstructured pruning, INT8/FP16 quantization and the sweep over both."""
