"""The ``flowmas`` command. Results go to stdout, logs to stderr.

Exit codes: 0 success; 1 a download or verification failed; 2 bad usage or configuration.
"""

from __future__ import annotations

import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flowmas.assets.manager import AssetManager, DownloadResult
from flowmas.errors import ConfigurationError, FlowmasError
from flowmas.settings import FlowmasSettings, load_project

app = typer.Typer(help="flowmas: a Prefect 3 platform for multi-agent AI systems.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
assets_app = typer.Typer(help="Declared models, indexes and templates: download, verify, clear.",
                         no_args_is_help=True)
app.add_typer(assets_app, name="assets")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ProjectOption = Annotated[
    Path | None,
    typer.Option("--project", "-p", help="Project file (default: FLOWMAS_PROJECT, or flowmas.yaml found upwards)."),
]
MiB = 2**20


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (test runners swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _: object) -> None:
        pass


_log_handler = _StderrHandler()
_log_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logger = logging.getLogger("flowmas")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if _log_handler not in logger.handlers:
        logger.addHandler(_log_handler)


def _manager(project: Path | None) -> AssetManager:
    try:
        settings = FlowmasSettings()
        return AssetManager(load_project(project, settings=settings), settings=settings)
    except ConfigurationError as exc:
        _fail(exc, 2)


def _fail(exc: BaseException, code: int) -> typer.Exit:  # type: ignore[return]
    err.print(f"[red]error:[/red] {exc}", highlight=False, markup=True)
    raise typer.Exit(code)


def _names(manager: AssetManager, names: list[str] | None) -> list[str]:
    try:
        return [asset.name for asset in manager.select(names or None)]
    except ConfigurationError as exc:
        _fail(exc, 2)


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
    table = Table("Name", "Version", "Type", "Source", "Checksum", "Status", "Path", title="flowmas assets")
    for row in rows:
        checksum = f"{row.checksum[:15]}…" if row.checksum else "-"
        table.add_row(row.name, row.version, row.asset_type, row.source, checksum, row.status,
                      str(row.path or "-"))
    out.print(table)


@assets_app.command("download")
def download(
    names: Annotated[list[str] | None, typer.Argument(help="Assets to fetch (default: all).")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Download again even if cached.")] = False,
    concurrency: Annotated[int, typer.Option(min=1, help="Downloads at once.")] = 4,
    project: ProjectOption = None,
) -> None:
    """Fetch assets into the cache (one download per asset, however many processes ask)."""
    with _manager(project) as manager:
        selected = _names(manager, names)

        def fetch(name: str) -> DownloadResult | FlowmasError:
            try:
                return manager.download(name, force=force)
            except ConfigurationError as exc:
                _fail(exc, 2)
            except FlowmasError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(fetch, selected))
    failed = 0
    for name, result in zip(selected, results, strict=True):
        if isinstance(result, FlowmasError):
            failed += 1
            err.print(f"[red]failed[/red] {name}: {result}", highlight=False)
        elif result.fetched:
            out.print(f"{name}: {result.path} (fetched {result.size / MiB:.1f} MiB in {result.seconds:.1f} s)",
                      highlight=False)
        else:
            out.print(f"{name}: {result.path} (cached)", highlight=False)
    if failed:
        raise typer.Exit(1)


@assets_app.command("verify")
def verify(
    names: Annotated[list[str] | None, typer.Argument(help="Assets to verify (default: all).")] = None,
    project: ProjectOption = None,
) -> None:
    """Re-hash cached assets against their records and declared checksums."""
    with _manager(project) as manager:
        results = [manager.verify(name) for name in _names(manager, names)]
    for result in results:
        detail = f": {result.detail}" if result.detail else ""
        out.print(f"{result.name}: {result.status.replace('_', ' ')}{detail}", highlight=False)
    if any(result.status in ("failed", "stale") for result in results):
        raise typer.Exit(1)
    if names and any(result.status == "not_cached" for result in results):
        raise typer.Exit(1)


@assets_app.command("clear-cache")
def clear_cache(
    asset: Annotated[str | None, typer.Option("--asset", help="Remove this asset's cache entry.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Remove every cache entry.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    project: ProjectOption = None,
) -> None:
    """Remove cached assets, taking each entry's lock (a running download finishes first)."""
    if (asset is None) == (not all_):
        err.print("error: give exactly one of --asset NAME or --all")
        raise typer.Exit(2)
    with _manager(project) as manager:
        what = f"asset {asset!r}" if asset else f"every asset in {manager.cache.root}"
        if not yes:
            if not sys.stdin.isatty():
                err.print("error: not a terminal, cannot ask for confirmation; pass --yes")
                raise typer.Exit(2)
            typer.confirm(f"Remove {what} from the cache?", abort=True)
        if asset:
            try:
                removed = manager.clear(asset)
            except ConfigurationError as exc:
                _fail(exc, 2)
            out.print(f"{asset}: {'removed' if removed else 'was not cached'}")
        else:
            out.print(f"removed {manager.clear_all()} cache entries from {manager.cache.root}")


@app.command("up")
def up(
    project: ProjectOption = None,
    prefect_yaml: Annotated[Path | None, typer.Option(help="Deployments to serve (default: the repo's).")] = None,
    host: Annotated[str, typer.Option(help="Address of the local Prefect server.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Its port (default 4200 if free, else any; 0: any).")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Most flow runs at once.")] = None,
    server_timeout: Annotated[float, typer.Option(help="Seconds to wait for the server.")] = 120.0,
) -> None:
    """Run flowmas: a local Prefect server (unless PREFECT_API_URL is set) serving every deployment."""
    from flows.serve import ServiceStartError, run_up

    try:
        run_up(project_file=project, prefect_yaml=prefect_yaml, host=host, port=port, limit=limit,
               server_timeout=server_timeout)
    except KeyboardInterrupt:
        pass  # Ctrl-C during start-up: whatever had started is stopped
    except ConfigurationError as exc:
        _fail(exc, 2)
    except ServiceStartError as exc:
        _fail(exc, 1)


if __name__ == "__main__":
    app()
