"""Operators: one module per operator family; generators one subpackage per system."""

from .base import Filtered, Operator, OperatorError, Resources, RunContext

__all__ = ["Filtered", "Operator", "OperatorError", "Resources", "RunContext"]
