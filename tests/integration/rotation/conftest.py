"""Fixtures of the rotation integration tests (defined in ``stack.py``)."""

from tests.integration.rotation.stack import stack, stack_options

__all__ = ["stack", "stack_options"]
