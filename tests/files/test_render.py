"""``render_for_llm``: SAM's ``<file>`` block, compact, lenient about keys, and with every value escaped."""

from __future__ import annotations

import re

import pytest

from flowmas.files.render import MAX_EXTRAS, escape, render_for_llm

MD = {
    "name": "sales.csv", "mime_type": "text/csv", "file_size": 1234, "url": "amfs://0123456789abcdef0123456789abcdef_sales.csv",
    "upload_timestamp": 1_900_000_000.0, "expiration_timestamp": 1_900_086_400.0, "session_id": "secret-session",
    "sha256": "ab" * 32, "schema-yaml": "type: array\nitems:\n  type: object\n", "shape": "3 rows x 2 columns",
    "data_source": "upload from Slack", "owner": "ann",
}


def test_the_block_has_sams_shape():
    block = render_for_llm(MD)
    assert block.splitlines() == [
        ('<file name="sales.csv" mime_type="text/csv" file_size="1234" expiration_timestamp="2030-03-18T17:46:40Z"'
         ' owner="ann">'),
        "<url>amfs://0123456789abcdef0123456789abcdef_sales.csv</url>",
        "<schema-yaml>", "type: array", "items:", "  type: object", "</schema-yaml>",
        "<shape>3 rows x 2 columns</shape>",
        "<data-source>upload from Slack</data-source>",
        "</file>",
    ]
    assert "secret-session" not in block and "ab" * 32 not in block


def test_flowmas_key_names_and_missing_keys():
    assert render_for_llm({"filename": "a.txt", "size": 3, "schema_yaml": "type: string"}).splitlines() == [
        '<file name="a.txt" file_size="3">', "<schema-yaml>", "type: string", "</schema-yaml>", "</file>",
    ]
    assert render_for_llm({}) == "<file>\n</file>"
    assert render_for_llm({"name": "a"}, tag_prefix="t1_").startswith('<t1_file name="a">')
    with pytest.raises(ValueError, match="tag_prefix"):
        render_for_llm({}, tag_prefix="x><y")


def test_schema_error_and_extras_mapping():
    block = render_for_llm({"name": "a.csv", "schema_error": "not valid UTF-8", "extra": {"team": "ops", "n": 3}})
    assert "<schema-error>not valid UTF-8</schema-error>" in block
    assert ' team="ops" n="3"' in block


def test_extras_are_capped():
    block = render_for_llm({"name": "a", **{f"k{n}": "v" for n in range(MAX_EXTRAS + 5)}})
    assert 'extras-omitted="5"' in block
    assert len(render_for_llm({"name": "a", "note": "x" * 10_000})) < 400


@pytest.mark.parametrize(("text", "expected"), [
    ("plain name.txt", "plain name.txt"),
    ('a"b\'c<d>e&f', "a&quot;b&#39;c&lt;d&gt;e&amp;f"),
    ("line\nbreak\r\u2028\u2029\x85", "line&#xA;break&#xD;&#x2028;&#x2029;&#x85;"),
    ("\u202egnp.exe\u2066\u200b\ufeff", "&#x202E;gnp.exe&#x2066;&#x200B;&#xFEFF;"),
    ("日本語 ok", "日本語 ok"),
])
def test_escape(text, expected):
    assert escape(text) == expected


def test_multiline_bodies_keep_only_newlines():
    assert escape('a\n"b"\r</x>', multiline=True, quotes=False) == 'a\n"b"&#xD;&lt;/x&gt;'


def test_every_attribute_value_is_quoted_and_clean():
    block = render_for_llm({**MD, "name": 'x" y="1', "owner": "<b>"})
    opening = block.splitlines()[0]
    assert re.fullmatch(r'<file( [A-Za-z_][A-Za-z0-9_.-]*="[^"<>\n]*")*>', opening)
