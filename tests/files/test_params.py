"""Read params: each one parsed and applied, their combinations and order, the kind checks, and bounded memory.

Everything runs the real ``apply_read_plan`` over real bytes, cut into small uneven chunks so every record
boundary falls inside a chunk somewhere; the memory tests stream 50 MB through it under ``tracemalloc``.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import tracemalloc
import zipfile
from collections.abc import AsyncIterator, Mapping

import pytest

from flowmas.errors import InvalidFileURLError
from flowmas.files.params import (
    MAX_COUNT,
    ReadPlan,
    apply_read_plan,
    check_plan_for,
    datauri_mime,
    parse_read_params,
    zip_member_name,
)

MiB = 2**20


async def chunked(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def read(params: Mapping[str, str], data: bytes, name: str = "f.txt", mime: str | None = None, *,
               cap: int = MiB, size: int = 7) -> bytes:
    plan = parse_read_params(params)
    stream = apply_read_plan(plan, chunked(data, size), filename=name, mime_type=mime, document_max_bytes=cap)
    return b"".join([piece async for piece in stream])


LINES = b"".join(b"line %d\n" % n for n in range(10))
CSV = b'id,name,note\r\n1,ann,"x, y"\r\n2,bob,"multi\nline"\r\n3,cy,z\r\n4,dee,\r\n'
JSONL = b'{"a": 1, "b": "x"}\n{"a": 2, "b": "y", "c": true}\n\n{"b": "z"}\n'
DOC = json.dumps({"store": {"book": [{"title": "A", "price": 8}, {"title": "B", "price": 12},
                                     {"title": "C", "isbn": "1"}], "bike": {"price": 20}}, "n": None}).encode()


# --- parsing --------------------------------------------------------------------------------------------


def test_an_empty_query_is_the_plain_file():
    plan = parse_read_params({})
    assert plan == ReadPlan()
    assert not plan.transforms_content


def test_each_param_parses_to_its_field():
    plan = parse_read_params({
        "bytes": "10-19", "head": "5", "tail": "2", "rows": "3:9", "columns": 'a, "b,c"', "grep": "(?i)x",
        "encoding": "BASE64", "resolve": "True",
    })
    assert plan.byte_range == (10, 19)
    assert (plan.head, plan.tail, plan.rows) == (5, 2, (3, 9))
    assert plan.columns == ("a", "b,c")
    assert plan.grep == "(?i)x"
    assert plan.encoding == "base64"
    assert plan.resolve is True
    assert parse_read_params({"bytes": "7-"}).byte_range == (7, None)
    assert parse_read_params({"rows": ":4"}).rows == (0, 4)
    assert parse_read_params({"rows": "4:"}).rows == (4, None)
    assert parse_read_params({"resolve": "false"}).resolve is False
    assert parse_read_params({"jsonpath": "$..price"}).jsonpath == "$..price"


def test_transforms_content_is_false_only_for_bytes_and_resolve():
    assert not parse_read_params({"bytes": "0-9", "resolve": "true"}).transforms_content
    for key, value in [("head", "1"), ("tail", "1"), ("rows", "0:1"), ("columns", "a"), ("grep", "x"),
                       ("jsonpath", "$"), ("encoding", "base64")]:
        assert parse_read_params({key: value}).transforms_content, key


@pytest.mark.parametrize(("key", "value", "says"), [
    ("head", "-1", "whole number"), ("head", "1.5", "whole number"), ("head", "", "whole number"),
    ("head", str(MAX_COUNT + 1), "1,000,000,000"), ("tail", "ten", "whole number"), ("head", "٣", "whole number"),
    ("rows", "5", "A:B"), ("rows", "-5:", "negative"), ("rows", "5:2", "greater than A"), ("rows", "3:3", "greater"),
    ("bytes", "5", "A-B"), ("bytes", "-100", "suffix"), ("bytes", "9-3", "B >= A"), ("bytes", "a-b", "A-B"),
    ("columns", "", "empty"), ("columns", "a,,b", "empty"), ("columns", "a,a", "twice"),
    ("grep", "(", "not a Python regular expression"), ("grep", "", "regular expression"),
    ("jsonpath", "store.book", "start with $"), ("jsonpath", "$.a[?(@.x)]", "not supported"),
    ("jsonpath", "$.a[0:2]", "not supported"), ("jsonpath", "$.", "ends after a dot"), ("jsonpath", "$['a]", "closed"),
    ("encoding", "brotli", "zip, gzip, base64, datauri"), ("resolve", "yes", "true or false"),
])
def test_a_malformed_value_is_refused_naming_the_param(key, value, says):
    with pytest.raises(InvalidFileURLError) as caught:
        parse_read_params({key: value})
    assert f"{key}=" in str(caught.value)
    assert says in str(caught.value)


def test_an_unknown_param_is_refused_listing_the_known_ones():
    with pytest.raises(InvalidFileURLError, match=r"Unknown read param 'lines'.*head=.*jsonpath="):
        parse_read_params({"head": "1", "lines": "3"})
    with pytest.raises(InvalidFileURLError, match="share= is only valid on a share URL"):
        parse_read_params({"share": "1.abc"})


def test_combinations_that_cannot_work_are_refused_before_any_file_is_read():
    with pytest.raises(InvalidFileURLError, match="resolve=true and encoding=gzip"):
        parse_read_params({"resolve": "true", "encoding": "gzip"})
    assert parse_read_params({"resolve": "true", "encoding": "base64"}).resolve
    with pytest.raises(InvalidFileURLError, match="columns= and jsonpath="):
        parse_read_params({"columns": "a", "jsonpath": "$"})
    with pytest.raises(InvalidFileURLError, match=r"head= cannot follow jsonpath='\$.store'.*\[\*\]"):
        parse_read_params({"jsonpath": "$.store", "head": "2"})


@pytest.mark.parametrize(("params", "name", "mime", "says"), [
    ({"columns": "a"}, "d.json", None, "columns= works on CSV, TSV and JSON Lines files; 'd.json' is JSON"),
    ({"jsonpath": "$"}, "t.csv", None, "jsonpath= works on JSON and YAML files; 't.csv' is CSV"),
    ({"rows": "0:1"}, "p.png", "image/png", "rows= works on text files; 'p.png' is binary"),
    ({"grep": "x"}, "a.bin", "application/octet-stream", "grep= works on text files"),
    ({"columns": "a"}, "notes.txt", None, "'notes.txt' is text"),
    ({"columns": "a", "bytes": "10-"}, "t.csv", None, "reads a window of it as plain text"),
    ({"jsonpath": "$", "bytes": "5-"}, "d.json", None, "window"),
])
async def test_a_param_that_makes_no_sense_for_the_kind_is_refused_up_front_and_at_first_iteration(
        params, name, mime, says):
    plan = parse_read_params(params)
    with pytest.raises(InvalidFileURLError) as up_front:
        check_plan_for(plan, filename=name, mime_type=mime)
    assert says in str(up_front.value)
    stream = apply_read_plan(plan, chunked(b"a,b\n1,2\n"), filename=name, mime_type=mime, document_max_bytes=MiB)
    with pytest.raises(InvalidFileURLError) as first:
        await stream.__anext__()
    assert str(first.value) == str(up_front.value)


# --- applying: lines --------------------------------------------------------------------------------------


async def test_head_tail_rows_and_grep_on_lines():
    assert await read({"head": "2"}, LINES) == b"line 0\nline 1\n"
    assert await read({"head": "0"}, LINES) == b""
    assert await read({"head": "1000"}, LINES) == LINES
    assert await read({"tail": "2"}, LINES) == b"line 8\nline 9\n"
    assert await read({"tail": "0"}, LINES) == b""
    assert await read({"rows": "3:5"}, LINES) == b"line 3\nline 4\n"
    assert await read({"rows": "8:"}, LINES) == b"line 8\nline 9\n"
    assert await read({"grep": "[37]$"}, LINES) == b"line 3\nline 7\n"
    assert await read({"tail": "1"}, b"a\nb\nlast without newline") == b"last without newline"
    assert await read({"head": "2"}, b"a\r\nb\r\nc\r\n") == b"a\r\nb\r\n"
    assert await read({"grep": "b$"}, b"a\r\nb\r\nc\r\n") == b"b\r\n"  # the terminator is not searched


async def test_the_order_is_grep_then_rows_then_head_then_tail():
    data = b"".join(b"%d %s\n" % (n, b"even" if n % 2 == 0 else b"odd") for n in range(100))
    # grep pages: the matches are counted, not the lines
    assert await read({"grep": "even", "rows": "2:4"}, data) == b"4 even\n6 even\n"
    assert await read({"rows": "10:20", "head": "3"}, data) == b"10 even\n11 odd\n12 even\n"
    assert await read({"rows": "10:20", "head": "5", "tail": "2"}, data) == b"13 odd\n14 even\n"
    assert await read({"grep": "odd", "head": "10", "tail": "1"}, data) == b"19 odd\n"


async def test_head_of_a_huge_single_line_streams_without_holding_it():
    data = b"x" * (3 * MiB) + b"\nsecond\n"
    assert await read({"head": "1"}, data, "big.json", size=64 * 1024) == b"x" * (3 * MiB) + b"\n"
    assert await read({"rows": "1:2"}, data, "big.json", size=64 * 1024) == b"second\n"


async def test_head_tail_on_json_and_yaml_count_lines():
    data = b'{\n  "a": 1,\n  "b": 2\n}\n'
    assert await read({"head": "2"}, data, "d.json") == b'{\n  "a": 1,\n'
    assert await read({"tail": "1"}, b"a: 1\nb: 2\n", "c.yaml") == b"b: 2\n"


# --- applying: CSV / TSV / JSONL ------------------------------------------------------------------------


async def test_csv_keeps_its_header_and_counts_records_not_lines():
    assert await read({"head": "2"}, CSV, "t.csv") == b'id,name,note\r\n1,ann,"x, y"\r\n2,bob,"multi\nline"\r\n'
    assert await read({"tail": "1"}, CSV, "t.csv") == b"id,name,note\r\n4,dee,\r\n"
    assert await read({"rows": "1:2"}, CSV, "t.csv") == b'id,name,note\r\n2,bob,"multi\nline"\r\n'
    assert await read({"head": "0"}, CSV, "t.csv") == b"id,name,note\r\n"
    assert await read({"grep": "line"}, CSV, "t.csv") == b'id,name,note\r\n2,bob,"multi\nline"\r\n'
    assert await read({"grep": "^nothing"}, CSV, "t.csv") == b"id,name,note\r\n"
    assert await read({"head": "3"}, b"", "t.csv") == b""


async def test_csv_columns_in_the_order_asked_and_grep_sees_only_them():
    assert await read({"columns": "note,id"}, CSV, "t.csv") == (
        b'note,id\r\n"x, y",1\r\n"multi\nline",2\r\nz,3\r\n,4\r\n'
    )
    assert await read({"columns": "name", "grep": "^b"}, CSV, "t.csv") == b"name\r\nbob\r\n"
    assert await read({"columns": "name", "grep": "^2"}, CSV, "t.csv") == b"name\r\n"  # id is not searched
    tsv = b"a\tb c\n1\t2\n3\t4\n"
    assert await read({"columns": "b c", "tail": "1"}, tsv, "t.tsv") == b"b c\n4\n"


async def test_a_missing_column_is_refused_before_any_row_is_given():
    with pytest.raises(InvalidFileURLError, match=r"columns= names 'price', which is not a column.*id, name, note"):
        await read({"columns": "id,price"}, CSV, "t.csv")


async def test_non_utf8_csv_bytes_come_out_exactly():
    data = b"a,b\n\xff\xfe,1\n\xe9t\xe9,2\n"
    assert await read({"tail": "1"}, data, "l.csv") == b"a,b\n\xe9t\xe9,2\n"
    assert await read({"columns": "a", "head": "1"}, data, "l.csv") == b"a\n\xff\xfe\n"


async def test_jsonl_rows_are_lines_and_columns_are_keys():
    assert await read({"head": "1"}, JSONL, "r.jsonl") == b'{"a": 1, "b": "x"}\n'
    assert await read({"columns": "b,c"}, JSONL, "r.jsonl") == (
        b'{"b": "x"}\n{"b": "y", "c": true}\n{"b": "z"}\n'
    )
    with pytest.raises(InvalidFileURLError, match="line 2 is an array"):
        await read({"columns": "a"}, b'{"a": 1}\n[1]\n', "r.jsonl")
    with pytest.raises(InvalidFileURLError, match="line 1 is not valid JSON"):
        await read({"columns": "a"}, b"{nope\n", "r.jsonl")


async def test_a_byte_window_of_a_csv_is_plain_text():
    assert await read({"bytes": "14-", "head": "1"}, CSV[14:], "t.csv") == b'1,ann,"x, y"\r\n'


# --- applying: jsonpath ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "expected"), [
    ("$", json.loads(DOC)),
    ("$.store.bike.price", 20),
    ("$['store'][\"bike\"]", {"price": 20}),
    ("$.store.book[-1].title", "C"),
    ("$.store.book[0]", {"title": "A", "price": 8}),
    ("$.n", None),
    ("$.store.book[*].title", ["A", "B", "C"]),
    ("$.store.*.price", [20]),
    ("$..price", [8, 12, 20]),
    ("$..book[1].title", ["B"]),
    ("$.store.book[7]", None),  # definite and missing: an error (below)
])
async def test_jsonpath_subset(path, expected):
    if path == "$.store.book[7]":
        with pytest.raises(InvalidFileURLError, match=r"matches nothing: \$.store.book is an array of 3 elements"):
            await read({"jsonpath": path}, DOC, "d.json")
        return
    out = await read({"jsonpath": path}, DOC, "d.json")
    assert out.endswith(b"\n")
    assert json.loads(out) == expected


async def test_jsonpath_indefinite_results_take_grep_rows_head_tail():
    assert json.loads(await read({"jsonpath": "$..price", "head": "2"}, DOC, "d.json")) == [8, 12]
    assert json.loads(await read({"jsonpath": "$..price", "tail": "1"}, DOC, "d.json")) == [20]
    assert json.loads(await read({"jsonpath": "$.store.book[*]", "grep": "isbn"}, DOC, "d.json")) == [
        {"title": "C", "isbn": "1"}
    ]
    assert await read({"jsonpath": "$..nothing"}, DOC, "d.json") == b"[]\n"


async def test_jsonpath_on_yaml_with_dates_binary_and_several_documents():
    data = b"when: 2024-05-01\nblob: !!binary aGk=\n1: one\n---\nsecond: true\n"
    out = json.loads(await read({"jsonpath": "$[0]"}, data, "c.yml"))
    assert out == {"when": "2024-05-01", "blob": "aGk=", "1": "one"}
    assert json.loads(await read({"jsonpath": "$[1].second"}, data, "c.yml")) is True


async def test_jsonpath_refuses_a_document_past_the_cap_saying_what_to_use():
    with pytest.raises(InvalidFileURLError, match=r"too large for jsonpath; read parts of it with bytes=A-B or head="):
        await read({"jsonpath": "$"}, b"[" + b"1," * 1000 + b"1]", "d.json", cap=1000)


async def test_jsonpath_refuses_an_invalid_document():
    with pytest.raises(InvalidFileURLError, match=r"not valid JSON \(Expecting"):
        await read({"jsonpath": "$"}, b'{"a": ', "d.json")
    with pytest.raises(InvalidFileURLError, match="not valid UTF-8"):
        await read({"jsonpath": "$"}, b'"\xff"', "d.json")


# --- encodings ------------------------------------------------------------------------------------------


async def test_encodings_round_trip_and_apply_last():
    data = LINES * 50
    assert gzip.decompress(await read({"encoding": "gzip"}, data)) == data
    assert base64.b64decode(await read({"encoding": "base64"}, data, size=5)) == data
    uri = await read({"encoding": "datauri"}, b"\x89PNG", "p.png", "image/png; q=1")
    assert uri == b"data:image/png;base64," + base64.b64encode(b"\x89PNG")
    archive = zipfile.ZipFile(io.BytesIO(await read({"encoding": "zip", "head": "3"}, data, "notes.txt")))
    assert archive.testzip() is None
    assert archive.namelist() == ["notes.txt"]
    assert archive.read("notes.txt") == b"line 0\nline 1\nline 2\n"
    assert gzip.decompress(await read({"encoding": "gzip"}, b"")) == b""


def test_zip_member_names_and_datauri_types_are_safe():
    assert zip_member_name("../../etc/passwd") == ".._.._etc_passwd"
    assert zip_member_name("C:\\x.txt") == "C__x.txt"
    assert zip_member_name("..") == "_"
    assert datauri_mime("a.csv", 'text/csv"><script>') == "text/csv"
    assert datauri_mime("a.unknownext", None) == "application/octet-stream"
    assert datauri_mime("a.json", None) == "application/json"


# --- bounded memory -------------------------------------------------------------------------------------


LOG_LINE = b"2025-01-01T00:00:00Z INFO worker-7 processed a batch of records without any trouble at all\n"
LAST_LINES = b"2025-01-01T23:59:59Z ERROR worker-3 the needle\n2025-01-01T23:59:59Z INFO the end\n"


async def generated(total: int) -> AsyncIterator[bytes]:
    """``total`` bytes of log lines (one 1 MiB chunk object yielded again and again), then two last lines."""
    chunk = LOG_LINE * (MiB // len(LOG_LINE))
    for _ in range(total // len(chunk)):
        yield chunk
    yield LAST_LINES


async def peak_while(params: Mapping[str, str], total: int, name: str = "log.txt") -> tuple[int, bytes]:
    plan = parse_read_params(params)
    tracemalloc.start()
    try:
        tail = b""
        size = 0
        async for piece in apply_read_plan(plan, generated(total), filename=name, mime_type=None,
                                           document_max_bytes=64 * MiB):
            size += len(piece)
            tail = (tail + piece)[-200:]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, tail


@pytest.mark.parametrize(("params", "expected"), [
    ({"tail": "2"}, LAST_LINES),
    ({"grep": "ERROR", "tail": "5"}, LAST_LINES.splitlines(keepends=True)[0]),
    ({"rows": "500000:500001", "encoding": "gzip"}, None),
])
async def test_50_mb_streams_in_bounded_memory(params, expected):
    peak, tail = await peak_while(params, 50 * MiB)
    assert peak < 8 * MiB, f"{params}: peak {peak / MiB:.1f} MiB"
    if expected is not None:
        assert tail == expected
