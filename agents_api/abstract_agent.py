"""The SDK's ``opaca.abstract_agent`` module path: ``AbstractAgent`` is the core's (``flowmas.opaca.agent``).

An agent written for the ``opaca`` SDK runs here by changing its imports from ``opaca`` to ``agents_api``.
"""

from flowmas.opaca.agent import AbstractAgent, ActionSpec, StreamSpec

__all__ = ["AbstractAgent", "ActionSpec", "StreamSpec"]
