"""flowmas settings (``FLOWMAS_*`` environment variables) and project-file loading.

A project is ``flowmas.yaml`` or, for projects coming from OpenMAS, ``openmas_project.yml`` (same schema,
loaded as is). Discovery: ``FLOWMAS_PROJECT`` if set, else the first of the two names found in the current
directory or one of its parents. ``.env`` beside the project file is loaded (existing variables win).

Where the asset cache lives, first match wins: ``FLOWMAS_ASSETS_DIR``, ``settings.assets.cache_dir`` in the
project file (relative to the project's directory), ``$FLOWMAS_HOME/assets`` (``~/.flowmas/assets``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from dotenv import load_dotenv
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flowmas.assets.manifest import AssetConfig
from flowmas.errors import ConfigurationError, UnknownAssetError

PROJECT_FILENAMES = ("flowmas.yaml", "flowmas.yml", "openmas_project.yml", "openmas_project.yaml")


class FlowmasSettings(BaseSettings):
    """Process-wide settings, read from ``FLOWMAS_*`` environment variables when constructed."""

    model_config = SettingsConfigDict(env_prefix="FLOWMAS_", extra="ignore")

    home: Path = Path("~/.flowmas")
    project: Path | None = None
    assets_dir: Path | None = None
    lock_timeout_seconds: float = Field(default=3600.0, gt=0)
    """How long to wait for another process that is downloading the same asset."""
    lock_log_interval_seconds: float = Field(default=5.0, gt=0)
    unpack_max_bytes: int = Field(default=64 * 2**30, gt=0)
    unpack_max_members: int = Field(default=200_000, gt=0)
    http_connect_timeout: float = Field(default=15.0, gt=0)
    http_read_timeout: float = Field(default=60.0, gt=0)
    max_retry_delay_seconds: float = Field(default=60.0, gt=0)

    @field_validator("home", "project", "assets_dir")
    @classmethod
    def _expand(cls, path: Path | None) -> Path | None:
        return path.expanduser() if path is not None else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class AssetSettings(_Strict):
    cache_dir: Path | None = None


class ProjectSettings(_Strict):
    assets: AssetSettings | None = None


class AgentEntry(_Strict):
    """An agent of the project; a plain string in the file means ``{module: <path as module>, class: Agent}``."""

    module: str
    class_: str = Field(default="Agent", alias="class")
    required_assets: list[str] = Field(default_factory=list)
    # OpenMAS keys, kept so existing project files load as they are.
    communicator: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    deploy_config_path: str | None = None
    prompts: list[dict[str, Any]] | None = None
    prompts_dir: Path | None = None
    sampling: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, data: Any) -> Any:
        if isinstance(data, str):
            module = data.replace("/", ".")
            return {"module": module.removesuffix(".py"), "class": "Agent"}
        return data


class Project(_Strict):
    """A loaded project file. ``path`` is where it was read from (None when built in code)."""

    name: str
    version: str = "0.0.0"
    agents: dict[str, AgentEntry] = Field(default_factory=dict)
    assets: list[AssetConfig] = Field(default_factory=list)
    settings: ProjectSettings = Field(default_factory=ProjectSettings)
    # OpenMAS keys, accepted and ignored by flowmas.
    shared_paths: list[str] = Field(default_factory=list)
    extension_paths: list[str] = Field(default_factory=list)
    default_config: dict[str, Any] = Field(default_factory=dict)
    agent_defaults: dict[str, Any] = Field(default_factory=dict)
    communicator_defaults: dict[str, Any] = Field(default_factory=dict)
    dependencies: list[dict[str, Any]] = Field(default_factory=list)

    path: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _references_resolve(self) -> Project:
        names = [asset.name for asset in self.assets]
        seen: set[tuple[str, str]] = set()
        for asset in self.assets:
            if (asset.name, asset.version) in seen:
                raise ValueError(f"asset {asset.name!r} version {asset.version!r} is declared twice")
            seen.add((asset.name, asset.version))
        for agent_name, agent in self.agents.items():
            for required in agent.required_assets:
                if required not in names:
                    raise ValueError(
                        f"agent {agent_name!r} requires asset {required!r}, which is not declared under 'assets:'"
                    )
        return self

    def asset(self, name: str) -> AssetConfig:
        for asset in self.assets:
            if asset.name == name:
                return asset
        raise UnknownAssetError(name, [a.name for a in self.assets])

    def agent(self, name: str) -> AgentEntry:
        try:
            return self.agents[name]
        except KeyError:
            known = ", ".join(sorted(self.agents)) or "none"
            raise ConfigurationError(f"Unknown agent {name!r}; agents in the project: {known}.") from None

    @property
    def directory(self) -> Path:
        return self.path.parent if self.path else Path.cwd()


def find_project_file(start: Path | None = None, settings: FlowmasSettings | None = None) -> Path | None:
    settings = settings or FlowmasSettings()
    if settings.project is not None:
        return settings.project
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        for filename in PROJECT_FILENAMES:
            candidate = directory / filename
            if candidate.is_file():
                return candidate
    return None


def load_project(path: Path | str | None = None, *, settings: FlowmasSettings | None = None) -> Project:
    """Load and validate a project file; every mistake is reported with its YAML path."""
    file = Path(path) if path is not None else find_project_file(settings=settings)
    if file is None:
        raise ConfigurationError(
            "No flowmas.yaml (or openmas_project.yml) found in this directory or its parents; "
            "create one, or point FLOWMAS_PROJECT at it."
        )
    file = file.expanduser().resolve()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"Cannot read project file {file}: {exc.strerror or exc}") from exc
    load_dotenv(file.parent / ".env", override=False)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{file} is not valid YAML: {exc}") from exc
    return project_from_dict(data, base_dir=file.parent, source=str(file))


def project_from_dict(data: Any, *, base_dir: Path | None = None, source: str = "<project>") -> Project:
    if not isinstance(data, dict):
        raise ConfigurationError(f"{source}: the top level must be a mapping with 'name', 'assets', ...")
    try:
        project = Project.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigurationError(format_validation_error(exc, data, source)) from None
    if base_dir is not None:
        project = project.model_copy(update={"path": Path(source)})
    return project


def format_validation_error(exc: ValidationError, data: Any, source: str) -> str:
    lines = [f"{source} has {exc.error_count()} error(s):"]
    for error in exc.errors(include_url=False):
        where = yaml_path(error["loc"], data)
        if error["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key {str(error['loc'][-1])!r}")
        elif error["type"] == "missing":
            lines.append(f"  {where}: required key is missing")
        else:
            lines.append(f"  {where}: {error['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def yaml_path(loc: tuple[Any, ...], data: Any) -> str:
    """Render a pydantic error location as a YAML path, skipping the union tags pydantic inserts."""
    out, node = "", data
    for part in loc:
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            node = node[part]
            label = node.get("name") if isinstance(node, dict) else None
            out += f"[{part}]" + (f" ({label})" if label else "")
        elif isinstance(node, dict) and part in node:
            node = node[part]
            out += f".{part}" if out else str(part)
        elif isinstance(node, dict) and part == node.get("type"):
            continue  # discriminated-union tag, not a key in the file
        else:
            node = None
            out += f".{part}" if out else str(part)
    return out or "<top level>"


def assets_cache_dir(project: Project | None, settings: FlowmasSettings) -> Path:
    if settings.assets_dir is not None:
        return settings.assets_dir
    configured = project.settings.assets.cache_dir if project and project.settings.assets else None
    if configured is not None:
        configured = configured.expanduser()
        return configured if configured.is_absolute() else project.directory / configured  # type: ignore[union-attr]
    return settings.home / "assets"
