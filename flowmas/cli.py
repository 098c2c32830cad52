"""The ``flowmas`` command. Results go to stdout, logs and errors to stderr.

No input ends in a traceback: every failure goes through ``flowmas.errors.explain`` (one sentence, one
exit code) in ``FlowmasGroup.invoke``; ``-v`` adds the traceback of an unexpected one to the debug log.

Exit codes: 0 success; 1 a download, verification or file operation failed (a file that is not there, a
limit passed, the store failing); 2 bad usage or configuration (a malformed ``amfs://`` URL, a path that is no
file); 3 a prompt was declined (nothing changed); 130 interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer import _click as click  # typer vendors click: its Context and exceptions are these
from typer.core import TyperGroup

import flowmas
from flowmas.assets.manager import AssetManager, DownloadResult
from flowmas.errors import EXIT_DECLINED, EXIT_FAILED, EXIT_USAGE, InvalidFileURLError, explain
from flowmas.files import FileService
from flowmas.settings import FlowmasSettings, load_project
from flowmas.text import human_size, one_line, shorten

log = logging.getLogger("flowmas.cli")
VERBOSE = ("-v", "--verbose")
HELP = {"help_option_names": ["-h", "--help"]}


class FlowmasGroup(TyperGroup):
    """The command group: ``-v`` anywhere on the line, and every failure said as one sentence."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        head, tail = (args[: args.index("--")], args[args.index("--"):]) if "--" in args else (args, [])
        verbose = [arg for arg in head if arg in VERBOSE]
        head = [arg for arg in head if arg not in VERBOSE]
        return super().parse_args(ctx, verbose[:1] + head + tail)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, click.exceptions.ClickException, SystemExit):
            raise
        except BaseException as exc:  # the one place every failure becomes a sentence
            explanation = explain(exc)
            log.debug("%s", explanation.message, exc_info=True)
            say_error(explanation.message)
            raise typer.Exit(explanation.exit_code) from None


app = typer.Typer(cls=FlowmasGroup, help="flowmas: a Prefect 3 platform for multi-agent AI systems.",
                  no_args_is_help=True, pretty_exceptions_enable=False, context_settings=HELP)
assets_app = typer.Typer(help="Declared models, indexes and templates: download, verify, clear.",
                         no_args_is_help=True, context_settings=HELP)
app.add_typer(assets_app, name="assets")
files_app = typer.Typer(help="Session files with amfs:// URLs: upload, download, inspect, share, delete, expire.",
                        no_args_is_help=True, context_settings=HELP)
app.add_typer(files_app, name="files")
graph_app = typer.Typer(help="Agent task graphs: show a plan, run one here with live progress, resume a snapshot.",
                        no_args_is_help=True, context_settings=HELP)
app.add_typer(graph_app, name="graph")
T = TypeVar("T")

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

ProjectOption = Annotated[
    Path | None,
    typer.Option("--project", "-p", help="Project file (default: FLOWMAS_PROJECT, or flowmas.yaml found upwards)."),
]


def say(text: str) -> None:
    out.print(escape(text))


def say_error(text: str, label: str = "error") -> None:
    err.print(f"[red]{label}:[/red] {escape(text)}")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (test runners swap it)."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _: object) -> None:
        pass


_log_handler = _StderrHandler()
_log_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))


def _print_version(value: bool) -> None:
    if value:
        say(f"flowmas {flowmas.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option(*VERBOSE, help="Debug logging (tracebacks of unexpected errors).")] = False,
    version: Annotated[bool | None, typer.Option("--version", callback=_print_version, is_eager=True,
                                                 help="Print the version and exit.")] = None,
) -> None:
    logger = logging.getLogger("flowmas")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if _log_handler not in logger.handlers:
        logger.addHandler(_log_handler)


def _manager(project: Path | None) -> AssetManager:
    settings = FlowmasSettings()
    return AssetManager(load_project(project, settings=settings), settings=settings)


@assets_app.command("list")
def list_assets(
    project: ProjectOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array on stdout.")] = False,
) -> None:
    """Declared assets and what the cache holds (never re-hashes)."""
    with _manager(project) as manager:
        rows = manager.list_assets()
    if as_json:
        out.print_json(json.dumps([row.model_dump(mode="json") for row in rows]))
        return
    table = Table(title="flowmas assets")
    for column in ("Name", "Version", "Type", "Source", "Checksum", "Status", "Path"):
        table.add_column(column, overflow="fold")  # never cut a path or a URL: fold it
    for row in rows:
        checksum = f"{row.checksum[:15]}…" if row.checksum else "-"
        table.add_row(*(escape(cell) for cell in (row.name, row.version, row.asset_type, row.source, checksum,
                                                  row.status, str(row.path or "-"))))
    out.print(table)


@assets_app.command("download")
def download(
    names: Annotated[list[str] | None, typer.Argument(help="Assets to fetch (default: all).")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Download again even if cached.")] = False,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Downloads at once.")] = 4,
    project: ProjectOption = None,
) -> None:
    """Fetch assets into the cache (one download per asset, however many processes ask).

    Every asset is reported, fetched or failed; one failure never hides the others' results.
    """
    with _manager(project) as manager:
        selected = [asset.name for asset in manager.select(names or None)]

        def fetch(name: str) -> DownloadResult | Exception:
            try:
                return manager.download(name, force=force)
            except Exception as exc:  # noqa: BLE001 - reported per asset below, as a sentence
                return exc

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(fetch, selected))
    codes = []
    for name, result in zip(selected, results, strict=True):
        if isinstance(result, Exception):
            explanation = explain(result)
            codes.append(explanation.exit_code)
            say_error(explanation.message, label=f"failed {name}")
        elif result.fetched:
            say(f"{name}: {result.path} (fetched {human_size(result.size)} in {result.seconds:.1f} s)")
        else:
            say(f"{name}: {result.path} (cached)")
    if codes:
        raise typer.Exit(max(codes))


@assets_app.command("verify")
def verify(
    names: Annotated[list[str] | None, typer.Argument(help="Assets to verify (default: all).")] = None,
    project: ProjectOption = None,
) -> None:
    """Re-hash cached assets against their records and declared checksums."""
    with _manager(project) as manager:
        results = [manager.verify(asset.name) for asset in manager.select(names or None)]
    for result in results:
        detail = f": {result.detail}" if result.detail else ""
        say(f"{result.name}: {result.status}{detail}")
    if any(result.status in ("failed", "stale") for result in results):
        raise typer.Exit(EXIT_FAILED)
    if names and any(result.status == "not cached" for result in results):
        raise typer.Exit(EXIT_FAILED)


@assets_app.command("clear-cache")
def clear_cache(
    asset: Annotated[str | None, typer.Option("--asset", help="Remove this asset's cache entry.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Remove every cache entry.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    project: ProjectOption = None,
) -> None:
    """Remove cached assets and their leftovers, taking each entry's lock (a running download finishes first)."""
    if (asset is None) == (not all_):
        say_error("give exactly one of --asset NAME or --all")
        raise typer.Exit(EXIT_USAGE)
    with _manager(project) as manager:
        if asset:
            manager.asset(asset)  # an unknown name is refused before asking anything
        what = f"asset {asset!r}" if asset else f"every asset in {manager.cache.root}"
        if not yes:
            if not sys.stdin.isatty():
                say_error("not a terminal, cannot ask for confirmation; pass --yes")
                raise typer.Exit(EXIT_USAGE)
            if not typer.confirm(f"Remove {what} from the cache?", default=False):
                say("Nothing removed.")
                raise typer.Exit(EXIT_DECLINED)
        if asset:
            say(f"{asset}: {'removed' if manager.clear(asset) else 'not cached (nothing to remove)'}")
        else:
            say(f"removed {manager.clear_all()} cache entries from {manager.cache.root}")


# --- files --------------------------------------------------------------------------------------------

SessionOption = Annotated[str, typer.Option("--session", "-s", help="The session the files belong to.")]
UrlArgument = Annotated[str, typer.Argument(help="The file's amfs:// URL (its params apply: ?head=10, ...).",
                                            show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="JSON on stdout.")]
FILE_FIELDS = ("url", "mime_type", "size", "sha256", "upload_timestamp", "expiration_timestamp", "data_source",
               "shape", "schema_error")


def _file_service(project: Path | None) -> FileService:
    """The service of ``services.file_service`` (the project's, if there is one) with FLOWMAS_FILES_* on top."""
    settings = FlowmasSettings()
    loaded = load_project(project, settings=settings) if project is not None else None  # else: found upwards
    return FileService.from_config(project=loaded, settings=settings)


def _with_files(project: Path | None, operation: Callable[[FileService], Awaitable[T]]) -> T:
    """Run ``operation`` on a fresh service and close it; a malformed URL is a usage error (exit 2)."""

    async def run() -> T:
        service = _file_service(project)
        try:
            return await operation(service)
        finally:
            await service.close()

    try:
        return asyncio.run(run())
    except InvalidFileURLError as exc:
        say_error(explain(exc).message)
        raise typer.Exit(EXIT_USAGE) from None


def _shown(name: object) -> str:
    """A file name as a terminal may show it: one line, control characters escaped, at most 120 characters."""
    text = one_line(str(name))
    return shorten("".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text), 120)


def _when(timestamp: object) -> str:
    if not isinstance(timestamp, int | float):
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _file_name(metadata: dict[str, Any]) -> str:
    return str(metadata.get("filename", metadata.get("name", "")))


def _file_size(metadata: dict[str, Any]) -> int:
    return int(metadata.get("size", metadata.get("file_size", 0)) or 0)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")


@files_app.command("upload")
def files_upload(
    path: Annotated[Path, typer.Argument(help="The file to upload ('-': standard input, with --name).",
                                         show_default=False)],
    session: SessionOption,
    ttl: Annotated[float | None, typer.Option(min=0.001, help="Seconds to keep it (default and most: the "
                                                              "service's max_time_to_live).")] = None,
    name: Annotated[str | None, typer.Option(help="The file name to store (default: the path's).")] = None,
    data_source: Annotated[str | None, typer.Option(help="Where the data came from (kept in the metadata).")] = None,
    as_json: JsonOption = False,
    project: ProjectOption = None,
) -> None:
    """Store a file in a session; prints its amfs:// URL (--json: its metadata)."""
    options: dict[str, Any] = {}
    if ttl is not None:
        options["ttl"] = ttl
    if data_source is not None:
        options["data_source"] = data_source
    if str(path) == "-":
        if not name:
            say_error("reading standard input needs --name (the file name to store)")
            raise typer.Exit(EXIT_USAGE)
        stdin = sys.stdin.buffer
        chunks = iter(lambda: stdin.read(1 << 20), b"")
        metadata = _with_files(project, lambda files: files.upload_from_stream(chunks, name, session, **options))
    else:
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "is not a regular file" if path.exists() else "does not exist"
            say_error(f"{_shown(path)} {what}: give the path of a file to upload.")
            raise typer.Exit(EXIT_USAGE)
        if name:
            options["file_name"] = name
        metadata = _with_files(project, lambda files: files.upload_from_file(path, session, **options))
    if as_json:
        _print_json(metadata)
    else:
        sys.stdout.write(f"{metadata['url']}\n")


@files_app.command("download")
def files_download(
    url: UrlArgument,
    session: SessionOption,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write it here (default: stdout).")] = None,
    project: ProjectOption = None,
) -> None:
    """A file's bytes (its URL's params applied), to stdout or -o PATH."""
    if output is not None:
        written = _with_files(project, lambda files: files.download_to_file(url, output, session))
        say(f"{written} ({human_size(Path(written).stat().st_size)})")
        return
    stdout = sys.stdout.buffer

    async def stream(files: FileService) -> None:
        async for chunk in files.open_stream(url, session):
            stdout.write(chunk)
        stdout.flush()

    _with_files(project, stream)


@files_app.command("info")
def files_info(url: UrlArgument, session: SessionOption, as_json: JsonOption = False,
               project: ProjectOption = None) -> None:
    """A file's metadata: name, size, MIME type, sha256, expiry, inferred schema and shape."""
    metadata = _with_files(project, lambda files: files.get_metadata(url, session))
    if as_json:
        _print_json(metadata)
        return
    say(f"name: {_shown(_file_name(metadata))}")
    for key in FILE_FIELDS:
        value = metadata.get(key, metadata.get("file_size") if key == "size" else None)
        if value is None:
            continue
        if key == "size":
            value = f"{human_size(_file_size(metadata))} ({_file_size(metadata)} bytes)"
        elif key.endswith("_timestamp"):
            value = _when(value)
        say(f"{key}: {_shown(value)}")
    schema = metadata.get("schema-yaml", metadata.get("schema_yaml"))
    if schema:
        say("schema-yaml:")
        for line in str(schema).splitlines():
            say(f"  {line}")


@files_app.command("ls")
def files_ls(session: SessionOption, as_json: JsonOption = False, project: ProjectOption = None) -> None:
    """The files of a session."""
    listed = _with_files(project, lambda files: files.list_files(session))
    if as_json:
        _print_json(listed)
        return
    if not listed:
        say("No files in this session.")
        return
    table = Table(title="session files")
    for column in ("Name", "Size", "Type", "Expires (UTC)", "URL"):
        table.add_column(column, overflow="fold")
    for metadata in listed:
        table.add_row(*(escape(cell) for cell in (
            _shown(_file_name(metadata)), human_size(_file_size(metadata)), str(metadata.get("mime_type") or "-"),
            _when(metadata.get("expiration_timestamp")), str(metadata.get("url", "")))))
    out.print(table)


@files_app.command("rm")
def files_rm(url: UrlArgument, session: SessionOption, project: ProjectOption = None) -> None:
    """Delete a file of a session now."""
    if not _with_files(project, lambda files: files.delete(url, session)):
        say_error("No such file in this session (it may have expired or been deleted).")
        raise typer.Exit(EXIT_FAILED)
    say(f"deleted {_shown(url)}")


@files_app.command("share")
def files_share(
    url: UrlArgument,
    session: SessionOption,
    ttl: Annotated[float, typer.Option(min=0.001, help="Seconds the share URL stays valid (at most the file's "
                                                       "own life).")],
    project: ProjectOption = None,
) -> None:
    """A share URL of a file that any session may read for --ttl seconds."""
    sys.stdout.write(_with_files(project, lambda files: files.share(url, session, ttl)) + "\n")


@files_app.command("expire")
def files_expire(
    limit: Annotated[int | None, typer.Option(min=1, help="Delete at most this many files.")] = None,
    project: ProjectOption = None,
) -> None:
    """One expiry sweep now: delete every file whose time to live has passed (the expire-files flow's work)."""
    report = _with_files(project, lambda files: files.expire(limit=limit))
    say(f"expire: {report}")
    for problem in report.problems:
        say_error(problem, label="problem")
    for error in report.errors:
        say_error(error)
    if report.errors:
        raise typer.Exit(EXIT_FAILED)


# --- graphs -------------------------------------------------------------------------------------------

GraphArgument = Annotated[str, typer.Argument(help="The graph: MODULE:ATTR (an Agent, or a function returning one).",
                                              show_default=False)]
GRAPH_EXIT = {"complete": 0, "partial_failure": EXIT_FAILED, "failed": EXIT_FAILED}
"""A run's status as the exit code: complete 0; partial_failure and failed 1 (some node failed)."""


@graph_app.command("plan")
def graph_plan(graph: GraphArgument) -> None:
    """Validate a graph and print its plan: levels, each node's dependencies, jumps, limits and tracking."""
    from flowmas.graph.loading import describe_plan, load_graph

    say(describe_plan(load_graph(graph), graph))


def _progress(node: str, visit: int, result: Any, seconds: float) -> None:
    status = result.get("status") if isinstance(result, dict) else type(result).__name__
    from flowmas.graph.runs import summarise

    mark = "ok" if status == "success" else str(status)
    err.print(escape(f"  {node}#{visit} {mark} ({seconds:.2f} s) {summarise(result, 100)}"))


def _run_graph(graph: str, agent: Any, task: Any, cache_url: str | None, *, snapshot: str | None = None,
               as_json: bool = False) -> None:
    from flowmas.cache import EmbeddedCache, cache_from_url
    from flowmas.graph.loading import default_cache
    from flowmas.graph.runs import run_graph

    async def run() -> Any:
        cache = cache_from_url(cache_url) if cache_url else default_cache()
        try:
            return await run_graph(agent, task, cache=cache, graph_name=graph, on_node=_progress,
                                   snapshot_path=snapshot, resume=snapshot is not None)
        finally:
            if not isinstance(cache, EmbeddedCache):
                await cache.close()

    outcome = asyncio.run(run())
    if as_json:
        _print_json(outcome.output)
    else:
        for row in outcome.rows:
            say(f"{row['node']}: {row['status']} (visits {row['visits']}) {row['result']}".rstrip())
        resumed = f", resumed from {outcome.resumed_from}" if outcome.resumed_from else ""
        say(f"{outcome.status} in {outcome.seconds:.2f} s (task {outcome.task_id}{resumed})")
    raise typer.Exit(GRAPH_EXIT.get(outcome.status, EXIT_FAILED))


@graph_app.command("run")
def graph_run(
    graph: GraphArgument,
    task: Annotated[str, typer.Option("--task", "-t", help='The task as JSON: {"type": ..., "objective": ..., '
                                                           '"params": {...}}; "-" reads it from stdin.')],
    cache: Annotated[str | None, typer.Option("--cache", help="Cache URL: redis://…, rediss://…, unix://…, "
                                                              "memory:// (default: FLOWMAS_CACHE_URL, else "
                                                              "in memory).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Run a graph here; a progress line per node visit on stderr, the nodes' outcome on stdout.

    Exit code: 0 complete, 1 a node failed (partial_failure or failed), 2 a bad graph path, task or cache URL.
    """
    from flowmas.graph.loading import load_graph, parse_task

    agent = load_graph(graph)
    parsed = parse_task(sys.stdin.read() if task == "-" else task)
    _run_graph(graph, agent, parsed, cache, as_json=as_json)


@graph_app.command("resume")
def graph_resume(
    snapshot: Annotated[Path, typer.Argument(help="A snapshot file, or a task's snapshot directory (its newest).",
                                             show_default=False)],
    graph: Annotated[str | None, typer.Option("--graph", help="MODULE:ATTR (default: the one recorded beside "
                                                              "the snapshots).")] = None,
    cache: Annotated[str | None, typer.Option("--cache", help="Cache URL (default: FLOWMAS_CACHE_URL, else in "
                                                              "memory); the snapshot restores the namespace.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Continue a run from a snapshot: completed nodes do not run again; exit code as for run."""
    from flowmas.graph.loading import load_graph
    from flowmas.graph.runs import graph_of_snapshot, newest_snapshot
    from flowmas.graph.snapshots import read_snapshot

    if not snapshot.exists():
        say_error(f"{_shown(snapshot)} does not exist: give a snapshot file or a task's snapshot directory.")
        raise typer.Exit(EXIT_USAGE)
    name = graph or graph_of_snapshot(snapshot)
    if name is None:
        say_error(f"No graph is recorded beside {_shown(snapshot)}: name it with --graph MODULE:ATTR.")
        raise typer.Exit(EXIT_USAGE)
    agent = load_graph(name)
    task = read_snapshot(snapshot if snapshot.is_file() else newest_snapshot(snapshot)).task
    _run_graph(name, agent, task, cache, snapshot=str(snapshot), as_json=as_json)


@app.command("up")
def up(
    project: ProjectOption = None,
    prefect_yaml: Annotated[Path | None, typer.Option(help="Deployments to serve (default: the repo's).")] = None,
    host: Annotated[str, typer.Option(help="Address of the local Prefect server.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(min=0, max=65535,
                                             help="Its port (default 4200 if free, else any; 0: any).")] = None,
    api_host: Annotated[str | None, typer.Option(
        help="Address of the OPACA container API (default 127.0.0.1; 0.0.0.0 when a platform started it).")] = None,
    api_port: Annotated[int, typer.Option(min=0, max=65535,
                                          help="Port of the OPACA container API (0: any free port).")] = 8082,
    limit: Annotated[int | None, typer.Option(min=1, help="Most flow runs at once.")] = None,
    server_timeout: Annotated[float, typer.Option(min=1, max=3600, help="Seconds to wait for the server.")] = 120.0,
) -> None:
    """Run flowmas: a local Prefect server (unless PREFECT_API_URL is set) serving every deployment, and the
    OPACA agent container."""
    from up import run_up

    # Flow runs execute in this process too (the container's deployment actions): their flowmas records would
    # print twice, through this CLI's handler and Prefect's console handler on the root logger.
    logging.getLogger("flowmas").propagate = False
    if os.environ.get("PREFECT_API_URL") and (port is not None or host != "127.0.0.1"):
        log.warning("PREFECT_API_URL is set, so no local server is started: --host and --port are ignored")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C during start-up: whatever had started is stopped
        run_up(project_file=project, prefect_yaml=prefect_yaml, host=host, port=port, limit=limit,
               server_timeout=server_timeout, api_host=api_host, api_port=api_port)


if __name__ == "__main__":
    app()
