"""The SDK's ``opaca.decorators`` module path: ``@action`` and ``@stream`` are the core's (``flowmas.opaca.agent``)."""

from flowmas.opaca.agent import action, stream

__all__ = ["action", "stream"]
