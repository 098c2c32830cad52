"""Turn an asset's ``authentication`` into request credentials, before any request is made.

Tokens live only in the returned headers or token string: never in logs, errors, metadata or Prefect
parameters. They are checked when read: a token that is not printable ASCII (a ``.env`` line ending in
CR/LF, a pasted non-breaking space) would be refused by the HTTP library with an error that quotes the
header, so it is refused here first, naming where it came from and the position of the bad character,
never the value. ``prefect_secret`` is resolved through a ``SecretResolver`` (block name -> value): the core
does not import Prefect, so the resolver is passed in, or found through the ``flowmas.secret_resolvers``
entry point that the ``blocks`` package registers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from importlib.metadata import entry_points

from flowmas.assets.manifest import HF_TOKEN_ENV_VARS, AssetConfig, HttpSourceConfig, HubSourceConfig
from flowmas.errors import AuthenticationError, ConfigurationError

SecretResolver = Callable[[str], str]


@cache
def installed_secret_resolver() -> SecretResolver | None:
    """The resolver registered under the ``flowmas.secret_resolvers`` entry point named ``prefect``."""
    for entry in entry_points(group="flowmas.secret_resolvers", name="prefect"):
        return entry.load()  # type: ignore[no-any-return]
    return None


def _secret(asset: AssetConfig, block: str, resolver: SecretResolver | None) -> str:
    resolver = resolver or installed_secret_resolver()
    if resolver is None:
        raise ConfigurationError(
            f"Asset {asset.name!r} uses strategy 'prefect_secret' but no secret resolver is installed; "
            "install flowmas with its 'blocks' package or pass secret_resolver= to AssetManager."
        )
    try:
        value = resolver(block)
    except Exception as exc:  # noqa: BLE001 - a resolver may fail any way; reported as a sentence
        raise AuthenticationError(
            f"Asset {asset.name!r}: could not load the Prefect Secret block {block!r} "
            f"({type(exc).__name__}); create it with `prefect block create secret` or fix the name.",
            asset=asset.name,
        ) from None
    if not value:
        raise AuthenticationError(f"Asset {asset.name!r}: the Secret block {block!r} is empty.", asset=asset.name)
    return checked_token(value, f"the Prefect Secret block {block!r}", asset.name)


def _env_token(asset: AssetConfig, names: tuple[str, ...]) -> str:
    for name in names:
        if value := os.environ.get(name):
            return checked_token(value, f"${name}", asset.name)
    shown = " or ".join(f"${n}" for n in names)
    raise AuthenticationError(
        f"Asset {asset.name!r} is configured to send a token from {shown}, which is not set; "
        "export it (or put it in the project's .env) and try again.",
        asset=asset.name,
    )


def checked_token(value: str, source: str, asset: str) -> str:
    """``value`` if it can travel in an HTTP header, else an ``AuthenticationError`` that never shows it."""
    for index, char in enumerate(value):
        code = ord(char)
        if char in "\r\n":
            problem = "a line break (CR or LF)"
        elif code < 0x20 or code == 0x7F:
            problem = "a control character"
        elif code > 0x7E:
            problem = "a non-ASCII character"
        elif char in " \t" and (index == 0 or index == len(value) - 1):
            problem = "leading or trailing whitespace"
        else:
            continue
        raise AuthenticationError(
            f"Asset {asset!r}: the token in {source} has {problem} at position {index + 1} of {len(value)}; "
            "a token must be printable ASCII (a .env file with CR/LF line endings is a common cause). Fix the "
            "value; nothing was sent.", asset=asset)
    return value


def http_headers(asset: AssetConfig, resolver: SecretResolver | None = None) -> dict[str, str]:
    """The auth headers for an http source (empty without ``authentication``)."""
    auth = asset.authentication
    if auth is None or not isinstance(asset.source, HttpSourceConfig):
        return {}
    details = auth.http
    header = details.header_name if details else "Authorization"
    scheme = details.scheme if details else "Bearer"
    if auth.strategy == "prefect_secret":
        token = _secret(asset, auth.block or "", resolver)
    else:
        token = _env_token(asset, (details.token_env_var,))  # type: ignore[union-attr,arg-type]
    return {header: f"{scheme} {token}" if scheme else token}


def hub_token(asset: AssetConfig, resolver: SecretResolver | None = None) -> str | None:
    """The token for an hf source; None lets huggingface_hub use its own default (HF_TOKEN / login)."""
    auth = asset.authentication
    if auth is None or not isinstance(asset.source, HubSourceConfig):
        return None
    if auth.strategy == "prefect_secret":
        return _secret(asset, auth.block or "", resolver)
    names = (auth.hf.token_env_var,) if auth.hf and auth.hf.token_env_var else HF_TOKEN_ENV_VARS
    return _env_token(asset, names)
