"""Face swap: the weight-free mesh swap (`weightfree.py`); Face-Adapter joins here."""

from .weightfree import SwapConfig, WeightFreeSwap

__all__ = ["SwapConfig", "WeightFreeSwap"]
