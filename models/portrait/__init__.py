"""Talking photos without weights: one portrait + speech -> frames (weightfree.py)."""
