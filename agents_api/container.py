"""The SDK's ``opaca.container`` module path: ``Container`` is the core's (``flowmas.opaca.container``)."""

from flowmas.opaca.container import Container

__all__ = ["Container"]
