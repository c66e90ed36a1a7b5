"""Training: the Ray Train + DeepSpeed runtime, the training-system contract and one module per
trainable system."""
