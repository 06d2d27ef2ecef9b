"""Training stage: one module per mode (the softmax head on cached vectors in `head`)."""
