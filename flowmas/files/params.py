"""Read params of ``amfs://`` URLs: parsed into a ``ReadPlan``, applied as streaming transforms in bounded memory.

``parse_read_params`` checks every param on its own and against the others (no file needed);
``check_plan_for`` checks the plan against the file's kind (``inference.file_kind``) so the service can
refuse before reading; ``apply_read_plan`` runs it over the file's chunks (the caller has already read
only ``bytes=``). Every refusal is an ``InvalidFileURLError`` that names the param, says what a valid
value looks like, and, for a wrong kind, names the kind and the param to use instead.

Params::

    bytes=A-B      inclusive byte range, like HTTP Range ("A-" to the end); the storage does the ranged read
    head=N         the first N records            tail=N   the last N records
    rows=A:B       records A to B-1, 0-based, like a Python slice ("A:" to the end, ":B" from 0)
    columns=a,b    CSV/TSV: those columns, in that order; JSONL: those keys of each line's object
    jsonpath=P     JSON/YAML: the values at P (the subset below), as JSON
    grep=R         the records in which the Python regex R is found (``re.search``)
    encoding=E     zip | gzip | base64 | datauri, applied last
    resolve=true   SAM: inline the (text) content where the URL is written; accepted here, used by the service

Numbers are ASCII digits, at most ``MAX_COUNT`` (10^9) for counts and ``MAX_OFFSET`` (2^53) for bytes;
``head=0``/``tail=0`` are valid (a CSV header alone). ``rows=`` needs B > A and has no negative indices
(use ``tail=``). ``bytes=-N`` (HTTP suffix range) is refused: the plan is read before the size is known.

**Order**: bytes → (jsonpath | columns) → grep → rows → head → tail → encoding. Each stage sees what the
previous one gives: grep searches the selected columns (so it can target one column), rows/head/tail
count the records grep kept (so ``grep=x&rows=20:40`` pages through matches), head applies within rows,
tail within head (``rows=100:200&head=50&tail=5`` gives records 145..149).

**Records**: CSV/TSV records (``csv`` module rules, quoted newlines included); the header is always
output first, is never counted, searched or dropped, and blank lines are not records. Every other text
kind (JSONL, JSON, YAML, plain text) counts lines split on ``\\n``; a line keeps its terminator, so the
output is the file's own bytes. Binary files take only bytes=, encoding= and resolve=. With ``bytes=A-B``
and A > 0, the range is a window, not a file: CSV/TSV/JSONL/JSON/YAML are read as plain text (no header;
columns= and jsonpath= are refused). With jsonpath, an indefinite path's matches are the records.

**jsonpath subset**: ``$`` then any of ``.name``, ``['name']``, ``["name"]`` (``\\'``, ``\\"``, ``\\\\`` escape),
``[N]`` (negative counts from the end), ``[*]``, ``.*``, and ``..`` before any of them (recursive
descent: the segment applied to every value at any depth, the current one included, in document order).
A ``.name`` is any run of characters other than ``.[]'"*`` and whitespace. No filters, slices or unions.
Keys are matched as text. A *definite* path (no ``*``, no ``..``) outputs the value itself, and a value
that is not there is an error saying at which step it was missing; an *indefinite* path outputs a JSON
array of its matches, one per line (``[]`` for none), and only it combines with grep/rows/head/tail.
Output is JSON (``ensure_ascii=False``; YAML dates and binary as text) and ends with a newline.

**Memory bounds** (``document_max_bytes`` is the caller's one in-memory budget): jsonpath loads the
document, and a document larger than ``document_max_bytes`` is refused ("too large for jsonpath; use
bytes= or head="); its result may be at most ``2 x document_max_bytes + 1 MiB`` of JSON, and walking it
at most ``MAX_VISITS`` values (YAML aliases count at every place they appear, so an alias bomb is refused,
not expanded). tail holds its last N records, refused if they exceed ``document_max_bytes``. A record is
held whole only when needed (grep, tail, columns, CSV) and may be at most ``MAX_RECORD_BYTES``; head= and
rows= alone on a line-based file count newlines and stream, so ``head=5`` of a 1 GB one-line JSON works.
Everything else holds one block (``BLOCK_BYTES``) at a time; zip, gzip and base64 stream.

**grep and ReDoS**: ``re`` has no timeout, so the cost of a pattern is bounded by its shape and its input:
a pattern is at most ``MAX_PATTERN_CHARS``; a quantified group containing an unbounded quantifier (``(a+)+``,
``(.*x){2}``, ``(\\d+\\.){3}``: the exponential family) is refused — write ``\\d+\\.\\d+\\.\\d+\\.``; and only the
first ``GREP_MAX_CHARS`` characters of a record are searched, as if it ended there (a match decides for
the whole record, which is given whole),
which keeps polynomial patterns such as ``.*a.*b`` under ~0.1 s a record. Overlapping alternatives under a
quantifier (``(a|ab)*c``) are not detected and stay the remaining risk. Matching is on the UTF-8 text
(invalid bytes as U+FFFD) without the line terminator; ``(?i)`` makes it case-insensitive.

**Encodings**: zip is a single-member archive (deflate, zip64 data descriptors, streamed through
``zipfile`` into a drained sink), the member named after the file with ``/``, ``\\`` and ``:`` replaced by
``_`` (no path can be unpacked); gzip via ``zlib.compressobj``; base64 in 3-byte-aligned pieces (no line
breaks); datauri is ``data:<type/subtype>;base64,`` + base64. ``resolve=true`` with zip or gzip is refused:
binary cannot be inlined as text (SAM pasted mangled gzip).
"""

from __future__ import annotations

import base64
import codecs
import csv
import importlib
import io
import json
import mimetypes
import re
import zipfile
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, NamedTuple, cast, get_args

import yaml

from flowmas.errors import InvalidFileURLError
from flowmas.files.inference import CsvRecords, Kind, _Stop, file_kind
from flowmas.text import human_size, shorten

Encoding = Literal["zip", "gzip", "base64", "datauri"]
ENCODINGS: tuple[str, ...] = get_args(Encoding)
PARAMS = ("bytes", "head", "tail", "rows", "columns", "jsonpath", "grep", "encoding", "resolve")
MAX_COUNT = 10**9
MAX_OFFSET = 2**53
MAX_RECORD_BYTES = 8 * 2**20
GREP_MAX_CHARS = 10_000
MAX_PATTERN_CHARS = 1_000
MAX_JSONPATH_CHARS = 1_000
MAX_COLUMNS = 1_000
MAX_VISITS = 5_000_000
BLOCK_BYTES = 256 * 2**10

_KIND_NAMES: dict[str, str] = {
    "csv": "CSV", "tsv": "TSV", "jsonl": "JSON Lines", "json": "JSON", "yaml": "YAML", "text": "text",
    "binary": "binary",
}
_RECORD_PARAMS = ("grep", "rows", "head", "tail")
_DIGITS = re.compile(r"[0-9]{1,20}")
_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")


@dataclass(frozen=True)
class ReadPlan:
    """What a URL's read params ask for (the module docstring says how each applies, and in which order)."""

    byte_range: tuple[int, int | None] | None = None
    head: int | None = None
    tail: int | None = None
    rows: tuple[int, int | None] | None = None
    columns: tuple[str, ...] | None = None
    jsonpath: str | None = None
    grep: str | None = None
    encoding: Encoding | None = None
    resolve: bool = False

    @property
    def transforms_content(self) -> bool:
        """True if anything besides ``byte_range``/``resolve`` changes the bytes (so size and sha256 differ)."""
        return any(
            value is not None
            for value in (self.head, self.tail, self.rows, self.columns, self.jsonpath, self.grep, self.encoding)
        )

    @property
    def _record_ops(self) -> tuple[str, ...]:
        return tuple(name for name in _RECORD_PARAMS if getattr(self, name) is not None)


# --- parsing ----------------------------------------------------------------------------------------------


def _bad(key: str, value: str, want: str) -> InvalidFileURLError:
    return InvalidFileURLError(f"The read param {key}={shorten(value, 60)!r} is not valid: {want}.")


def _count(key: str, value: str, unit: str) -> int:
    if not _DIGITS.fullmatch(value) or int(value) > MAX_COUNT:
        raise _bad(key, value, f"{key}= takes a whole number of {unit} from 0 to {MAX_COUNT:,}, e.g. {key}=20")
    return int(value)


def _byte_range(value: str) -> tuple[int, int | None]:
    want = "bytes= takes an inclusive byte range A-B or A- (to the end), e.g. bytes=0-1023"
    start_text, dash, end_text = value.partition("-")
    if not dash or not _DIGITS.fullmatch(start_text) or (end_text and not _DIGITS.fullmatch(end_text)):
        if dash and not start_text and _DIGITS.fullmatch(end_text):
            want += " (a suffix range -N is not supported: use tail= for the last lines)"
        raise _bad("bytes", value, want)
    start, end = int(start_text), int(end_text) if end_text else None
    if start > MAX_OFFSET or (end is not None and end > MAX_OFFSET):
        raise _bad("bytes", value, f"{want}; offsets are at most {MAX_OFFSET:,}")
    if end is not None and end < start:
        raise _bad("bytes", value, f"{want}, with B >= A")
    return start, end


def _rows(value: str) -> tuple[int, int | None]:
    want = "rows= takes A:B, rows A to B-1 counted from 0 like a Python slice (A: to the end, :B from the start)"
    start_text, colon, end_text = value.partition(":")
    if not colon or (start_text and not _DIGITS.fullmatch(start_text)) or (end_text and not _DIGITS.fullmatch(
            end_text)):
        if value.lstrip().startswith("-") or ":-" in value:
            want += "; negative indices are not supported: use tail= for the last rows"
        raise _bad("rows", value, want + ", e.g. rows=100:200")
    start = int(start_text) if start_text else 0
    end = int(end_text) if end_text else None
    if start > MAX_COUNT or (end is not None and end > MAX_COUNT):
        raise _bad("rows", value, f"{want}; A and B are at most {MAX_COUNT:,}")
    if end is not None and end <= start:
        raise _bad("rows", value, f"{want}; B must be greater than A (rows={start}:{start + 1} is one row)")
    return start, end


def _columns(value: str) -> tuple[str, ...]:
    want = ("columns= takes column names separated by commas, written as one CSV row (quote a name holding a "
            'comma: columns=id,"last, first")')
    if len(value) > 100 * MAX_COLUMNS:
        raise _bad("columns", value, f"{want}; at most {100 * MAX_COLUMNS:,} characters")
    try:
        names = next(csv.reader([value], strict=True, skipinitialspace=True), [])
    except csv.Error as exc:
        raise _bad("columns", value, f"{want} ({exc})") from None
    names = [name.strip() for name in names]
    if not names or any(not name for name in names):
        raise _bad("columns", value, f"{want}; a name is empty")
    if len(names) > MAX_COLUMNS:
        raise _bad("columns", value, f"{want}; at most {MAX_COLUMNS:,} names")
    if len(set(names)) != len(names):
        raise _bad("columns", value, f"{want}; a name is given twice")
    return tuple(names)


def _grep(value: str) -> str:
    if not value:
        raise _bad("grep", value, "grep= takes a Python regular expression, e.g. grep=(?i)error")
    if len(value) > MAX_PATTERN_CHARS:
        raise _bad("grep", value, f"a grep= pattern may be at most {MAX_PATTERN_CHARS:,} characters")
    _compile_grep(value)
    return value


@lru_cache(maxsize=256)
def _compile_grep(pattern: str) -> re.Pattern[str]:
    try:
        compiled = re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise _bad("grep", pattern, f"it is not a Python regular expression ({exc})") from None
    if _nested_repeat(pattern):
        raise _bad(
            "grep", pattern, "a quantified group may not contain an unbounded quantifier (like (a+)+ or (\\d+\\.){3}), "
            "which can take exponential time: repeat the inner part by hand (\\d+\\.\\d+\\.\\d+\\.)",
        )
    return compiled


def _nested_repeat(pattern: str) -> bool:
    """A repeat (max > 1) around a repeat without bound: the shape of catastrophic backtracking."""
    parser: Any = importlib.import_module("re._parser")  # the compiler's own parse tree; not in typeshed
    unbounded = parser.MAXREPEAT
    repeats = {"MAX_REPEAT", "MIN_REPEAT"}

    def walk(node: Any, inside: bool) -> bool:
        items = node.data if hasattr(node, "data") else node
        for op, args in items:
            if str(op) in repeats:
                _low, high, sub = args
                if inside and high == unbounded:
                    return True
                if walk(sub, inside or high > 1):
                    return True
                continue
            for arg in args if isinstance(args, tuple | list) else (args,):
                if hasattr(arg, "data") and walk(arg, inside):
                    return True
                if (isinstance(arg, list) and arg and all(hasattr(item, "data") for item in arg)
                        and any(walk(item, inside) for item in arg)):
                    return True
        return False

    try:
        return walk(parser.parse(pattern), False)
    except Exception:  # noqa: BLE001 - a pattern re accepted; if the tree surprises us, be safe and refuse
        return True


def _encoding(value: str) -> Encoding:
    lowered = value.lower()
    if lowered not in ENCODINGS:
        raise _bad("encoding", value, "encoding= is one of " + ", ".join(ENCODINGS))
    return cast(Encoding, lowered)


def _resolve(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise _bad("resolve", value, "resolve= is true or false")
    return lowered == "true"


def parse_read_params(params: Mapping[str, str]) -> ReadPlan:
    """The ``ReadPlan`` for a URL's params (``share`` already removed); ``InvalidFileURLError`` naming a bad one."""
    unknown = [key for key in params if key not in PARAMS]
    if unknown:
        key = unknown[0]
        hint = " (share= is only valid on a share URL)" if key == "share" else ""
        raise InvalidFileURLError(
            f"Unknown read param {shorten(key, 40)!r}{hint}: the read params are "
            + ", ".join(f"{name}=" for name in PARAMS) + "."
        )
    for key, value in params.items():
        if not isinstance(value, str):
            raise InvalidFileURLError(f"The read param {key}= must be text, not {type(value).__name__}.")
    get = params.get
    plan = ReadPlan(
        byte_range=_byte_range(get("bytes", "")) if "bytes" in params else None,
        head=_count("head", params["head"], "rows") if "head" in params else None,
        tail=_count("tail", params["tail"], "rows") if "tail" in params else None,
        rows=_rows(params["rows"]) if "rows" in params else None,
        columns=_columns(params["columns"]) if "columns" in params else None,
        jsonpath=_jsonpath_param(params["jsonpath"]) if "jsonpath" in params else None,
        grep=_grep(params["grep"]) if "grep" in params else None,
        encoding=_encoding(params["encoding"]) if "encoding" in params else None,
        resolve=_resolve(params["resolve"]) if "resolve" in params else False,
    )
    if plan.resolve and plan.encoding in ("zip", "gzip"):
        raise InvalidFileURLError(
            f"The read params resolve=true and encoding={plan.encoding} cannot be combined: resolve=true inlines "
            "the content as text and a zip or gzip is binary; use encoding=base64 or encoding=datauri."
        )
    if plan.jsonpath is not None:
        if plan.columns is not None:
            raise InvalidFileURLError(
                "The read params columns= and jsonpath= cannot be combined: columns= is for CSV/TSV/JSONL files, "
                "jsonpath= for JSON/YAML files."
            )
        ops = plan._record_ops
        if ops and _compile_path(plan.jsonpath).definite:
            raise InvalidFileURLError(
                f"The read param {ops[0]}= cannot follow jsonpath={shorten(plan.jsonpath, 60)!r}: that path selects "
                "one value; to take rows of an array, select its elements with [*] (e.g. jsonpath=$.items[*])."
            )
    return plan


def _effective_kind(plan: ReadPlan, kind: Kind) -> Kind:
    if plan.byte_range is not None and plan.byte_range[0] > 0 and kind in ("csv", "tsv", "jsonl", "json", "yaml"):
        return "text"
    return kind


def check_plan_for(plan: ReadPlan, *, filename: str, mime_type: str | None) -> None:
    """Refuse (``InvalidFileURLError``) a plan that makes no sense for this file's kind, before reading it."""
    real = file_kind(filename, mime_type)
    kind = _effective_kind(plan, real)
    what = f"{shorten(filename, 60)!r} is {_KIND_NAMES[real]}"
    if kind != real:
        what += f", but bytes={plan.byte_range[0] if plan.byte_range else 0}- reads a window of it as plain text"
    if kind == "binary":
        for name in (*plan._record_ops, *(["columns"] if plan.columns else []), *(["jsonpath"] if plan.jsonpath
                                                                                      else [])):
            raise InvalidFileURLError(
                f"The read param {name}= works on text files; {what}: read a part of it with bytes=A-B instead."
            )
    if plan.columns is not None and kind not in ("csv", "tsv", "jsonl"):
        instead = "use jsonpath= instead" if kind in ("json", "yaml") else "use grep= or rows= instead"
        raise InvalidFileURLError(f"The read param columns= works on CSV, TSV and JSON Lines files; {what}: {instead}.")
    if plan.jsonpath is not None and kind not in ("json", "yaml"):
        instead = "use columns= and rows= instead" if kind in ("csv", "tsv", "jsonl") else "use grep= or head="
        raise InvalidFileURLError(f"The read param jsonpath= works on JSON and YAML files; {what}: {instead}.")


# --- applying ---------------------------------------------------------------------------------------------


async def apply_read_plan(
    plan: ReadPlan,
    chunks: AsyncIterator[bytes],
    *,
    filename: str,
    mime_type: str | None,
    document_max_bytes: int,
) -> AsyncIterator[bytes]:
    """Stream ``chunks`` (the file, or its ``bytes=`` range) through ``plan``, in bounded memory.

    The kind check runs at the first iteration; a record-level problem found later (a line past
    ``MAX_RECORD_BYTES`` for grep, a JSONL line that is not an object for columns) ends the stream with
    ``InvalidFileURLError`` after what was already given.
    """
    try:
        check_plan_for(plan, filename=filename, mime_type=mime_type)
        kind = _effective_kind(plan, file_kind(filename, mime_type))
        body = _content(plan, _blocks(chunks), kind, max(int(document_max_bytes), 1))
        if plan.encoding is not None:
            body = _encode(plan.encoding, body, filename, "application/json" if plan.jsonpath else mime_type)
        async for piece in body:
            if piece:
                yield piece
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


async def _blocks(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Chunks of any size as pieces of at most ``BLOCK_BYTES``, so an 8 MiB chunk is not 8 MiB of records."""
    async for chunk in chunks:
        if len(chunk) <= BLOCK_BYTES:
            yield bytes(chunk)
        else:
            view = memoryview(chunk)
            for start in range(0, len(view), BLOCK_BYTES):
                yield bytes(view[start:start + BLOCK_BYTES])


def _content(plan: ReadPlan, blocks: AsyncIterator[bytes], kind: Kind, cap: int) -> AsyncIterator[bytes]:
    if plan.jsonpath is not None:
        return _jsonpath_stream(plan, blocks, kind, cap)
    if kind in ("csv", "tsv") and (plan._record_ops or plan.columns is not None):
        return _csv_stream(plan, blocks, "\t" if kind == "tsv" else ",", cap)
    if plan.columns is not None:
        return _lines_stream(plan, blocks, cap, project=_jsonl_projector(plan.columns))
    if plan.grep is None and plan.tail is None and (plan.rows is not None or plan.head is not None):
        start, stop = _window(plan)
        return _lines_window(blocks, start, stop)
    if plan._record_ops:
        return _lines_stream(plan, blocks, cap, project=None)
    return blocks


def _window(plan: ReadPlan) -> tuple[int, int | None]:
    start, stop = plan.rows if plan.rows is not None else (0, None)
    if plan.head is not None:
        stop = start + plan.head if stop is None else min(stop, start + plan.head)
    return start, stop


def _too_long(plan: ReadPlan, what: str, number: int, limit: int) -> InvalidFileURLError:
    names = ", ".join(f"{name}=" for name in (*plan._record_ops, *(["columns"] if plan.columns else [])))
    return InvalidFileURLError(
        f"The read params {names} work record by record, and {what} {number:,} is longer than {human_size(limit)}: "
        "read that part of the file with bytes=A-B instead."
    )


class _Records:
    """grep, then the rows/head window, then tail: over lists of records (bytes), one block at a time."""

    def __init__(self, plan: ReadPlan, cap: int, grep_text: Callable[[bytes], str] | None = None) -> None:
        self.plan = plan
        self.pattern = _compile_grep(plan.grep) if plan.grep is not None else None
        self.grep_text = grep_text or _line_text
        self.start, self.stop = _window(plan)
        self.tail = plan.tail
        self.cap = cap
        self.seen = 0
        self.done = False
        self.kept: deque[bytes] = deque()
        self.kept_bytes = 0
        self.in_window = 0

    def push(self, records: list[bytes]) -> list[bytes]:
        if self.pattern is not None:
            search, text = self.pattern.search, self.grep_text
            records = [record for record in records if search(text(record))]
        count = len(records)
        low = max(self.start - self.seen, 0)
        high = count if self.stop is None else min(max(self.stop - self.seen, 0), count)
        self.seen += count
        if self.stop is not None and self.seen >= self.stop:
            self.done = True
        selected = records[low:high] if low < high else []
        if self.tail is None:
            return selected
        self.in_window += len(selected)
        if len(selected) > self.tail:
            selected = selected[len(selected) - self.tail:]
        kept = self.kept
        kept.extend(selected)
        self.kept_bytes += sum(map(len, selected))
        while kept and (len(kept) > self.tail or self.kept_bytes > self.cap):
            self.kept_bytes -= len(kept.popleft())
        return []

    def finish(self) -> list[bytes]:
        if self.tail is None:
            return []
        if len(self.kept) < min(self.tail, self.in_window):
            raise InvalidFileURLError(
                f"The read param tail={self.tail} asks for more than a read may hold: the last {self.tail:,} rows are "
                f"larger than {human_size(self.cap)}; ask for fewer rows, or read that part with bytes=A-B."
            )
        return list(self.kept)


def _line_text(record: bytes) -> str:
    if len(record) <= GREP_MAX_CHARS:
        return record.decode("utf-8", "replace").rstrip("\r\n")
    return record[: 4 * GREP_MAX_CHARS].decode("utf-8", "replace")[:GREP_MAX_CHARS].rstrip("\r\n")


async def _lines_window(blocks: AsyncIterator[bytes], start: int, stop: int | None) -> AsyncIterator[bytes]:
    """Lines start..stop-1 by counting newlines: no line is ever held, whatever its length."""
    line = 0
    async for block in blocks:
        begin = 0
        if line < start:
            newlines = block.count(b"\n")
            if newlines < start - line:
                line += newlines
                continue
            begin = _after_newlines(block, start - line, 0)
            line = start
        if stop is None:
            yield block[begin:]
            continue
        remaining = stop - line
        if remaining <= 0:
            return
        newlines = block.count(b"\n", begin)
        if newlines >= remaining:
            yield block[begin:_after_newlines(block, remaining, begin)]
            return
        line += newlines
        yield block[begin:]


def _after_newlines(block: bytes, count: int, begin: int) -> int:
    position = begin
    for _ in range(count):
        position = block.index(b"\n", position) + 1
    return position


async def _lines_stream(
    plan: ReadPlan,
    blocks: AsyncIterator[bytes],
    cap: int,
    *,
    project: Callable[[bytes, int], bytes | None] | None,
) -> AsyncIterator[bytes]:
    records = _Records(plan, cap)
    pending = b""
    number = 0
    limit = MAX_RECORD_BYTES
    final = False
    iterator = blocks.__aiter__()
    while not final and not records.done:
        try:
            block = await iterator.__anext__()
        except StopAsyncIteration:
            block, final = b"", True
        data = pending + block if pending else block
        cut = len(data) if final else data.rfind(b"\n") + 1
        pending = data[cut:]
        if len(pending) > limit:
            raise _too_long(plan, "line", number + data.count(b"\n", 0, cut) + 1, limit)
        lines = list(io.BytesIO(data[:cut])) if cut else []
        if project is not None:
            projected = []
            for index, line in enumerate(lines, number + 1):
                result = project(line, index)
                if result is not None:
                    projected.append(result)
            number += len(lines)
            lines = projected
        else:
            number += len(lines)
        out = records.push(lines)
        if out:
            yield b"".join(out)
    tail = records.finish()
    if tail:
        yield b"".join(tail)


def _jsonl_projector(columns: tuple[str, ...]) -> Callable[[bytes, int], bytes | None]:
    def project(line: bytes, number: int) -> bytes | None:
        if not line.strip():
            return None
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            raise InvalidFileURLError(
                f"The read param columns= needs a JSON object on every line; line {number:,} is not valid JSON."
            ) from None
        if not isinstance(value, dict):
            raise InvalidFileURLError(
                f"The read param columns= needs a JSON object on every line; line {number:,} is "
                f"{_json_type(value)}."
            )
        picked = {name: value[name] for name in columns if name in value}
        return json.dumps(picked, ensure_ascii=False).encode() + b"\n"

    return project


async def _csv_stream(plan: ReadPlan, blocks: AsyncIterator[bytes], delimiter: str, cap: int) -> AsyncIterator[bytes]:
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")  # the file's bytes, exactly, on output
    splitter = CsvRecords(delimiter, MAX_RECORD_BYTES, keep_raw=True)
    records = _Records(plan, cap, grep_text=_line_text)
    header: list[str] | None = None
    indexes: list[int] | None = None
    writer_buffer = io.StringIO()
    writer: Any = None
    final = False
    iterator = blocks.__aiter__()
    while not final and (header is None or not records.done):
        try:
            block = await iterator.__anext__()
        except StopAsyncIteration:
            block, final = b"", True
        try:
            rows, raws = splitter.feed(decoder.decode(block, final), final=final)
        except _Stop as stop:
            raise InvalidFileURLError(
                f"The read params cannot be applied to this file: {stop.message}; read that part with bytes=A-B."
            ) from None
        out: list[bytes] = []
        if header is None and rows:
            header, raw_header = rows[0], raws[0]
            rows, raws = rows[1:], raws[1:]
            if plan.columns is not None:
                indexes = _column_indexes(plan.columns, header)
                terminator = "\r\n" if raw_header.endswith("\r\n") else "\n"
                dialect = csv.excel_tab if delimiter == "\t" else csv.excel
                writer = csv.writer(writer_buffer, dialect, lineterminator=terminator)
                out.append(_csv_line(writer, writer_buffer, [header[i] for i in indexes]))
            else:
                out.append(raw_header.encode("utf-8", "surrogateescape"))
        if indexes is not None:
            texts = [
                _csv_line(writer, writer_buffer, [row[i] if i < len(row) else "" for i in indexes]) for row in rows
            ]
        else:
            texts = [raw.encode("utf-8", "surrogateescape") for raw in raws]
        out += records.push(texts)
        if out:
            yield b"".join(out)
    tail = records.finish()
    if tail:
        yield b"".join(tail)


def _csv_line(writer: Any, buffer: io.StringIO, fields: list[str]) -> bytes:
    buffer.seek(0)
    buffer.truncate()
    writer.writerow(fields)
    return buffer.getvalue().encode("utf-8", "surrogateescape")


def _column_indexes(columns: tuple[str, ...], header: list[str]) -> list[int]:
    names = [name.lstrip("\ufeff") for name in header]
    stripped = [name.strip() for name in names]
    indexes = []
    for column in columns:
        if column in names:
            indexes.append(names.index(column))
        elif column in stripped:
            indexes.append(stripped.index(column))
        else:
            shown = ", ".join(shorten(name, 30) for name in names[:20]) + (", …" if len(names) > 20 else "")
            raise InvalidFileURLError(
                f"The read param columns= names {shorten(column, 60)!r}, which is not a column of this file "
                f"(its columns: {shown})."
            )
    return indexes


# --- jsonpath ---------------------------------------------------------------------------------------------


class _Segment(NamedTuple):
    descend: bool
    kind: Literal["name", "index", "wild"]
    name: str = ""
    number: int = 0

    def text(self) -> str:
        lead = ".." if self.descend else ""
        if self.kind == "wild":
            return f"{lead or '.'}*"
        if self.kind == "index":
            return f"{lead}[{self.number}]"
        return f"{lead or '.'}{self.name}" if _PLAIN_NAME.fullmatch(self.name) else f"{lead}[{json.dumps(self.name)}]"


@dataclass(frozen=True)
class _Path:
    segments: tuple[_Segment, ...]
    definite: bool = field(default=True)


_PLAIN_NAME = re.compile(r"[^.\[\]'\"*\s]+")
_INDEX = re.compile(r"-?[0-9]{1,10}")


def _jsonpath_param(value: str) -> str:
    _compile_path(value)
    return value


@lru_cache(maxsize=256)
def _compile_path(path: str) -> _Path:
    want = ("jsonpath= takes $ followed by .name, ['name'], [N], [*], .* or ..name (recursive), e.g. "
            "jsonpath=$.items[0].name")
    if len(path) > MAX_JSONPATH_CHARS:
        raise _bad("jsonpath", path, f"{want}; at most {MAX_JSONPATH_CHARS:,} characters")
    text = path.strip()
    if not text.startswith("$"):
        raise _bad("jsonpath", path, f"{want}; it must start with $")
    segments: list[_Segment] = []
    position = 1
    while position < len(text):
        descend = text.startswith("..", position)
        if descend:
            position += 2
        elif text[position] == ".":
            position += 1
        elif text[position] != "[":
            raise _bad("jsonpath", path, f"{want}; unexpected {text[position]!r} at position {position}")
        if position >= len(text):
            raise _bad("jsonpath", path, f"{want}; it ends after a dot")
        char = text[position]
        if char == "*" and (descend or text[position - 1] == "."):
            segments.append(_Segment(descend, "wild"))
            position += 1
        elif char == "[":
            segment, position = _bracket(text, position, descend, path, want)
            segments.append(segment)
        elif text[position - 1] == ".":
            match = _PLAIN_NAME.match(text, position)
            if match is None:
                raise _bad("jsonpath", path, f"{want}; expected a name at position {position}")
            segments.append(_Segment(descend, "name", match.group()))
            position = match.end()
        else:
            raise _bad("jsonpath", path, f"{want}; unexpected {char!r} at position {position}")
    definite = not any(segment.descend or segment.kind == "wild" for segment in segments)
    return _Path(tuple(segments), definite)


def _bracket(text: str, position: int, descend: bool, path: str, want: str) -> tuple[_Segment, int]:
    inner = position + 1
    if inner < len(text) and text[inner] in "'\"":
        quote, chars, index = text[inner], [], inner + 1
        while index < len(text):
            char = text[index]
            if char == "\\" and index + 1 < len(text) and text[index + 1] in (quote, "\\"):
                chars.append(text[index + 1])
                index += 2
                continue
            if char == quote:
                break
            chars.append(char)
            index += 1
        else:
            raise _bad("jsonpath", path, f"{want}; a quoted name is not closed")
        if not text.startswith("]", index + 1):
            raise _bad("jsonpath", path, f"{want}; expected ] after the quoted name at position {index + 1}")
        return _Segment(descend, "name", "".join(chars)), index + 2
    close = text.find("]", inner)
    if close < 0:
        raise _bad("jsonpath", path, f"{want}; a [ is not closed")
    content = text[inner:close]
    if content == "*":
        return _Segment(descend, "wild"), close + 1
    if _INDEX.fullmatch(content):
        return _Segment(descend, "index", number=int(content)), close + 1
    raise _bad("jsonpath", path, f"{want}; [{shorten(content, 20)}] is not supported (no filters, slices or unions)")


class _Budget:
    def __init__(self, limit: int, what: str) -> None:
        self.left = limit
        self.what = what

    def spend(self, amount: int = 1) -> None:
        self.left -= amount
        if self.left < 0:
            raise InvalidFileURLError(self.what)


def _children(value: object) -> Iterable[object]:
    if isinstance(value, dict):
        return value.values()
    if isinstance(value, list | tuple):
        return value
    return ()


def _descendants(value: object, budget: _Budget) -> Iterable[object]:
    stack = [value]
    while stack:
        node = stack.pop()
        budget.spend()
        yield node
        children = _children(node)
        if children:
            stack.extend(reversed(list(children)))


def _step(node: object, segment: _Segment, out: list[object]) -> None:
    if segment.kind == "name":
        if isinstance(node, dict) and segment.name in node:
            out.append(node[segment.name])
    elif segment.kind == "index":
        if isinstance(node, list) and -len(node) <= segment.number < len(node):
            out.append(node[segment.number])
    else:
        out.extend(_children(node))


def _evaluate(path: _Path, document: object, budget: _Budget, shown: str) -> list[object]:
    nodes: list[object] = [document]
    for number, segment in enumerate(path.segments):
        found: list[object] = []
        for node in nodes:
            for candidate in _descendants(node, budget) if segment.descend else (node,):
                budget.spend()
                _step(candidate, segment, found)
        if path.definite and not found:
            where = "$" + "".join(seg.text() for seg in path.segments[:number])
            raise InvalidFileURLError(
                f"The read param jsonpath={shown} matches nothing: {where} is {_describe(nodes[0])}, which has no "
                f"{segment.text().lstrip('.')}."
            )
        nodes = found
    return nodes


def _json_type(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else "a value"


def _describe(value: object) -> str:
    if isinstance(value, dict):
        keys = [shorten(str(key), 30) for key in list(value)[:10]]
        more = ", …" if len(value) > 10 else ""
        return f"an object with the keys {', '.join(keys)}{more}" if keys else "an empty object"
    if isinstance(value, list | tuple):
        return f"an array of {len(value):,} element{'' if len(value) == 1 else 's'}"
    return _json_type(value)


def _measure(values: Iterable[object], budget: _Budget) -> None:
    """Spend ``budget`` on the JSON size of ``values`` (roughly, in characters) without building it."""
    stack = list(values)
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            budget.spend(len(node) + 2)
        elif isinstance(node, dict):
            budget.spend(2 + 4 * len(node) + sum(len(str(key)) for key in node))
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            budget.spend(2 + 2 * len(node))
            stack.extend(node)
        elif isinstance(node, bytes):
            budget.spend(len(node) * 4 // 3 + 4)
        else:
            budget.spend(24)


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, set | frozenset):
        return list(value)
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    return str(value)


def _plain_keys(value: object) -> object:
    if isinstance(value, dict):
        return {key if isinstance(key, str) else str(_json_default(key)): _plain_keys(item)
                for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_keys(item) for item in value]
    return value


def _dumps(value: object) -> str:
    try:
        try:
            return json.dumps(value, ensure_ascii=False, default=_json_default)
        except TypeError:  # YAML keys that are dates, bytes...
            return json.dumps(_plain_keys(value), ensure_ascii=False, default=_json_default)
    except (RecursionError, ValueError):
        raise InvalidFileURLError(
            "The read param jsonpath= selected a value nested too deeply to write as JSON; select a deeper part."
        ) from None


async def _read_document(blocks: AsyncIterator[bytes], cap: int) -> bytes:
    buffer = bytearray()
    async for block in blocks:
        if len(buffer) + len(block) > cap:
            raise InvalidFileURLError(
                f"The read param jsonpath= needs the whole document in memory, and this one is larger than "
                f"{human_size(cap)}: it is too large for jsonpath; read parts of it with bytes=A-B or head=N instead."
            )
        buffer += block
    return bytes(buffer)


def _load(data: bytes, kind: Kind) -> object:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidFileURLError(
            f"The read param jsonpath= cannot read this file: it is not valid UTF-8 (first invalid byte at offset "
            f"{exc.start:,})."
        ) from None
    try:
        if kind == "yaml":
            loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            documents = list(yaml.load_all(text, Loader=loader))
            return documents[0] if len(documents) == 1 else documents
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problem = f"it is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = f"it is not valid YAML ({getattr(exc, 'problem', None) or 'unparsable'}{where})"
    except RecursionError:
        problem = "it is nested too deeply"
    raise InvalidFileURLError(f"The read param jsonpath= cannot read this file: {problem}.")


async def _jsonpath_stream(plan: ReadPlan, blocks: AsyncIterator[bytes], kind: Kind, cap: int) -> AsyncIterator[bytes]:
    assert plan.jsonpath is not None
    path = _compile_path(plan.jsonpath)
    shown = repr(shorten(plan.jsonpath, 60))
    document = _load(await _read_document(blocks, cap), kind)
    visits = _Budget(MAX_VISITS, f"The read param jsonpath={shown} visits more than {MAX_VISITS:,} values of this "
                                 "document; use a more specific path.")
    matches = _evaluate(path, document, visits, shown)
    output_cap = 2 * cap + 2**20
    size = _Budget(output_cap, f"The read param jsonpath={shown} selects more than {human_size(output_cap)} of JSON; "
                               "use a more specific path, or add head=N.")
    if path.definite:
        _measure(matches, size)
        text = _dumps(matches[0]) + "\n"
    else:
        if plan.grep is not None:
            per_match = _Budget(output_cap, size.what)
            encoded: list[bytes] = []
            for match in matches:
                _measure([match], per_match)
                encoded.append(_dumps(match).encode())
            records = _Records(plan, output_cap, grep_text=_line_text)
            kept = records.push(encoded) + records.finish()
            size.spend(sum(map(len, kept)))
            pieces = [piece.decode() for piece in kept]
        else:
            start, stop = _window(plan)
            selected = matches[start:stop]
            if plan.tail is not None:
                selected = selected[len(selected) - plan.tail:] if plan.tail else []
            _measure(selected, size)
            pieces = [_dumps(match) for match in selected]
        text = "[\n" + ",\n".join(pieces) + "\n]\n" if pieces else "[]\n"
    data = text.encode("utf-8", "surrogatepass")
    del text, document, matches
    for start in range(0, len(data), BLOCK_BYTES):
        yield data[start:start + BLOCK_BYTES]


# --- encodings --------------------------------------------------------------------------------------------


def _encode(encoding: Encoding, body: AsyncIterator[bytes], filename: str, mime_type: str | None
            ) -> AsyncIterator[bytes]:
    if encoding == "gzip":
        return _gzip(body)
    if encoding == "zip":
        return _zip(body, zip_member_name(filename))
    if encoding == "base64":
        return _base64(body)
    return _datauri(body, datauri_mime(filename, mime_type))


async def _gzip(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    async for piece in body:
        out = compressor.compress(piece)
        if out:
            yield out
    yield compressor.flush()


class _Sink(io.RawIOBase):
    """Where ``zipfile`` writes; drained after each write. Not seekable, so zipfile uses data descriptors."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        piece = bytes(data)
        self.parts.append(piece)
        return len(piece)

    def drain(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def zip_member_name(filename: str) -> str:
    """The zip member for ``filename``: no directory part, nothing an unzip could treat as a path."""
    name = re.sub(r"[/\\:]", "_", filename)
    return "_" if name in ("", ".", "..") else name


async def _zip(body: AsyncIterator[bytes], member: str) -> AsyncIterator[bytes]:
    sink = _Sink()
    archive = zipfile.ZipFile(cast(Any, sink), "w", compression=zipfile.ZIP_DEFLATED)
    info = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w", force_zip64=True) as entry:
        async for piece in body:
            entry.write(piece)
            out = sink.drain()
            if out:
                yield out
    archive.close()
    yield sink.drain()


async def _base64(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    carry = b""
    async for piece in body:
        data = carry + piece if carry else piece
        cut = len(data) - len(data) % 3
        carry = data[cut:]
        if cut:
            yield base64.b64encode(data[:cut])
    if carry:
        yield base64.b64encode(carry)


def datauri_mime(filename: str, mime_type: str | None) -> str:
    """``type/subtype`` for a data URI: the file's own if well formed, else guessed, else octet-stream."""
    candidate = (mime_type or "").split(";")[0].strip()
    if not _MIME.fullmatch(candidate):
        candidate = mimetypes.guess_type(filename, strict=False)[0] or ""
    return candidate.lower() if _MIME.fullmatch(candidate) else "application/octet-stream"


async def _datauri(body: AsyncIterator[bytes], mime: str) -> AsyncIterator[bytes]:
    yield f"data:{mime};base64,".encode("ascii")
    async for piece in _base64(body):
        yield piece
