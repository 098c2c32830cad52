"""``render_for_llm(metadata)``: a file's ``<file>`` block for a prompt (SAM's ``get_file_block_by_metadata``).

Shape (SAM's, compact; attributes and elements only when present)::

    <file name="sales.csv" mime_type="text/csv" file_size="1234" expiration_timestamp="2026-01-02T03:04:05Z" owner="x">
    <url>amfs://0123…_sales.csv</url>
    <schema-yaml>
    type: array
    …
    </schema-yaml>
    <shape>100 rows x 3 columns</shape>
    <schema-error>…</schema-error>
    <data-source>…</data-source>
    </file>

``session_id``, ``upload_timestamp`` and ``sha256`` are left out (SAM dropped the first two; a hash is noise
to a model). Caller extras (top-level keys this module does not own, or the ``extra`` mapping) become
attributes after the owned ones, at most ``MAX_EXTRAS`` of them, each value at most ``MAX_EXTRA_CHARS``.

**Escaping rule — nothing a user controls can close or forge the block or add a field line.** Every value
(file name, URL, data source, extras, schema text, shape, errors) is escaped the same way:

- ``&`` ``<`` ``>`` ``"`` ``'`` become ``&amp;`` ``&lt;`` ``&gt;`` ``&quot;`` ``&#39;``: no tag can be
  opened or closed and no attribute value can end early (in element text, where a quote ends nothing,
  quotes stay as they are, so a YAML schema stays readable);
- every character that is not visible text becomes a numeric reference ``&#xHH;``: control characters
  (C0, DEL, C1 including NEL U+0085), line and paragraph separators (U+2028, U+2029), format characters
  (bidi embeddings/overrides/isolates U+202A–U+202E and U+2066–U+2069, marks U+200E/U+200F, zero-width
  characters, the BOM), surrogates, private-use and unassigned code points;
- the one exception: in the multi-line elements (``schema-yaml``, ``shape``, ``data``) a ``\\n`` stays a
  line break, so the YAML stays readable. Every line in them is escaped as above, so none can hold a tag;
  and the schema and shape writers (``inference.py``) quote or escape user names, so a user's text is
  never a line of its own there.

An extra's *key* is an attribute name, so it must be ``[A-Za-z_][A-Za-z0-9_.-]{0,63}`` and not an owned
name; any other key is written ``extra-<key with every other character as _>`` (never dropped silently,
never able to impersonate ``name`` or ``url``). Values that are not text are written as JSON, then escaped.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

MAX_EXTRAS = 20
MAX_EXTRA_CHARS = 200
MAX_BODY_CHARS = 20_000

# Owned keys: rendered in their own place, or deliberately left out; never as caller extras.
_OWNED = frozenset({
    "name", "filename", "mime_type", "file_size", "size", "url", "upload_timestamp", "expiration_timestamp",
    "session_id", "sha256", "data_source", "data-source", "schema-yaml", "schema_yaml", "schema", "shape",
    "schema_error", "schema-error", "data", "extra", "key", "version",
})
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_TAG_PREFIX = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_.-]{0,31})?")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _escape_char(char: str, quotes: bool) -> str:
    entity = _ENTITIES.get(char)
    if entity is not None and (quotes or char not in "\"'"):
        return entity
    if unicodedata.category(char) in _INVISIBLE:
        return f"&#x{ord(char):X};"
    return char


_SAFE_RUN = re.compile(r"[A-Za-z0-9 _.,:;/()\[\]{}=+*#@!?%$~^|`-]+")


def escape(text: str, *, multiline: bool = False, quotes: bool = True) -> str:
    """``text`` made inert inside the block (the module docstring's rule); ``multiline`` keeps ``\\n``;
    ``quotes=False`` (element text, where a quote ends nothing) keeps quotes readable."""
    if _SAFE_RUN.fullmatch(text):
        return text
    if multiline:
        return "\n".join(escape(line, quotes=quotes) for line in text.split("\n"))
    return "".join(_escape_char(char, quotes) for char in text)


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _timestamp(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None if value is None else _text(value)
    try:
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return _text(value)


def _first(metadata: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = metadata.get(key)
        if value is not None and value != "":
            return value
    return None


def _body(value: object) -> str:
    return escape(_cut(_text(value), MAX_BODY_CHARS).strip("\n"), multiline=True, quotes=False)


def _extra_name(key: str) -> str:
    if _ATTRIBUTE_NAME.fullmatch(key) and key not in _OWNED and not key.startswith("extra-"):
        return key
    return "extra-" + re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:60]


def render_for_llm(metadata: Mapping[str, Any], *, tag_prefix: str = "") -> str:
    """The ``<file>`` block for ``metadata`` as the service returns it (SAM or flowmas key names; missing keys
    are left out). ``tag_prefix`` namespaces the tags as SAM's did (letters, digits, ``_.-``)."""
    if not isinstance(tag_prefix, str) or not _TAG_PREFIX.fullmatch(tag_prefix):
        raise ValueError(f"tag_prefix must be letters, digits and _.- (got {tag_prefix!r})")
    tag = f"{tag_prefix}file"
    attributes: list[tuple[str, str]] = []
    name = _first(metadata, "name", "filename")
    if name is not None:
        attributes.append(("name", _text(name)))
    mime = _first(metadata, "mime_type")
    if mime is not None:
        attributes.append(("mime_type", _text(mime)))
    size = _first(metadata, "file_size", "size")
    if size is not None:
        attributes.append(("file_size", _text(size)))
    expires = _timestamp(_first(metadata, "expiration_timestamp"))
    if expires is not None:
        attributes.append(("expiration_timestamp", expires))

    extras: list[tuple[str, object]] = [(str(key), value) for key, value in metadata.items() if key not in _OWNED]
    nested = metadata.get("extra")
    if isinstance(nested, Mapping):
        extras += [(str(key), value) for key, value in nested.items()]
    seen = {key for key, _ in attributes}
    shown = omitted = 0
    for key, value in extras:
        attribute = _extra_name(key)
        if attribute in seen or shown >= MAX_EXTRAS:
            omitted += 1
            continue
        seen.add(attribute)
        shown += 1
        attributes.append((attribute, _cut(_text(value), MAX_EXTRA_CHARS)))
    if omitted:
        attributes.append(("extras-omitted", str(omitted)))

    opening = f"<{tag}" + "".join(f' {key}="{escape(value)}"' for key, value in attributes) + ">"
    lines = [opening]
    url = _first(metadata, "url")
    if url is not None:
        lines.append(f"<url>{escape(_text(url))}</url>")
    schema = _first(metadata, "schema-yaml", "schema_yaml", "schema")
    if schema is not None:
        lines.append(f"<schema-yaml>\n{_body(schema)}\n</schema-yaml>")
    shape = _first(metadata, "shape")
    if shape is not None:
        lines.append(f"<shape>{_body(shape)}</shape>")
    error = _first(metadata, "schema_error", "schema-error")
    if error is not None:
        lines.append(f"<schema-error>{escape(_cut(_text(error), MAX_EXTRA_CHARS * 5))}</schema-error>")
    source = _first(metadata, "data_source", "data-source")
    if source is not None:
        lines.append(f"<data-source>{escape(_cut(_text(source), MAX_EXTRA_CHARS * 5))}</data-source>")
    data = _first(metadata, "data")
    if data is not None:
        lines.append(f"<data>\n{_body(data)}\n</data>")
    lines.append(f"</{tag}>")
    return "\n".join(lines)
