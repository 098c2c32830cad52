"""The ``flowmas`` command. Results go to stdout, logs and errors to stderr.

No input ends in a traceback: every failure goes through ``flowmas.errors.explain`` (one sentence, one
exit code) in ``FlowmasGroup.invoke``; ``-v`` adds the traceback of an unexpected one to the debug log.

Exit codes: 0 success; 1 a download or verification failed; 2 bad usage or configuration; 3 a prompt
was declined (nothing changed); 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer import _click as click  # typer vendors click: its Context and exceptions are these
from typer.core import TyperGroup

import flowmas
from flowmas.assets.manager import AssetManager, DownloadResult
from flowmas.errors import EXIT_DECLINED, EXIT_FAILED, EXIT_USAGE, explain
from flowmas.settings import FlowmasSettings, load_project
from flowmas.text import human_size

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
