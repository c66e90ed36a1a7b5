"""Lip-sync renderers that need no weights: the Video-Rewrite-style weight-free dub (weightfree.py)."""
