"""The vectorised CSV/TSV path (``csv_fast`` + ``CsvInferencer``'s batches) against the ``csv``-module path.

The slow path is the reference: for any bytes, chunking, block size and batch size, ``CsvInferencer(fast=True)``
must answer exactly what ``CsvInferencer(fast=False)`` answers: the schema text, the shape, the error (its notes
and their order) and ``sampled``. Small blocks and batches put batch edges everywhere.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowmas.files import csv_fast, inference
from flowmas.files.inference import CsvInferencer, InferenceResult


@contextmanager
def field_limit(limit: int | None) -> Iterator[None]:
    if limit is None:
        yield
        return
    old = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def run(data: bytes, *, fast: bool, delimiter: str = ",", chunk: int = 7, block: int = 16, batch: int = 64,
        max_record: int = inference.DEFAULT_MAX_RECORD_BYTES) -> tuple[InferenceResult, CsvInferencer]:
    """Infer ``data`` fed in ``chunk``s, with ``block``-byte blocks and fast-path batches of ``batch`` bytes."""
    inferencer = CsvInferencer(delimiter=delimiter, max_record_bytes=max_record, fast=fast, batch_bytes=batch)
    with mock.patch.object(inference, "BLOCK_BYTES", block):
        for start in range(0, len(data), chunk):
            inferencer.feed(data[start:start + chunk])
        return inferencer.finish(), inferencer


def same(data: bytes, **options: object) -> CsvInferencer:
    """Assert both paths agree on ``data``; the fast inferencer, to see which path its batches took."""
    slow, _ = run(data, fast=False, **options)  # type: ignore[arg-type]
    fast, inferencer = run(data, fast=True, **options)  # type: ignore[arg-type]
    assert fast == slow
    return inferencer


# --- random CSV texts ---------------------------------------------------------------------------------------

CELLS = [
    "", "", "0", "7", "42", "-5", "+3", "007", "-0", "1.5", "-2.", ".5", "+.5e-3", "1e5", "1E+05", "2.5e", "e5",
    ".", "+", "-", "5-", "1-2", "--1", "1e5.5", "..1", "1_000", "²", "٣", "true", "FALSE", "tRuE", "falsE", "truefalse",
    "tru", "nan", "inf", "-inf", "Infinity", " 5", "5 ", " ", "x", "hello world", "é", "\ufeff1", "a,b", "a\tb",
    'say "hi"', '"', '""', "line\nbreak", "cr\ronly", "crlf\r\nin", "\n", "\x00", "t\u0131rue", "fal\u017fe",
]


@st.composite
def csv_texts(draw: st.DrawFn) -> tuple[bytes, str]:
    delimiter = draw(st.sampled_from([",", "\t"]))
    width = draw(st.integers(1, 5))
    rows = draw(st.integers(0, 30))
    column_pools = [draw(st.lists(st.sampled_from(CELLS), min_size=1, max_size=6)) for _ in range(width)]
    rng = random.Random(draw(st.integers(0, 2**32)))
    quote_rate = draw(st.sampled_from([0.0, 0.0, 0.2, 1.0]))
    ragged_rate = draw(st.sampled_from([0.0, 0.0, 0.0, 0.05]))
    blank_rate = draw(st.sampled_from([0.0, 0.0, 0.1]))
    malformed_rate = draw(st.sampled_from([0.0, 0.0, 0.0, 0.05]))
    terminators = draw(st.sampled_from([["\n"], ["\r\n"], ["\r"], ["\n", "\r\n", "\r"]]))

    def cell(text: str) -> str:
        if rng.random() < malformed_rate:
            return rng.choice(['a"b', '"a"b', '"a""', '"unclosed', 'x"', '""x'])
        must = delimiter in text or '"' in text or "\n" in text or "\r" in text
        if rng.random() < quote_rate or (must and rng.random() < 0.9):
            return '"' + text.replace('"', '""') + '"'
        return text

    lines = [delimiter.join(cell(f"col{i % 3}") for i in range(width))]  # names repeat: duplicates are merged
    for _ in range(rows):
        if rng.random() < blank_rate:
            lines.append("")
        count = width + (rng.choice([-1, 1]) if rng.random() < ragged_rate else 0)
        lines.append(delimiter.join(cell(rng.choice(column_pools[i % width])) for i in range(max(count, 0))))
    text = "".join(line + rng.choice(terminators) for line in lines)
    if draw(st.booleans()):
        text = text.rstrip("\r\n")
    data = text.encode()
    if draw(st.integers(0, 9)) == 0:
        data = b"\xef\xbb\xbf" + data
    if draw(st.integers(0, 9)) == 0 and data:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\xef\xbb\xbf"])) + data[at:]
    return data, delimiter


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(csv_texts(), st.integers(1, 40), st.integers(1, 48), st.integers(1, 300), st.sampled_from([None, None, 40, 400]),
       st.sampled_from([None, None, 12, 100]))
def test_fast_path_equals_slow_path_on_random_csv(
    text: tuple[bytes, str], chunk: int, block: int, batch: int, max_record: int | None, limit: int | None,
) -> None:
    data, delimiter = text
    with field_limit(limit):
        same(data, delimiter=delimiter, chunk=chunk, block=block, batch=batch,
             max_record=max_record or inference.DEFAULT_MAX_RECORD_BYTES)


TOKENS = [b"a", b"1", b"-", b".", b"e", b" ", b'"', b",", b"\t", b"\r", b"\n", b"\n", b"\xc3\xa9", b"\xff",
          b"\xef\xbb\xbf", b"true", b"\x00"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=80).map(b"".join),
       st.sampled_from([",", "\t"]), st.integers(1, 9), st.integers(1, 12), st.integers(1, 40))
def test_fast_path_equals_slow_path_on_random_bytes(data: bytes, delimiter: str, chunk: int, block: int,
                                                    batch: int) -> None:
    same(data, delimiter=delimiter, chunk=chunk, block=block, batch=batch)


# --- the fast path is taken, and left when it must be --------------------------------------------------------


def table(rows: int, *, seed: int = 1, quoted: bool = False) -> bytes:
    rng = random.Random(seed)
    lines = ["id,user_id,qty,price,name,city,flag,note"]
    for row in range(1, rows + 1):
        note = " ".join(rng.choice(["lorem", "ipsum", 'a "b"', "x,y", "multi\nline"]) for _ in range(3))
        if not quoted:
            note = note.replace('"', "").replace(",", "").replace("\n", "")
        lines.append(",".join([
            str(row), str(rng.randrange(1, 10**7)), "" if row % 97 == 0 else str(rng.randrange(1, 500)),
            f"{rng.randrange(1, 10**6) / 100:.2f}", "alice bob", "Berlin", rng.choice(["true", "false", "TRUE"]),
            '"' + note.replace('"', '""') + '"' if quoted else note,
        ]))
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("quoted", [False, True])
def test_a_table_goes_the_fast_path(quoted: bool) -> None:
    data = table(3000, quoted=quoted)
    inferencer = same(data, chunk=4096, block=1024, batch=16 * 1024)
    assert inferencer.fast_batches > 3 and inferencer.slow_batches == 0
    result = inferencer.finish()
    assert result.shape == "3000 rows x 8 columns" and result.error is None
    properties = yaml.safe_load(result.schema_yaml or "")["items"]["properties"]
    assert properties["qty"] == {"type": ["integer", "null"]}
    assert properties["price"] == {"type": "number"} and properties["flag"] == {"type": "boolean"}


def test_default_sizes_on_a_few_megabytes() -> None:
    data = table(60_000)
    sizes = {"chunk": 2**20, "block": inference.BLOCK_BYTES, "batch": inference.CSV_BATCH_BYTES}
    slow, _ = run(data, fast=False, **sizes)
    fast, inferencer = run(data, fast=True, **sizes)
    assert fast == slow and inferencer.fast_batches >= 1 and inferencer.slow_batches == 0


@pytest.mark.parametrize(("bad", "why"), [
    (b"1,2,3,4,5,6,true,x,extra\n", "a ragged row"),
    (b'1,2,3,4,a"b,6,true,x\n', "a quote inside an unquoted field"),
    (b'1,2,3,4,"a"b,6,true,x\n', "text after a closing quote"),
    (b"1,2,3,4,\xff,6,true,x\n", "a non-UTF-8 byte"),
])
def test_odd_batches_go_the_slow_path_with_the_same_result(bad: bytes, why: str) -> None:
    data = table(2000)
    middle = data.index(b"\n", len(data) // 2) + 1
    data = data[:middle] + bad + data[middle:]
    inferencer = same(data, chunk=4096, block=1024, batch=16 * 1024)
    assert inferencer.fast_batches > 1, why
    if b"\xff" not in bad:
        assert inferencer.slow_batches == 1, why
    assert inferencer.finish().error is not None or b'"' in bad, why


def test_notes_keep_their_order_when_a_bad_byte_follows_a_ragged_row() -> None:
    data = table(500) + b"1,2\n" + table(50)[40:] + b"\xff\n"
    for batch in (64, 4096, 10**6):
        inferencer = same(data, chunk=999, block=256, batch=batch)
        error = inferencer.finish().error or ""
        assert error.index("fields where the header has") < error.index("not valid UTF-8"), batch


def test_long_records_and_fields_stop_both_paths_alike() -> None:
    long_row = b"1,2,3,4.5,x,y,true," + b"n" * 300 + b"\n"
    data = table(200) + long_row + table(200)[40:]
    for max_record in (100, 250, 400, 10**6):
        same(data, chunk=333, block=128, batch=2048, max_record=max_record)
    with field_limit(200):
        same(data, chunk=333, block=128, batch=2048)


def test_record_end_follows_quotes() -> None:
    assert csv_fast.record_end(b'a,"b\nc"\nd,"e\n', 13, ",") == 8
    assert csv_fast.record_end(b'a,"b""\n', 7, ",") == 0
    assert csv_fast.record_end(b'a,"b"""\n', 8, ",") == 8
    assert csv_fast.record_end(b'a,b"c\n', 6, ",") is None
    assert csv_fast.record_end(b'a,"b"c\n', 7, ",") is None


@pytest.mark.parametrize(("cells", "current", "expected"), [
    (["1", "22", "333"], csv_fast.NULL, csv_fast.INT),
    (["-1", "+22", "3"], csv_fast.NULL, csv_fast.INT),
    (["-1", "2-"], csv_fast.NULL, csv_fast.STR),
    (["1.5", "2", ".5", "5.", "1e5", "-1E-5"], csv_fast.NULL, csv_fast.FLOAT),
    (["1.5", "."], csv_fast.NULL, csv_fast.STR),
    (["1.5", ""], csv_fast.INT, csv_fast.FLOAT),
    (["true", "FALSE", ""], csv_fast.NULL, csv_fast.BOOL),
    (["true", "1"], csv_fast.NULL, csv_fast.STR),
    (["true"], csv_fast.INT, csv_fast.STR),
    (["nan", "inf"], csv_fast.NULL, csv_fast.STR),
    (["1", "٣"], csv_fast.NULL, csv_fast.STR),
    (["", ""], csv_fast.FLOAT, csv_fast.FLOAT),
    (["x"], csv_fast.STR, csv_fast.STR),
])
def test_column_type_matches_classify(cells: list[str], current: int, expected: int) -> None:
    import pyarrow as pa  # type: ignore[import-untyped]

    column = pa.chunked_array([pa.array(cells[:1], pa.string()), pa.array(cells[1:], pa.string())])
    assert csv_fast.column_type(column, current, "" in cells) == expected
    slow = current
    for cell in cells:
        slow = inference._JOIN[slow][inference._classify(cell)]
    assert slow == expected


def test_an_empty_batch_edge_and_header_only() -> None:
    for data in (b"", b"a,b", b"a,b\n", b"a,b\r\n\r\n", b"\xef\xbb\xbfa,b\n1,2", b"a\n\n\n1\n\n"):
        for batch in (1, 2, 100):
            same(data, chunk=1, block=1, batch=batch)
