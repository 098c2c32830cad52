"""Schema and shape inference in SAM's documented formats: CSV/TSV widening, JSON unions, JSONL, YAML, caps.

Each test feeds real bytes in small uneven chunks (so every token is cut somewhere) and reads the YAML back.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowmas.files.inference import CsvInferencer, Inferencer, InferenceResult, file_kind


def infer(name: str, data: bytes, *, chunk: int = 5, **limits: Any) -> InferenceResult:
    inferencer = Inferencer.for_file(name, None, **limits)
    assert inferencer is not None
    for start in range(0, len(data), chunk):
        inferencer.feed(data[start:start + chunk])
    return inferencer.finish()


def props(result: InferenceResult) -> dict[str, Any]:
    assert result.schema_yaml is not None
    schema = yaml.safe_load(result.schema_yaml)
    assert schema["type"] == "array"
    return dict(schema["items"]["properties"])


def test_kinds_by_extension_then_mime():
    assert file_kind("a.CSV", None) == "csv"
    assert file_kind("a.tsv", "text/plain") == "tsv"
    assert file_kind("a", "application/x-ndjson") == "jsonl"
    assert file_kind("a.bin", "application/vnd.api+json") == "json"
    assert file_kind("c.yml", None) == "yaml"
    assert file_kind("notes", None) == "text"
    assert file_kind("p.png", "image/png") == "binary"
    assert Inferencer.for_file("notes.txt", None) is None


def test_csv_types_widen_int_float_string_and_nullable():
    data = b"i,f,s,b,n,mix\n1,1,x,true,,true\n-2,2.5,3,FALSE,,1\n+3,1e5,y,false,,\n"
    result = infer("t.csv", data)
    assert props(result) == {
        "i": {"type": "integer"}, "f": {"type": "number"}, "s": {"type": "string"}, "b": {"type": "boolean"},
        "n": {"type": "null"}, "mix": {"type": ["string", "null"]},
    }
    assert result.shape == "3 rows x 6 columns"
    assert result.error is None and not result.sampled


def test_csv_widening_across_blocks_and_not_numbers():
    rows = [f"{n},{n}" for n in range(3000)] + ["2.5,nan", "x,inf"]
    result = infer("t.csv", ("a,b\n" + "\n".join(rows) + "\n").encode(), chunk=4096)
    assert props(result) == {"a": {"type": "string"}, "b": {"type": "string"}}
    assert result.shape == "3002 rows x 2 columns"


def test_csv_header_only_empty_and_tsv():
    header_only = infer("h.csv", b"a,b\n")
    assert props(header_only) == {"a": {}, "b": {}}
    assert header_only.shape == "0 rows x 2 columns"
    empty = infer("e.csv", b"")
    assert (empty.schema_yaml, empty.shape) == (None, "0 rows x 0 columns")
    tsv = infer("t.tsv", b"a\tb\n1\tx,y\n")
    assert props(tsv) == {"a": {"type": "integer"}, "b": {"type": "string"}}


def test_non_utf8_csv_is_reported_not_raised():
    result = infer("l.csv", b"name,n\n\xe9t\xe9,1\nok,2\n")
    assert result.shape == "2 rows x 2 columns"
    assert result.error is not None and "not valid UTF-8 (first invalid byte at offset 7)" in result.error


def test_ragged_rows_and_duplicate_names_are_noted():
    result = infer("r.csv", b"a,a,b\n1,2\n3,4,5,6\n")
    assert result.shape == "2 rows x 3 columns"
    assert result.error is not None
    assert "appears more than once" in result.error and "row 1 has 2 fields" in result.error


def test_json_nested_unions_and_empty_arrays():
    doc = {"a": [], "b": 1, "items": [{"x": 1, "t": True}, {"x": 2.5, "y": None}, {"x": "s"}], "m": [1, "a"]}
    result = infer("d.json", json.dumps(doc).encode())
    schema = yaml.safe_load(result.schema_yaml or "")
    assert schema["properties"]["a"] == {"type": "array", "items": {}}
    assert schema["properties"]["items"]["items"]["properties"]["x"] == {"type": ["string", "number"]}
    assert schema["properties"]["items"]["items"]["properties"]["t"] == {"type": "boolean"}
    assert schema["properties"]["m"]["items"] == {"type": ["string", "integer"]}
    assert result.shape is not None and result.shape.splitlines()[0] == "top level: 4 keys"
    assert "items: 3 elements" in result.shape


def test_json_top_level_array_scalar_and_invalid():
    result = infer("a.json", b"[1, 2, 3]")
    assert result.shape == "top level: 3 elements"
    assert yaml.safe_load(result.schema_yaml or "") == {"type": "array", "items": {"type": "integer"}}
    assert yaml.safe_load(infer("s.json", b' "x" ').schema_yaml or "") == {"type": "string"}
    broken = infer("b.json", b'{"a": ')
    assert broken.schema_yaml is None or broken.error is not None
    assert broken.error is not None


def test_json_past_the_cap_is_sampled():
    data = json.dumps([{"n": n} for n in range(2000)]).encode()
    result = infer("big.json", data, max_bytes=1000)
    assert result.sampled
    assert result.shape is not None and result.shape.startswith("top level: at least ")


def test_jsonl_every_line_merged():
    result = infer("r.jsonl", b'{"a": 1}\n\n{"a": 2.5, "b": "x"}\nnot json\n')
    assert props(result) == {"a": {"type": "number"}, "b": {"type": "string"}}
    assert result.shape == "2 rows x 2 columns"
    assert result.error is not None and "line 4" in result.error


def test_yaml_and_yaml_past_the_cap():
    result = infer("c.yaml", b"name: x\nport: 8080\ntags: [a, b]\n")
    schema = yaml.safe_load(result.schema_yaml or "")
    assert schema["properties"]["port"] == {"type": "integer"}
    assert result.shape is not None and "top level: 3 keys" in result.shape
    big = b"".join(b"k%d: %d\n" % (n, n) for n in range(500))
    sampled = infer("c.yaml", big, max_bytes=300)
    assert sampled.sampled and sampled.schema_yaml is not None


def test_a_yaml_alias_bomb_costs_its_size():
    bomb = b'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + b"".join(
        b"%s: &%s [*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s]\n" % ((chr(98 + n).encode(), chr(98 + n).encode())
                                                              + (chr(97 + n).encode(),) * 9) for n in range(8))
    result = infer("bomb.yaml", bomb, chunk=4096)
    assert result.schema_yaml is not None


def test_user_names_never_become_lines_of_their_own():
    result = infer("x.csv", b'"a\nshape: 9 rows",b\n1,2\n')
    assert result.schema_yaml is not None
    assert not any(line.startswith("shape") for line in result.schema_yaml.splitlines())
    shaped = infer("x.json", json.dumps({"k\ntop level: 99 elements\u2028": [1]}).encode())
    assert shaped.shape is not None and len(shaped.shape.splitlines()) == 2


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.sampled_from(["a.csv", "a.tsv", "a.jsonl", "a.json", "a.yaml"]),
       st.integers(1, 64))
def test_inference_never_raises_on_arbitrary_bytes(data, name, chunk):
    result = infer(name, data, chunk=chunk, max_bytes=256, max_record_bytes=128)
    assert isinstance(result, InferenceResult)
    if result.schema_yaml is not None:
        yaml.safe_load(result.schema_yaml)


cell = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=False, allow_infinity=False).map(repr),
                 st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8),
                 st.sampled_from(["true", "False", ""]))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 5).flatmap(lambda width: st.lists(st.lists(cell, min_size=width, max_size=width),
                                                        max_size=30)), st.integers(1, 50))
def test_rows_counted_equal_rows_written(rows, chunk):
    width = len(rows[0]) if rows else 2
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([f"c{n}" for n in range(width)])
    written = [row for row in rows if any(value != "" for value in row) or width > 1]
    writer.writerows(written)
    result = infer("g.csv", buffer.getvalue().encode(), chunk=chunk)
    assert result.shape == f"{len(written)} rows x {width} columns", result.error


def test_csv_inferencer_direct_use():
    inferencer = CsvInferencer(delimiter=",")
    inferencer.feed(b"a\n1\n")
    assert inferencer.finish() is inferencer.finish()
