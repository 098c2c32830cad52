"""The ``prefect_secret`` authentication strategy: a token read from a Prefect ``Secret`` block.

Registered as the ``flowmas.secret_resolvers`` entry point named ``prefect`` (pyproject.toml), which is how
the core finds it without importing Prefect. The value only ever goes into a request header.
"""

from __future__ import annotations

from typing import Any, cast

from prefect.blocks.system import Secret


def resolve_prefect_secret(name: str) -> str:
    """The string value of the Secret block ``name`` (sync: called from download threads)."""
    secret = cast(Secret[Any], Secret.load(name, _sync=True))  # type: ignore[call-arg]
    value = secret.get()
    if not isinstance(value, str):
        raise TypeError(f"Secret block {name!r} holds a {type(value).__name__}, not a token string")
    return value
