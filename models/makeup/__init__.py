"""Makeup transfer: the weight-free region colour transfer (`weightfree.py`); BeautyREC joins here."""

from .weightfree import MakeupConfig, MakeupState, WeightFreeMakeup

__all__ = ["MakeupConfig", "MakeupState", "WeightFreeMakeup"]
