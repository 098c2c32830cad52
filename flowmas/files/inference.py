"""Schema and shape of CSV/TSV, JSONL, JSON and YAML files, inferred while the upload streams.

An ``Inferencer`` is fed the upload's chunks as they pass (``feed``) and answers at the end (``finish``)
an ``InferenceResult``: the schema as YAML text (SAM's metadata key ``schema-yaml``), the shape, an
``error`` that says what went wrong or what was left out, and ``sampled`` when only part of the file was
described. **It never raises on data**: an empty, header-only, ragged, non-UTF-8 or malformed file, a row
past the cap, a YAML bomb, all end as a result whose ``error`` says so; an upload never fails because of
inference. It is chosen by extension first (``.csv``, ``.tsv``/``.tab``, ``.jsonl``/``.ndjson``,
``.json``, ``.yaml``/``.yml``), then by MIME type.

Output, in SAM's *documented* format (its docs say ``string``; its code said ``str``)::

    type: array                      # CSV/TSV and JSONL: an array of row objects
    items:
      type: object
      properties:
        id: {type: integer}          # written in block style by the YAML emitter
        price: {type: [number, 'null']}   # a union is a list; 'null' = some cells were empty

Type names: ``integer``, ``number``, ``boolean``, ``string``, ``null``, ``object``, ``array``; ``{}`` means
nothing was seen (a header-only column, an empty array's items). Shapes: ``"<rows> rows x <cols>
columns"`` (CSV/TSV, JSONL of objects; the header and blank lines are not rows), and for JSON/YAML one line
per array as SAM wrote them, ``"top level: N elements"``, ``"[*].tags: 0-5 elements"`` (a range when the
arrays at one path differ), down to two levels; a top-level object gives ``"top level: N keys"``.

**CSV/TSV rules.** Parsed by the ``csv`` module (``excel``/``excel-tab`` dialects: quoted fields with
commas, quotes and newlines) over an incremental UTF-8 decoder (a BOM is dropped). *Every* row is counted
and typed; each column's type only widens, over the lattice::

    null (only empty cells seen) < boolean | integer < number < string

``integer`` is ``[+-]?[0-9]+`` (ASCII digits only: ``-5`` is an integer, ``²`` is not, SAM's ``isdigit``
bugs); ``number`` is what ``float()`` accepts within ``[0-9.eE+-]`` (``1e5``, ``.5``, ``-2.``; never
``nan``/``inf``); ``boolean`` is ``true``/``false`` in any case; an empty cell makes the column nullable
(``[integer, 'null']``) without changing its type; boolean with a number, or anything with text, is
``string``. A row with too few cells counts its missing cells as empty, extra cells are ignored, and the
first such row is reported in ``error``. Non-UTF-8 bytes are reported (with the offset of the first) and
replaced by U+FFFD, and inference goes on. A row longer than ``max_record_bytes`` characters (or a field
past the ``csv`` module's 131,072-character limit) stops inference: the schema so far is given, marked
``sampled``, and the shape is left out. Memory is bounded by one block of rows (~256 KiB of text), never
by the file: no list of rows, just the running column types, whatever the size.

**Speed.** The ``csv``-module path below is the reference (the *slow path*): rows are parsed in blocks by
``csv.reader`` over C-level line iterators and each column of a block is typed at C speed (``"".join(cells)
.isdigit()`` proves a block of integers at once, ``map(int|float, cells)`` checks signs and exponents, a
block of booleans is a ``set`` of a few values; a ``string`` column is only watched for empty cells). Past
the header, ``CsvInferencer`` runs a *fast path* with the very same results: blocks are batched (2 MiB),
parsed by ``pyarrow.csv`` as string columns and typed by ``pyarrow.compute`` (``csv_fast``), about 4x the
slow path's speed; a batch whose result could differ in any way (a ragged row, odd quoting, a record or
field near the limits, a BOM at its start) is handed to the slow path instead, block by block, from the
same state (``CsvInferencer``'s docstring).

**JSONL**: one JSON value per line (blank lines skipped); every line is merged into one schema.
**JSON**: a top-level array or object is read element by element (``JSONDecoder.raw_decode``), so memory
holds one element, not the document; past ``max_bytes`` the remaining elements are not read and the
result is ``sampled`` (``top level: at least N elements``); one element larger than ``max_bytes`` ends
with no more schema and an error saying it is too large to infer. **YAML** (``safe_load``, libyaml when
present) is loaded whole up to ``max_bytes``; past it, the text up to the last top-level entry before the
cap is parsed and the result is ``sampled``.

Merging JSON values: arrays are described by the union of *all* their elements (SAM used the first); an
empty array is ``items: {}`` (SAM lost the whole schema); ``true`` is ``boolean`` (SAM said ``int``);
``integer`` and ``number`` together are ``number``; objects merge their properties. Limits keep a hostile
document cheap: 64 levels of nesting, 1,000 keys per object, 2,000,000 values visited (YAML aliases are
visited once per place, so a "billion laughs" document costs its size, not its expansion); past a limit the
result is ``sampled`` and ``error`` says which.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import itertools
import json
import posixpath
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import orjson
import yaml

from flowmas.files import csv_fast
from flowmas.text import human_size, one_line, shorten

DEFAULT_MAX_BYTES = 64 * 2**20
"""JSON/YAML: how much is read (element by element for JSON, whole for YAML) before the result is sampled."""
DEFAULT_MAX_RECORD_BYTES = 4 * 2**20
"""CSV/TSV row, JSONL line: the longest one inference accepts (characters)."""
BLOCK_BYTES = 256 * 2**10
"""Chunks are processed in blocks of this size, so a caller's 8 MiB chunk does not mean 8 MiB of rows."""
CSV_BATCH_BYTES = 2 * 2**20
"""CSV/TSV: how many bytes of blocks the vectorised path parses and types at once (``csv_fast``)."""
MAX_COLUMNS = 10_000
MAX_DEPTH = 64
MAX_KEYS = 1_000
MAX_VISITS = 2_000_000
SHAPE_LEVELS = 2

Kind = Literal["csv", "tsv", "jsonl", "json", "yaml", "text", "binary"]

_EXTENSIONS: dict[str, Kind] = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".jsonlines": "jsonl",
    ".json": "json", ".geojson": "json", ".yaml": "yaml", ".yml": "yaml",
}
_MIME_TYPES: dict[str, Kind] = {
    "text/csv": "csv", "application/csv": "csv", "text/tab-separated-values": "tsv",
    "application/x-ndjson": "jsonl", "application/ndjson": "jsonl", "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl", "application/jsonlines": "jsonl",
    "application/json": "json", "text/json": "json",
    "application/yaml": "yaml", "application/x-yaml": "yaml", "text/yaml": "yaml", "text/x-yaml": "yaml",
}
_TEXT_MIME_TYPES = {
    "application/xml", "application/javascript", "application/x-sh", "application/sql", "application/toml",
    "application/x-python", "application/x-tex", "application/rtf", "image/svg+xml", "message/rfc822",
}
_TEXT_EXTENSIONS = {
    ".txt", ".md", ".markdown", ".rst", ".log", ".ini", ".cfg", ".conf", ".toml", ".xml", ".html", ".htm",
    ".py", ".js", ".ts", ".sh", ".sql", ".c", ".h", ".java", ".go", ".rs", ".css", ".svg", ".tex", ".env",
}


def file_kind(filename: str, mime_type: str | None) -> Kind:
    """What a file is for inference and read params: by extension first, then by MIME type.

    ``text`` is anything line-oriented (``text/*``, XML, JSON and YAML suffixes, a missing MIME type);
    ``binary`` is a declared non-text MIME type (images, archives, ``application/octet-stream``).
    """
    extension = posixpath.splitext(filename.lower())[1]
    if extension in _EXTENSIONS:
        return _EXTENSIONS[extension]
    mime = (mime_type or "").split(";")[0].strip().lower()
    if mime in _MIME_TYPES:
        return _MIME_TYPES[mime]
    if mime.endswith("+json"):
        return "json"
    if extension in _TEXT_EXTENSIONS or not mime:
        return "text"
    if mime.startswith("text/") or mime in _TEXT_MIME_TYPES or mime.endswith("+xml"):
        return "text"
    return "binary"


@dataclass(frozen=True)
class InferenceResult:
    """What inference found. ``error`` may accompany a schema: then it says what was left out or odd."""

    schema_yaml: str | None
    shape: str | None
    error: str | None = None
    sampled: bool = False


class _Stop(Exception):
    """Inference cannot go on; ``message`` says why. What was inferred so far may still be reported."""

    def __init__(self, message: str, *, keep_shape: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.keep_shape = keep_shape


class Inferencer(ABC):
    """Fed while an upload streams; ``finish()`` answers. Never raises on data (the module docstring)."""

    kind: ClassVar[Kind]

    def __init__(self) -> None:
        self._result: InferenceResult | None = None
        self._stopped: _Stop | None = None
        self._notes: list[str] = []
        self._bytes = 0

    @staticmethod
    def for_file(
        filename: str,
        mime_type: str | None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> Inferencer | None:
        """The inferencer for this file, or None when its kind has no schema (text, binary)."""
        kind = file_kind(filename, mime_type)
        if kind == "csv":
            return CsvInferencer(delimiter=",", max_record_bytes=max_record_bytes)
        if kind == "tsv":
            return CsvInferencer(delimiter="\t", max_record_bytes=max_record_bytes)
        if kind == "jsonl":
            return JsonlInferencer(max_record_bytes=max_record_bytes)
        if kind == "json":
            return JsonInferencer(max_bytes=max_bytes)
        if kind == "yaml":
            return YamlInferencer(max_bytes=max_bytes)
        return None

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Take the next chunk of the file (any size; processed in blocks of ``BLOCK_BYTES``)."""
        if self._result is not None:
            raise RuntimeError("Inferencer.feed() after finish()")
        if self._stopped is not None:
            return
        data = bytes(chunk)
        try:
            for start in range(0, len(data), BLOCK_BYTES):
                block = data[start:start + BLOCK_BYTES]
                self._feed(block)
                self._bytes += len(block)
        except _Stop as stop:
            self._stopped = stop
        except (RecursionError, MemoryError) as exc:
            self._stopped = _Stop(f"inference stopped: {type(exc).__name__}")
        except Exception as exc:  # noqa: BLE001 - a bug in inference must never fail an upload
            self._stopped = _Stop(f"inference failed unexpectedly ({type(exc).__name__}: {shorten(str(exc), 80)})")

    def finish(self) -> InferenceResult:
        """The result (computed once; later calls answer the same)."""
        if self._result is None:
            if self._stopped is None:
                try:
                    self._finish()
                except _Stop as stop:
                    self._stopped = stop
                except (RecursionError, MemoryError) as exc:
                    self._stopped = _Stop(f"inference stopped: {type(exc).__name__}")
                except Exception as exc:  # noqa: BLE001 - see feed()
                    self._stopped = _Stop(
                        f"inference failed unexpectedly ({type(exc).__name__}: {shorten(str(exc), 80)})"
                    )
            try:
                self._result = self._build()
            except Exception as exc:  # noqa: BLE001 - see feed()
                self._result = InferenceResult(None, None, f"inference failed unexpectedly ({type(exc).__name__})")
        return self._result

    @abstractmethod
    def _feed(self, block: bytes) -> None: ...

    @abstractmethod
    def _finish(self) -> None: ...

    @abstractmethod
    def _build(self) -> InferenceResult: ...

    def _note(self, message: str) -> None:
        if message not in self._notes and len(self._notes) < 5:
            self._notes.append(message)

    def _error_text(self) -> str | None:
        notes = list(self._notes)
        if self._stopped is not None:
            notes.insert(0, self._stopped.message)
        return "; ".join(notes) if notes else None


# --- text decoding ----------------------------------------------------------------------------------------


class _Decoder:
    """Incremental UTF-8 (BOM dropped). The first invalid byte is noted with its offset; inference goes on
    with U+FFFD in its place (or stops, for formats that must be UTF-8)."""

    def __init__(self, note: Callable[[str], None], *, strict: bool = False) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
        self._note = note
        self._strict = strict
        self._offset = 0
        self.valid = True

    def passthrough(self, data: bytes) -> bool:
        """Whether ``data`` decodes to itself (ASCII, nothing pending, the BOM question settled): then it is
        counted as decoded, and the caller may use the bytes as they are."""
        if not data.isascii() or self._decoder.getstate() != (b"", 0):
            return False
        self._offset += len(data)
        return True

    def decode(self, data: bytes, final: bool = False) -> str:
        offset, self._offset = self._offset, self._offset + len(data)
        try:
            return self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            if not self.valid:
                raise  # a "replace" decoder never raises
            pending, _ = self._decoder.getstate()
            position = offset - len(pending) + exc.start
            message = f"not valid UTF-8 (first invalid byte at offset {max(position, 0)})"
            if self._strict:
                raise _Stop(message) from None
            self.valid = False
            self._note(f"{message}; invalid bytes were read as U+FFFD")
            self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
            return self._decoder.decode(pending + data, final)


# --- CSV / TSV --------------------------------------------------------------------------------------------

_NULL, _BOOL, _INT, _FLOAT, _STR = csv_fast.NULL, csv_fast.BOOL, csv_fast.INT, csv_fast.FLOAT, csv_fast.STR
_TYPE_NAMES = {_BOOL: "boolean", _INT: "integer", _FLOAT: "number", _STR: "string"}


def _join(a: int, b: int) -> int:
    if a == b or b == _NULL:
        return a
    if a == _NULL:
        return b
    if _BOOL in (a, b):
        return _STR
    return max(a, b)


_JOIN = [[_join(a, b) for b in range(5)] for a in range(5)]
_FLOAT_CHARS = frozenset("0123456789.eE+-")


def _valid_for(convert: Callable[[str], object], values: Iterable[str]) -> bool:
    try:
        deque(map(convert, values), maxlen=0)
    except ValueError:
        return False
    return True


def _classify(value: str) -> int:
    """One cell's type (the slow path: only for blocks the fast checks could not settle)."""
    if not value:
        return _NULL
    if not value.isascii():
        return _STR
    if value.isdigit() or (value[0] in "+-" and value[1:].isdigit()):
        return _INT
    lowered = value.lower()
    if lowered == "true" or lowered == "false":
        return _BOOL
    if _FLOAT_CHARS.issuperset(value) and _valid_for(float, (value,)):
        return _FLOAT
    return _STR


def _block_type(values: list[str] | tuple[str, ...], current: int) -> int:
    """The type of a block of non-empty cells, at C speed when the block is uniform."""
    joined = "".join(values)
    if joined.isascii():
        if joined.isdigit():
            return _INT  # every cell is non-empty, so every cell is digits
        unsigned = joined.replace("-", "").replace("+", "")
        if unsigned.isdigit() and _valid_for(int, values):
            return _INT
        bare = unsigned.replace(".", "").replace("e", "").replace("E", "")
        if (not bare or bare.isdigit()) and _valid_for(float, values):
            return _FLOAT
        if current <= _BOOL and len(joined) <= 5 * len(values):
            distinct = {value.lower() for value in set(values)}
            if distinct <= {"true", "false"}:
                return _BOOL
    result = _NULL
    for value in set(values):
        result = _JOIN[result][_classify(value)]
        if result == _STR:
            break
    return result


class _NeedMore(Exception):
    """The csv reader reached the end of the lines we have, maybe in the middle of a quoted field."""


def _then_need_more(lines: list[str]) -> Iterator[str]:
    yield from lines
    raise _NeedMore


class CsvRecords:
    """Incremental CSV/TSV record splitter: text in, complete records out (fields, and the raw text).

    ``csv.reader`` pulls lines, but uploads push chunks; so each block's complete lines are parsed, and a
    record cut by the end of the block (a quoted field with a newline) is kept and parsed again with the
    next block. Blocks without a quote take a C-only path. Blank lines are skipped, as ``DictReader`` does.
    """

    def __init__(self, delimiter: str, max_record_chars: int, *, keep_raw: bool = False) -> None:
        self.dialect: type[csv.Dialect] = csv.excel_tab if delimiter == "\t" else csv.excel
        self.max_record_chars = max_record_chars
        self.keep_raw = keep_raw
        self.records = 0
        self._pending = ""

    def feed(self, text: str, final: bool = False) -> tuple[list[list[str]], list[str]]:
        """Records completed by ``text`` (and, if ``keep_raw``, their raw text); ``final`` flushes the rest."""
        data = self._pending + text if self._pending else text
        cut = len(data) if final else max(data.rfind("\n"), data.rfind("\r", 0, len(data) - 1)) + 1
        complete, rest = data[:cut], data[cut:]
        rows: list[list[str]] = []
        raws: list[str] = []
        carry = ""
        if complete:
            try:
                if '"' not in complete and not self.keep_raw:
                    rows = list(csv.reader(io.StringIO(complete, newline=""), self.dialect))
                else:
                    lines = list(io.StringIO(complete, newline=""))
                    reader = csv.reader(iter(lines) if final else _then_need_more(lines), self.dialect)
                    done = 0
                    try:
                        for row in reader:
                            rows.append(row)
                            if self.keep_raw:
                                raws.append("".join(lines[done:reader.line_num]))
                            done = reader.line_num
                    except _NeedMore:
                        pass
                    carry = "".join(lines[done:])
            except csv.Error as exc:
                raise _Stop(f"row {self.records + len(rows) + 1} could not be parsed: {exc}") from None
        self._pending = carry + rest if carry else rest
        if len(self._pending) > self.max_record_chars:
            self._pending = ""
            raise _Stop(
                f"row {self.records + len(rows) + 1} is longer than {self.max_record_chars:,} characters"
            )
        if [] in rows:  # blank lines
            keep = [index for index, row in enumerate(rows) if row]
            rows = [rows[index] for index in keep]
            raws = [raws[index] for index in keep] if self.keep_raw else raws
        self.records += len(rows)
        return rows, raws


class CsvInferencer(Inferencer):
    """CSV/TSV: every row counted and typed in bounded memory (the module docstring).

    Two paths with one result. The *slow path* is the reference: each block is decoded, split into records
    by ``CsvRecords`` and typed by ``_take``. Once the header is read, the *fast path* takes over: blocks are
    kept (as UTF-8 bytes, ASCII blocks as they are) until ``CSV_BATCH_BYTES``, then the batch's complete
    records are parsed by ``pyarrow.csv`` and typed by ``pyarrow.compute`` (``csv_fast``), and the state
    (``CsvRecords``' pending text and count, the column types, the row count) ends exactly where the slow path
    would have left it after the same blocks. Whenever that cannot be proven for a batch (a row with another
    number of fields, quotes that are not well-formed, a record or field near the limits that stop inference,
    a BOM at the start of a batch, anything ``pyarrow`` refuses), nothing of the batch is committed and its
    blocks go through the slow path one by one, from that same state: the result, its notes and their order
    included, is the slow path's in every case. A decoder note (non-UTF-8 bytes) first flushes the blocks
    before it, so it lands among the other notes where the slow path puts it.
    """

    kind = "csv"

    def __init__(
        self,
        *,
        delimiter: str = ",",
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        fast: bool = True,
        batch_bytes: int = CSV_BATCH_BYTES,
    ) -> None:
        super().__init__()
        self._delimiter = delimiter
        self._decoder = _Decoder(self._decoder_note)
        self._records = CsvRecords(delimiter, max_record_bytes)
        self._header: list[str] | None = None
        self._types: list[int] = []
        self._nullable: list[bool] = []
        self._rows = 0
        self._fast = fast
        self._batch_bytes = batch_bytes
        self._batch = bytearray()
        """The fast path's batch: the records' pending text when it began, then the blocks (UTF-8), in
        ``_batch[:_filled]``; the buffer is reused from batch to batch (no allocation per batch)."""
        self._filled = 0
        self._bounds: list[int] = []
        self.fast_batches = 0
        """Batches the fast path committed (for tests and measurements)."""
        self.slow_batches = 0
        """Batches the fast path handed to the slow path."""

    def _decoder_note(self, message: str) -> None:
        self._flush()
        self._note(message)

    def _feed(self, block: bytes) -> None:
        if not self._fast or self._header is None:
            self._take(*self._records.feed(self._decoder.decode(block)))
            return
        # decoded first: a decoder note flushes the batch so far
        piece = block if self._decoder.passthrough(block) else self._decoder.decode(block).encode()
        if not self._bounds:
            self._put(self._records._pending.encode())
            self._records._pending = ""
            self._bounds = [self._filled]  # where the pending text ends, then where each block ends
        self._put(piece)
        self._bounds.append(self._filled)
        if self._filled >= self._batch_bytes:
            self._flush()

    def _put(self, data: bytes) -> None:
        start, self._filled = self._filled, self._filled + len(data)
        try:
            self._batch[start:self._filled] = data  # in place while it fits
        except BufferError:  # still exported (it never should be): grow a copy instead
            self._batch = self._batch[:start] + data

    def _finish(self) -> None:
        self._flush()
        self._take(*self._records.feed(self._decoder.decode(b"", True), final=True))

    def _flush(self) -> None:
        bounds, self._bounds = self._bounds, []
        if not bounds:
            return
        size, self._filled = self._filled, 0
        if self._fast_batch(size):
            self.fast_batches += 1
            return
        # the slow path, block by block, from the state before the batch (the pending text is its head)
        self.slow_batches += 1
        batch = self._batch
        self._records._pending = batch[:bounds[0]].decode()
        for start, end in itertools.pairwise(bounds):
            self._take(*self._records.feed(batch[start:end].decode()))

    def _fast_batch(self, size: int) -> bool:
        """Parse and type a batch (``_batch[:size]``: the pending text, then blocks) at once; False (and nothing
        changed) when the result could differ from the slow path's."""
        header = self._header
        assert header is not None
        records = self._records
        batch = self._batch
        cut = max(batch.rfind(b"\n", 0, size), batch.rfind(b"\r", 0, size - 1)) + 1  # as CsvRecords.feed cuts
        try:
            end = csv_fast.record_end(batch, cut, self._delimiter)
            if end is None:
                return False
            # what stays pending must not reach the limits at which the slow path stops (a long record) or
            # raises (a long field, the csv module's field_size_limit); bytes >= characters
            field_limit = csv.field_size_limit()
            if size - end > min(records.max_record_chars, field_limit):
                return False
            types, nullable, rows = list(self._types), list(self._nullable), 0
            if end:
                quoted = batch.find(b'"', 0, end) >= 0
                table = csv_fast.parse(batch, end, len(header), self._delimiter, quoted=quoted)
                if table is None:
                    return False
                rows = table.num_rows
                longest_record = 0
                for index, column in enumerate(table.columns if rows else ()):
                    shortest, longest = csv_fast.lengths(column)
                    if longest > field_limit:
                        return False
                    # a field's raw text: at most two quotes and each quote doubled
                    longest_record += 2 * longest + 3 if quoted else longest + 1
                    if shortest == 0:
                        nullable[index] = True
                    types[index] = csv_fast.column_type(column, types[index], shortest == 0)
                if longest_record + 2 > records.max_record_chars:
                    return False  # a record may be long enough to stop the slow path
        except csv_fast.Error:
            return False
        records._pending = batch[end:size].decode()
        records.records += rows
        self._rows += rows
        self._types, self._nullable = types, nullable
        return True

    def _take(self, rows: list[list[str]], _raws: list[str]) -> None:
        if not rows:
            return
        if self._header is None:
            self._header = rows[0]
            rows = rows[1:]
            if len(self._header) > MAX_COLUMNS:
                raise _Stop(f"the header has {len(self._header):,} columns; at most {MAX_COLUMNS:,} are described")
            self._types = [_NULL] * len(self._header)
            self._nullable = [False] * len(self._header)
            seen: set[str] = set()
            for name in self._header:
                if name in seen:
                    self._note(f"the column name {shorten(name, 40)!r} appears more than once; their types are merged")
                seen.add(name)
            if not rows:
                return
        width = len(self._header)
        if set(map(len, rows)) != {width}:
            for index, row in enumerate(rows):
                if len(row) != width:
                    self._note(
                        f"row {self._rows + index + 1} has {len(row)} fields where the header has {width} "
                        "(missing ones count as empty, extra ones are ignored)"
                    )
                    break
            rows = [row if len(row) == width else (row + [""] * width)[:width] for row in rows]
        self._rows += len(rows)
        types, nullable = self._types, self._nullable
        for index, column in enumerate(zip(*rows, strict=True)):
            current = types[index]
            if current == _STR:
                if not nullable[index] and "" in column:
                    nullable[index] = True
                continue
            values: tuple[str, ...] | list[str] = column
            if "" in column:
                nullable[index] = True
                values = [value for value in column if value]
                if not values:
                    continue
            types[index] = _JOIN[current][_block_type(values, current)]

    def _build(self) -> InferenceResult:
        header = self._header
        sampled = self._stopped is not None
        if header is None:
            if sampled:
                return InferenceResult(None, None, self._error_text(), True)
            return InferenceResult(None, "0 rows x 0 columns", self._error_text())
        properties: dict[str, dict[str, Any]] = {}
        for name, kind, nullable in zip(header, self._types, self._nullable, strict=True):
            if kind == _NULL:
                schema: dict[str, Any] = {"type": "null"} if nullable else {}
            else:
                schema = {"type": _union([_TYPE_NAMES[kind], "null"] if nullable else [_TYPE_NAMES[kind]])}
            if name in properties:
                schema = _merge_dumped(properties[name], schema)
            properties[name] = schema
        schema_yaml = _dump({"type": "array", "items": {"type": "object", "properties": properties}})
        shape = None if sampled else f"{self._rows} rows x {len(header)} columns"
        return InferenceResult(schema_yaml, shape, self._error_text(), sampled)


def _merge_dumped(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two CSV column schemas of the same name (a duplicated header) as one."""
    names: list[str] = []
    for schema in (a, b):
        kind = schema.get("type")
        names += kind if isinstance(kind, list) else [kind] if kind else []
    if not names:
        return {}
    ranks = {"boolean": _BOOL, "integer": _INT, "number": _FLOAT, "string": _STR}
    joined = _NULL
    for name in names:
        joined = _JOIN[joined][ranks.get(name, _NULL)]
    result = [_TYPE_NAMES[joined]] if joined != _NULL else []
    if "null" in names:
        result.append("null")
    return {"type": _union(result)}


# --- JSON values: schema merging --------------------------------------------------------------------------

_KIND_ORDER = ("object", "array", "string", "number", "integer", "boolean", "null")
_SCALARS: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


class _Node:
    __slots__ = ("items", "kinds", "properties")

    def __init__(self) -> None:
        self.kinds: set[str] = set()
        self.properties: dict[str, _Node] | None = None
        self.items: _Node | None = None

    def dump(self) -> dict[str, Any]:
        kinds = [kind for kind in _KIND_ORDER if kind in self.kinds]
        if "number" in kinds and "integer" in kinds:
            kinds.remove("integer")
        if not kinds:
            return {}
        out: dict[str, Any] = {"type": _union(kinds)}
        if self.properties is not None:
            out["properties"] = {key: child.dump() for key, child in self.properties.items()}
        if self.items is not None:
            out["items"] = self.items.dump()
        return out


class _SchemaBuilder:
    """Merges JSON-like values into one ``_Node`` tree, within the limits of the module docstring."""

    def __init__(self, note: Callable[[str], None], *, shared_refs: bool = False) -> None:
        self.root = _Node()
        self.visits = 0
        self.truncated = False
        self.arrays: dict[str, tuple[int, int]] = {}
        self._note = note
        self._memo: set[tuple[int, int]] | None = set() if shared_refs else None

    def add(self, value: object, path: str | None = "") -> None:
        self.merge(self.root, value, 0, path)

    def merge(self, node: _Node, value: object, depth: int, path: str | None) -> None:
        self.visits += 1
        if self.visits > MAX_VISITS:
            self.truncated = True
            self._note(f"only the first {MAX_VISITS:,} values were described")
            raise _Budget
        scalar = _SCALARS.get(type(value))
        if scalar is not None:
            node.kinds.add(scalar)
            return
        if isinstance(value, dict):
            node.kinds.add("object")
            if node.properties is None:
                node.properties = {}
            if self._skip(node, value, depth):
                return
            properties = node.properties
            for key, item in value.items():
                name = key if isinstance(key, str) else str(key)
                child = properties.get(name)
                if child is None:
                    if len(properties) >= MAX_KEYS:
                        self.truncated = True
                        self._note(f"objects with more than {MAX_KEYS:,} distinct keys are cut to the first ones")
                        continue
                    child = properties[name] = _Node()
                child_path = None if path is None or depth >= SHAPE_LEVELS else (f"{path}.{name}" if path else name)
                self.merge(child, item, depth + 1, child_path)
        elif isinstance(value, list | tuple | set | frozenset):
            node.kinds.add("array")
            if node.items is None:
                node.items = _Node()
            if path is not None:
                label = path or "top level"
                low, high = self.arrays.get(label, (len(value), len(value)))
                self.arrays[label] = (min(low, len(value)), max(high, len(value)))
            if self._skip(node, value, depth):
                return
            items = node.items
            child_path = None if path is None or depth >= SHAPE_LEVELS else f"{path}[*]"
            for item in value:
                self.merge(items, item, depth + 1, child_path)
        elif isinstance(value, bool):
            node.kinds.add("boolean")
        elif isinstance(value, int):
            node.kinds.add("integer")
        elif isinstance(value, float):
            node.kinds.add("number")
        else:  # YAML timestamps, dates, binary: text in any JSON rendering
            node.kinds.add("string")

    def _skip(self, node: _Node, value: object, depth: int) -> bool:
        if depth >= MAX_DEPTH:
            self.truncated = True
            self._note(f"values nested deeper than {MAX_DEPTH} levels are not described")
            return True
        if self._memo is not None:
            key = (id(node), id(value))
            if key in self._memo:
                return True
            self._memo.add(key)
        return False


class _Budget(Exception):
    """The visit budget is spent."""


def _shape_lines(arrays: dict[str, tuple[int, int]]) -> list[str]:
    lines = []
    for path, (low, high) in arrays.items():
        count = f"{low}" if low == high else f"{low}-{high}"
        lines.append(f"{one_line(path)}: {count} element{'' if (low, high) == (1, 1) else 's'}")
    return lines


# --- JSONL --------------------------------------------------------------------------------------------------


def _loads(data: bytes | str) -> object:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)  # what orjson refuses and json takes: NaN, integers past 64 bits


class JsonlInferencer(Inferencer):
    """JSONL / NDJSON: every line merged into one schema, in bounded memory."""

    kind = "jsonl"

    def __init__(self, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        super().__init__()
        self._max = max_record_bytes
        self._pending = b""
        self._builder = _SchemaBuilder(self._note)
        self._rows = 0
        self._line = 0
        self._objects_only = True
        self._bad_lines = 0
        self._first_bad: int | None = None
        self._budget_spent = False

    def _feed(self, block: bytes) -> None:
        data = self._pending + block if self._pending else block
        cut = data.rfind(b"\n") + 1
        self._pending = data[cut:]
        if len(self._pending) > self._max:
            line = self._line + data.count(b"\n", 0, cut) + 1
            raise _Stop(f"line {line} is longer than {self._max:,} bytes")
        lines = data[:cut].split(b"\n")
        lines.pop()  # what follows the last newline: b"" (the rest is pending)
        self._lines(lines)

    def _finish(self) -> None:
        self._lines([self._pending])

    def _lines(self, lines: list[bytes]) -> None:
        for line in lines:
            self._line += 1
            if not line.strip():
                continue
            try:
                value = _loads(line)
            except (ValueError, RecursionError):
                self._bad_lines += 1
                if self._first_bad is None:
                    self._first_bad = self._line
                continue
            self._rows += 1
            if not isinstance(value, dict):
                self._objects_only = False
            if not self._budget_spent:
                try:
                    self._builder.add(value, path=None)
                except _Budget:
                    self._budget_spent = True

    def _build(self) -> InferenceResult:
        sampled = self._stopped is not None or self._builder.truncated
        if self._bad_lines:
            self._note(
                f"{self._bad_lines} line{'s are' if self._bad_lines > 1 else ' is'} not valid JSON (the first: line "
                f"{self._first_bad}); skipped"
            )
        if self._rows == 0 and self._stopped is None:
            return InferenceResult(None, "0 rows", self._error_text())
        schema = _dump({"type": "array", "items": self._builder.root.dump()})
        shape = None
        if self._stopped is None:
            properties = self._builder.root.properties
            if self._objects_only and properties is not None:
                shape = f"{self._rows} rows x {len(properties)} columns"
            else:
                shape = f"{self._rows} rows"
        return InferenceResult(schema, shape, self._error_text(), sampled)


# --- JSON ---------------------------------------------------------------------------------------------------

_WS = " \t\r\n"


class JsonInferencer(Inferencer):
    """JSON: a top-level array or object read element by element; a scalar document read whole."""

    kind = "json"

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__()
        self._max = max_bytes
        self._decoder = _Decoder(self._note, strict=True)
        self._raw = json.JSONDecoder(strict=False)
        self._pieces: list[str] = []
        self._buffered = 0
        self._retry_at = 0
        self._top: Literal["array", "object", "scalar"] | None = None
        self._done = False
        self._expect_separator = False
        self._key: str | None = None
        self._count = 0
        self._builder = _SchemaBuilder(self._note)
        self._capped = False
        self._consumed = 0

    def _feed(self, block: bytes) -> None:
        if self._capped:
            return
        if self._bytes + len(block) > self._max:
            self._capped = True
            block = block[: max(self._max - self._bytes, 0)]
        piece = self._decoder.decode(block)
        if piece:
            self._pieces.append(piece)
            self._buffered += len(piece)
        if self._buffered >= self._retry_at and self._top != "scalar":
            self._advance(final=False)

    def _finish(self) -> None:
        final = not self._capped
        if final:
            piece = self._decoder.decode(b"", True)
            if piece:
                self._pieces.append(piece)
        if final or self._top != "scalar":
            self._advance(final=final)
        if final and self._top in ("array", "object") and not self._done:
            raise _Stop(f"the JSON document is incomplete (it ends inside its top-level {self._top})")

    def _advance(self, final: bool) -> None:
        text = "".join(self._pieces)
        size = len(text)
        pos = 0
        while True:
            while pos < size and text[pos] in _WS:
                pos += 1
            if pos >= size:
                break
            if self._done:
                raise _Stop(f"the JSON document has extra data after its end (at character {self._consumed + pos})")
            if self._top is None:
                char = text[pos]
                if char == "[" or char == "{":
                    self._top = "array" if char == "[" else "object"
                    pos += 1
                    root = self._builder.root
                    root.kinds.add(self._top)
                    if char == "[":
                        root.items = _Node()
                    else:
                        root.properties = {}
                    continue
                self._top = "scalar"
            if self._top == "scalar":
                if not final:
                    break
                value, pos = self._decode_value(text, pos, final)
                self._done = True
                self._builder.add(value)
                continue
            closer = "]" if self._top == "array" else "}"
            if text[pos] == closer and self._key is None:
                self._done, pos = True, pos + 1
                continue
            if self._expect_separator:
                if text[pos] != ",":
                    raise _Stop(f"invalid JSON: expected ',' or '{closer}' at character {self._consumed + pos}")
                pos += 1
                self._expect_separator = False
                continue
            if self._top == "object" and self._key is None:
                if text[pos] != '"':
                    raise _Stop(f"invalid JSON: expected a key at character {self._consumed + pos}")
                end = self._string_end(text, pos)
                colon = end
                while 0 <= colon < size and text[colon] in _WS:
                    colon += 1
                if end < 0 or colon >= size:
                    break
                if text[colon] != ":":
                    raise _Stop(f"invalid JSON: expected ':' at character {self._consumed + colon}")
                self._key = json.loads(text[pos:end])
                pos = colon + 1
                continue
            try:
                value, end = self._decode_value(text, pos, final)
            except _Incomplete:
                break
            pos = end
            self._count += 1
            self._expect_separator = True
            try:
                if self._top == "array":
                    items = self._builder.root.items
                    assert items is not None
                    self._builder.merge(items, value, 1, "[*]")
                else:
                    key, self._key = self._key or "", None
                    properties = self._builder.root.properties
                    assert properties is not None
                    child = properties.get(key)
                    if child is None:
                        child = properties[key] = _Node()
                    self._builder.merge(child, value, 1, key)
            except _Budget:
                self._capped = True
                break
        rest = text[pos:]
        self._consumed += pos
        self._pieces = [rest] if rest else []
        self._buffered = len(rest)
        # an incomplete element is parsed again only once the text has doubled: linear, not quadratic
        self._retry_at = 2 * len(rest) if rest.strip() else 0

    def _string_end(self, text: str, pos: int) -> int:
        index = pos + 1
        while True:
            index = text.find('"', index)
            if index < 0:
                return -1
            backslashes = 0
            back = index - 1
            while text[back] == "\\":
                backslashes += 1
                back -= 1
            if backslashes % 2 == 0:
                return index + 1
            index += 1

    def _decode_value(self, text: str, pos: int, final: bool) -> tuple[object, int]:
        try:
            value, end = self._raw.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            if not final and (exc.msg.startswith("Unterminated string") or exc.pos >= len(text) - 10):
                raise _Incomplete from None  # it ran into the end of what we have: wait for more
            raise _Stop(f"invalid JSON: {exc.msg} at character {self._consumed + exc.pos}") from None
        except RecursionError:
            raise _Stop("the JSON is nested too deeply to infer") from None
        if not final and end >= len(text) and not isinstance(value, dict | list | str):
            raise _Incomplete  # a number or literal may go on in the next chunk
        return value, end

    def _build(self) -> InferenceResult:
        builder = self._builder
        root = builder.root
        sampled = self._capped or self._stopped is not None or builder.truncated
        if self._capped and not builder.truncated:
            self._note(f"only the first {human_size(self._max)} were read")
        if self._top is None and self._stopped is None and not self._capped:
            return InferenceResult(None, None, "the file is empty")
        if not root.kinds or (self._capped and self._count == 0 and self._top != "scalar"):
            message = self._error_text() if self._stopped is not None else None
            return InferenceResult(
                None, None, message or f"too large to infer: its first {human_size(self._max)} hold no complete "
                "element; use head=, bytes= or grep= to read parts of it", True,
            )
        lines: list[str] = []
        at_least = "at least " if sampled else ""
        if self._top == "array":
            lines.append(f"top level: {at_least}{self._count} element{'' if self._count == 1 else 's'}")
        elif self._top == "object" and root.properties is not None:
            keys = len(root.properties)
            lines.append(f"top level: {at_least}{keys} key{'' if keys == 1 else 's'}")
        lines += _shape_lines(builder.arrays)
        return InferenceResult(_dump(root.dump()), "\n".join(lines) or None, self._error_text(), sampled)


class _Incomplete(Exception):
    """The text ends inside the value being decoded."""


# --- YAML ---------------------------------------------------------------------------------------------------

_YamlLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlInferencer(Inferencer):
    """YAML (safe loading, libyaml when present): whole up to ``max_bytes``, a sampled prefix past it."""

    kind = "yaml"

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__()
        self._max = max_bytes
        self._buffer = bytearray()
        self._capped = False

    def _feed(self, block: bytes) -> None:
        room = self._max - len(self._buffer)
        if len(block) > room:
            self._capped = True
            block = block[: max(room, 0)]
        self._buffer += block

    def _finish(self) -> None:
        pass

    def _build(self) -> InferenceResult:
        if self._stopped is not None:
            return InferenceResult(None, None, self._error_text(), True)
        data = bytes(self._buffer)
        self._buffer = bytearray()
        if self._capped:
            data = _yaml_prefix(data)
            if not data:
                return InferenceResult(None, None, f"larger than {human_size(self._max)}; too large to infer", True)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return InferenceResult(None, None, f"not valid UTF-8 (first invalid byte at offset {exc.start})")
        try:
            documents = list(yaml.load_all(text, Loader=_YamlLoader))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or "it could not be parsed"
            return InferenceResult(None, None, f"invalid YAML: {problem}{where}", self._capped)
        if not documents or (documents == [None] and not text.strip()):
            return InferenceResult(None, None, "the file is empty" if not text.strip() else None)
        builder = _SchemaBuilder(self._note, shared_refs=True)
        value: object = documents[0] if len(documents) == 1 else documents
        with contextlib.suppress(_Budget):
            builder.add(value)
        if self._capped:
            self._note(f"only the first {human_size(self._max)} were read")
        sampled = self._capped or builder.truncated
        lines = _shape_lines(builder.arrays)
        if len(documents) > 1:
            lines = [f"top level: {len(documents)} documents", *lines[1:]]
        elif isinstance(value, dict):
            at_least = "at least " if sampled else ""
            lines.insert(0, f"top level: {at_least}{len(value)} key{'' if len(value) == 1 else 's'}")
        elif isinstance(value, list) and sampled and lines:
            lines[0] = lines[0].replace("top level: ", "top level: at least ", 1)
        return InferenceResult(_dump(builder.root.dump()), "\n".join(lines) or None, self._error_text(), sampled)


def _yaml_prefix(data: bytes) -> bytes:
    """A cut YAML text up to its last top-level entry (a line starting in column 0), which the cut may have
    split: the entries before it are whole."""
    start = data.rfind(b"\n") + 1
    while start > 0:
        first = data[start:start + 1]
        if first and first not in b" \t#\r\n":
            return data[:start]
        start = data.rfind(b"\n", 0, start - 1) + 1
    return b""


# --- YAML output --------------------------------------------------------------------------------------------


class _FlowList(list[str]):
    """A type union, written ``[integer, 'null']`` on one line."""


class _SchemaDumper(yaml.SafeDumper):
    pass


def _represent_flow_list(dumper: yaml.SafeDumper, data: _FlowList) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_SchemaDumper.add_representer(_FlowList, _represent_flow_list)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    # a name with a line break or an invisible character is written double-quoted with escapes, so a user's
    # column or key name is never a line of its own in the schema text (render.py relies on it)
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=None if data.isprintable() else '"')


_SchemaDumper.add_representer(str, _represent_str)


def _union(kinds: list[str]) -> str | _FlowList:
    return kinds[0] if len(kinds) == 1 else _FlowList(kinds)


def _dump(schema: dict[str, Any]) -> str:
    text: str = yaml.dump(
        schema, Dumper=_SchemaDumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=10**6
    )
    return text
