"""prefect.yaml's deployments, served by ``flowmas up`` from its own process (Prefect's ``Runner``).

Every flow of prefect.yaml is loaded before anything is registered, so a broken entrypoint registers nothing
(``load_deployments``). ``Registration`` is the service that registers the flowmas block types and the
deployments with the Prefect API (after the server answers, before the container starts, so the container's
first ``/info`` already lists the deployment actions); ``serve_runner`` is the foreground: the runner polls
for scheduled runs and starts each in a subprocess until a signal stops it (schedules are paused until the
next ``up``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from flowmas.errors import ConfigurationError, ServiceStartError
from up.supervisor import describe_error, sentence

logger = logging.getLogger("flowmas.up")


@dataclass(frozen=True)
class DeploymentSpec:
    """One entry of prefect.yaml's ``deployments:``, the parts that serving uses."""

    name: str
    entrypoint: str
    parameters: dict[str, Any] = field(default_factory=dict)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    concurrency_limit: int | dict[str, Any] | None = None
    tags: list[str] = field(default_factory=list)
    description: str | None = None


def read_deployments(prefect_yaml: Path) -> list[DeploymentSpec]:
    """The ``deployments:`` of ``prefect_yaml``; ConfigurationError naming the entry that cannot be served."""
    try:
        data = yaml.safe_load(prefect_yaml.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"Cannot read {prefect_yaml}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"{prefect_yaml}: expected a mapping with a 'deployments' list.")
    specs = []
    for index, entry in enumerate(data.get("deployments") or []):
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("entrypoint"):
            raise ConfigurationError(f"{prefect_yaml}: deployments[{index}] needs 'name' and 'entrypoint'.")
        specs.append(DeploymentSpec(
            name=entry["name"], entrypoint=entry["entrypoint"], parameters=entry.get("parameters") or {},
            schedules=entry.get("schedules") or [], concurrency_limit=entry.get("concurrency_limit"),
            tags=entry.get("tags") or [], description=entry.get("description"),
        ))
    return specs


PROJECT_INTERVALS = {"expire-files": "services.file_service.expiration_check_interval"}
"""Interval schedules a project file may set: flow name -> the dotted path of the setting in the project."""


def with_project_intervals(specs: Sequence[DeploymentSpec], project: Any) -> list[DeploymentSpec]:
    """``specs`` with each interval schedule of ``PROJECT_INTERVALS`` taken from ``project`` when the project
    file sets it (``services.file_service.expiration_check_interval: 120`` makes ``expire-files`` run every
    120 s); prefect.yaml's interval stays otherwise. ``project`` None changes nothing."""
    if project is None:
        return list(specs)
    result = []
    for spec in specs:
        flow_name = spec.entrypoint.rpartition(":")[2].replace("_", "-")
        if flow_name in PROJECT_INTERVALS:
            setting = PROJECT_INTERVALS[flow_name]
            path, _, field_name = setting.rpartition(".")
            section = project
            for part in path.split("."):
                section = getattr(section, part)
            if field_name in section.model_fields_set:
                interval = float(getattr(section, field_name))
                schedules = [{**entry, "interval": interval} if "interval" in entry else entry
                             for entry in spec.schedules]
                logger.debug("Deployment %r runs every %g s (%s)", spec.name, interval, setting)
                spec = replace(spec, schedules=schedules)
        result.append(spec)
    return result


def load_deployments(specs: Sequence[DeploymentSpec], prefect_yaml: Path) -> list[Any]:
    """Every spec as a ``RunnerDeployment``, all loaded before any is registered, so a broken one registers none.

    A flow that cannot be imported becomes ServiceStartError naming the deployment, its entrypoint and the
    error; a schedule that cannot be served stays a ConfigurationError.
    """
    deployments = []
    for spec in specs:
        try:
            deployments.append(to_runner_deployment(spec, prefect_yaml.parent))
        except ConfigurationError:
            raise
        except Exception as exc:
            logger.debug("Loading the flow of deployment %r failed", spec.name, exc_info=True)
            raise ServiceStartError(
                f"Deployment {spec.name!r} of {prefect_yaml}: cannot load its flow {spec.entrypoint} "
                f"({describe_error(exc)}). Fix that module, or the entrypoint (a file relative to "
                f"{prefect_yaml.name}, ':', then the @flow function).") from exc
    return deployments


def to_runner_deployment(spec: DeploymentSpec, root: Path) -> Any:
    """A ``RunnerDeployment`` of the flow at ``spec.entrypoint`` (a path relative to ``root``)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron, Interval

    path, _, function = spec.entrypoint.rpartition(":")
    flow: Any = load_flow_from_entrypoint(f"{(root / path).resolve()}:{function}", use_placeholder_flow=False)
    schedules = []
    for entry in spec.schedules:
        options = {"timezone": entry.get("timezone"), "active": entry.get("active", True)}
        if "cron" in entry:
            schedules.append(Cron(entry["cron"], **options))
        elif "interval" in entry:
            schedules.append(Interval(entry["interval"], **options))
        else:
            raise ConfigurationError(
                f"Deployment {spec.name!r}: only cron and interval schedules can be served.")
    limit = spec.concurrency_limit
    return flow.to_deployment(
        name=spec.name, schedules=schedules, parameters=spec.parameters, tags=spec.tags,
        description=spec.description,
        concurrency_limit=ConcurrencyLimitConfig(**limit) if isinstance(limit, dict) else limit,
    )


class Registration:
    """The service that registers the flowmas block types and every deployment with the Prefect API.

    ``environ`` is exported to ``os.environ`` first (flow runs are subprocesses: they inherit it, not the
    settings context). The registered ``runner`` is what ``serve_runner`` then runs in the foreground.
    """

    name = "deployments"

    def __init__(self, deployments: Sequence[Any], *, limit: int | None = None,
                 environ: dict[str, str] | None = None) -> None:
        self.deployments = list(deployments)
        self.limit = limit
        self.environ = dict(environ or {})
        self.runner: Any = None
        self.names: list[str] = []

    def start(self) -> None:
        from prefect.runner import Runner
        from prefect.settings import PREFECT_API_URL

        from blocks import register_blocks

        os.environ.update(self.environ)
        api_url = str(PREFECT_API_URL.value())
        with sentence(f"Cannot register the flowmas block types with the Prefect API at {api_url}",
                      "Is it a Prefect 3 server that accepts writes?"):
            register_blocks()
        runner = Runner(pause_on_shutdown=True, limit=self.limit)  # schedules resume on the next `up`
        names = []
        for deployment in self.deployments:
            name = f"{deployment.flow_name}/{deployment.name}"
            with sentence(f"Cannot register deployment {name} with the Prefect API at {api_url}",
                          "Is it a Prefect 3 server that accepts writes?"):
                runner.add_deployment(deployment)  # registers it with the API
            names.append(name)
        self.runner, self.names = runner, names

    def stop(self) -> None:
        pass  # the runner stops with the foreground; registered deployments stay (paused) for the next `up`


def serve_runner(runner: Any, api_url: str) -> None:
    """Run the registered ``runner`` until SIGINT/SIGTERM (what ``prefect.serve`` does after registering)."""
    from prefect.exceptions import TerminationSignal

    try:
        with (
            sentence(f"Serving stopped: the runner failed against the Prefect API at {api_url}",
                     "Start `flowmas up` again once that API answers."),
            suppress(KeyboardInterrupt, TerminationSignal),
        ):
            asyncio.run(runner.start())
    except SystemExit as exc:  # the runner's SIGTERM handler before it started, or a second SIGTERM
        if exc.code not in (0, None):
            raise
