"""Training: the Ray Train + DeepSpeed runtime of `facefab train` (runtime.py, the driver; trainer.py,
the worker), the training-system contract and registry (systems.py, catalog.py) and one module per
trainable system (facevid2vid.py, mytalk.py). runtime.py's docstring lists every module."""
