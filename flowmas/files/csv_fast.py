"""The vectorised half of CSV/TSV inference: a batch of complete records parsed by ``pyarrow.csv`` and typed
by ``pyarrow.compute``, with *exactly* the results of the ``csv``-module path of ``inference.py``.

``inference.CsvInferencer`` owns the streaming, the state and every decision; this module only answers three
questions about a batch of UTF-8 bytes that starts at a record boundary:

* ``record_end``: where its last complete record ends, as the ``csv`` module (``excel``/``excel-tab``
  dialects: quotes open a field only at its start, ``""`` inside quotes is a quote, ``\\r``, ``\\n`` and
  ``\\r\\n`` end a record) sees it. Without a quote the answer is the last line end; with quotes it is found
  from the quote parity, which equals the ``csv`` module's quoting state only when every quote is where a
  well-formed field puts it (an opening quote after a delimiter, a line end or another quote, a closing quote
  before one of them); otherwise the answer is ``None`` and the caller parses the batch the slow way.
* ``parse``: the records as a table of strings (every column ``string``, empty cells ``""``, never null), or
  ``None`` when ``pyarrow`` refuses them (a row whose number of fields is not the header's, ...).
* ``column_type``: the join, over the lattice of ``inference.py``, of the types of a column's non-empty cells,
  and whether a cell was empty.

The per-cell classes (``inference._classify``): ``integer`` is ``[+-]?[0-9]+``; ``number`` is what Python's
``float()`` accepts among strings of ``[0-9.eE+-]``, i.e. ``[+-]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][+-]?[0-9]+)?``;
``boolean`` is ``true``/``false`` in any ASCII case; anything else that is not empty (including any non-ASCII
character, inner or outer spaces, ``nan``, ``inf``) is ``string``. A column is first tested as a whole, on
the concatenation of its cells (one C-level ``bytes`` test proves a batch of integers); regular expressions
(RE2) run only on columns that hold signs, dots or exponents, and ``unique`` only on short-celled columns
that may be booleans.
"""

from __future__ import annotations

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.csv as pa_csv  # type: ignore[import-untyped]

NULL, BOOL, INT, FLOAT, STR = 0, 1, 2, 3, 4
"""The type lattice of ``inference.py``: ``NULL < BOOL | INT < FLOAT < STR``."""

_INT_RE = r"^[+-]?[0-9]+$"
_FLOAT_RE = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_BOOLS = frozenset(("true", "false"))
_MAX_BOOL_SPELLINGS = 2**4 + 2**5
"""``true`` and ``false`` in every ASCII case: a column with more distinct cells is not all booleans."""

_QUOTE, _LF, _CR = 0x22, 0x0A, 0x0D
_BOM = b"\xef\xbb\xbf"

def _pool() -> pa.MemoryPool:
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc
        return pa.default_memory_pool()


_POOL = _pool()
"""jemalloc, not pyarrow's default mimalloc: with uploads inferred on several threads (``asyncio.to_thread``),
mimalloc kept ~25 MB more resident for the same speed."""

Error = pa.ArrowException
"""What ``pyarrow`` raises on data it refuses (the caller then parses the batch the slow way)."""


def _u8(value: int) -> pa.Scalar:
    return pa.scalar(value, pa.uint8())


def _bytes_view(data: bytes | bytearray) -> pa.Array:
    return pa.Array.from_buffers(pa.uint8(), len(data), [None, pa.py_buffer(data)])


def record_end(data: bytes | bytearray, cut: int, delimiter: str) -> int | None:
    """How many bytes of ``data[:cut]`` (which starts at a record boundary and ends with a line end) are
    complete records: the position after the last line end outside quotes (0 if none). ``None`` when the
    quoting is not well-formed, so the quote parity may differ from the ``csv`` module's state."""
    if data.find(b'"', 0, cut) < 0:
        return cut
    array = _bytes_view(data).slice(0, cut)
    quote = _is(array, _QUOTE)
    # the number of quotes up to and including each byte, mod 256 (only its parity matters: odd = inside)
    count = pc.cumulative_sum(pc.cast(quote, pa.uint8(), memory_pool=_POOL), memory_pool=_POOL)
    inside = _is(pc.bit_wise_and(count, _u8(1), memory_pool=_POOL), 1)
    del count
    outside = pc.invert(inside, memory_pool=_POOL)
    line_end = pc.or_(_is(array, _LF), _is(array, _CR), memory_pool=_POOL)
    border = pc.or_(pc.or_(line_end, _is(array, ord(delimiter)), memory_pool=_POOL), quote, memory_pool=_POOL)
    not_border = pc.invert(border, memory_pool=_POOL)
    if cut > 1:
        # an opening quote (one after which the text is inside quotes) must start a field, or be the second of
        # a doubled quote (then a quote precedes it)
        opening = pc.and_(quote, inside, memory_pool=_POOL)
        if pc.any(pc.and_(opening[1:], not_border[:-1], memory_pool=_POOL)).as_py():
            return None
        # a closing quote must end a field, or be the first of a doubled quote (then a quote follows it)
        closing = pc.and_(quote, outside, memory_pool=_POOL)
        if pc.any(pc.and_(closing[:-1], not_border[1:], memory_pool=_POOL)).as_py():
            return None
    if outside[cut - 1].as_py():
        return cut  # the last line end is outside quotes: the usual case
    ends = pc.indices_nonzero(pc.and_(line_end, outside, memory_pool=_POOL), memory_pool=_POOL)
    return int(ends[-1].as_py()) + 1 if len(ends) else 0


def _is(array: pa.Array, byte: int) -> pa.Array:
    return pc.equal(array, _u8(byte), memory_pool=_POOL)


def parse(data: bytes | bytearray, end: int, width: int, delimiter: str, *, quoted: bool) -> pa.Table | None:
    """The records of ``data[:end]`` (complete records) as ``width`` string columns, or ``None`` when
    ``pyarrow`` refuses them (e.g. a row with another number of fields).

    One block, on this thread: pyarrow's threads (blocks parsed in parallel) gained nothing measurable on
    the benchmark machine, cost memory, and its chunker has edge cases of its own at block boundaries."""
    if data.startswith(_BOM):
        return None  # pyarrow would drop it; the csv module keeps it in the first cell
    names = [str(index) for index in range(width)]
    try:
        return pa_csv.read_csv(
            pa.py_buffer(data[:end]),  # a copy: the caller reuses its buffer
            read_options=pa_csv.ReadOptions(column_names=names, use_threads=False, block_size=max(end, 1)),
            parse_options=pa_csv.ParseOptions(
                delimiter=delimiter, quote_char='"', double_quote=True, escape_char=False,
                newlines_in_values=quoted, ignore_empty_lines=True,
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False,
                quoted_strings_can_be_null=False, null_values=[], check_utf8=False,
            ),
            memory_pool=_POOL,
        )
    except pa.ArrowInvalid:
        return None


def _joined(column: pa.ChunkedArray) -> bytes:
    """The concatenation of a column's cells (what ``"".join(cells)`` is in the slow path)."""
    parts = []
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        offsets = memoryview(chunk.buffers()[1]).cast("q" if pa.types.is_large_string(chunk.type) else "i")
        start, end = offsets[chunk.offset], offsets[chunk.offset + len(chunk)]
        parts.append(memoryview(chunk.buffers()[2])[start:end])
    return b"".join(parts)


def _count(column: pa.ChunkedArray, pattern: str) -> int:
    return int(pc.sum(pc.match_substring_regex(column, pattern, memory_pool=_POOL)).as_py() or 0)


def lengths(column: pa.ChunkedArray) -> tuple[int, int]:
    """The shortest and longest cell of a column, in bytes."""
    low_high = pc.min_max(pc.binary_length(column, memory_pool=_POOL)).as_py()
    return int(low_high["min"] or 0), int(low_high["max"] or 0)


def column_type(column: pa.ChunkedArray, current: int, empty: bool) -> int:
    """The type of a column after this batch: ``current`` joined with the class of every non-empty cell
    (``empty``: some cell is empty, from ``lengths``)."""
    if current == STR:
        return STR
    joined = _joined(column)
    if not joined:
        return current  # only empty cells
    if empty:
        empties = pc.equal(pc.binary_length(column, memory_pool=_POOL), 0, memory_pool=_POOL)
        filled = len(column) - int(pc.sum(empties).as_py() or 0)
    else:
        filled = len(column)
    found = _batch_type(column, joined, filled, current)
    return _join(current, found)


def _batch_type(column: pa.ChunkedArray, joined: bytes, filled: int, current: int) -> int:
    if not joined.isascii():
        return STR  # a non-ASCII cell is a string
    if joined.isdigit():
        return INT  # every non-empty cell is ASCII digits
    unsigned = joined.translate(None, b"+-")
    if unsigned.isdigit():
        # digits and signs only: an integer or a string ("5-"); such a cell is never a number
        return INT if _count(column, _INT_RE) == filled else STR
    bare = unsigned.translate(None, b".eE")
    if not bare or bare.isdigit():
        # only [0-9.eE+-], and a '.', 'e' or 'E' somewhere: some cell is not an integer; no boolean here
        return FLOAT if _count(column, _FLOAT_RE) == filled else STR
    # a character no number has: that cell is a boolean or a string; booleans with numbers are strings too
    if current in (INT, FLOAT) or len(joined) > 5 * filled:
        return STR
    distinct = pc.unique(column, memory_pool=_POOL)
    if len(distinct) > _MAX_BOOL_SPELLINGS + 1:
        return STR
    cells = {cell.lower() for cell in distinct.to_pylist() if cell}
    return BOOL if cells <= _BOOLS else STR


def _join(a: int, b: int) -> int:
    if a == b or b == NULL:
        return a
    if a == NULL:
        return b
    if BOOL in (a, b):
        return STR
    return max(a, b)
