"""EfficientNet-Lite0/1/2 (placeholder until the built-in extractor lands)."""
