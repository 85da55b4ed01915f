"""Dataset readers (DeepSense 6G, MM-Fi), the sample schema, splits, and WebDataset shard I/O."""
