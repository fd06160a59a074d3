"""Fixtures of the rotation integration tests (defined in ``stack.py``)."""

from tests.integration.rotation.stack import azurite, stack, stack_options

__all__ = ["azurite", "stack", "stack_options"]
