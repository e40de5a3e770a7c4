"""Helpers for testing pipelines and stages: virtual time and friends.

Public on purpose (like `trio.testing`); nothing in the core imports it.
"""

from pipeline.testing._clock import FakeClock

__all__ = ["FakeClock"]
