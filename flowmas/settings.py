"""flowmas settings (``FLOWMAS_*`` environment variables) and project-file loading.

A project is ``flowmas.yaml`` or, for projects coming from OpenMAS, ``openmas_project.yml`` (same schema,
loaded as is). Discovery: ``FLOWMAS_PROJECT`` if set, else the first of the two names found in the current
directory or one of its parents. ``.env`` beside the project file is loaded (existing variables win).

Where the asset cache lives, first match wins: ``FLOWMAS_ASSETS_DIR``, ``settings.assets.cache_dir`` in the
project file (relative to the project's directory), ``$FLOWMAS_HOME/assets`` (``~/.flowmas/assets``).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from dotenv import load_dotenv
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flowmas.assets.manifest import AssetConfig
from flowmas.assets.record import ProjectRef
from flowmas.errors import ConfigurationError, UnknownAssetError
from flowmas.files.config import FileServiceConfig
from flowmas.text import shorten

PROJECT_FILENAMES = ("flowmas.yaml", "flowmas.yml", "openmas_project.yml", "openmas_project.yaml")


DAY = 86_400.0


def _seconds(default: float, *, most: float = 30 * DAY, least: float = 0.0) -> Any:
    """A duration setting: finite, positive, bounded (1e308 seconds is a typo, not a timeout)."""
    return Field(default=default, gt=least, le=most, allow_inf_nan=False)


class FlowmasSettings(BaseSettings):
    """Process-wide settings, read from ``FLOWMAS_*`` environment variables when constructed.

    Every value is bounded: an absurd one (``FLOWMAS_UNPACK_MAX_BYTES=lots``, a timeout of ``1e308``) is a
    ``ConfigurationError`` that names the variable, raised by the constructor itself.
    """

    model_config = SettingsConfigDict(env_prefix="FLOWMAS_", extra="ignore")

    home: Path = Path("~/.flowmas")
    project: Path | None = None
    assets_dir: Path | None = None
    snapshot_dir: Path | None = None
    """Where graph runs write their JSON snapshots (default: $FLOWMAS_HOME/snapshots)."""
    cache_url: SecretStr | None = Field(default=None, min_length=1, max_length=4096)
    """The graph cache: ``redis://…``, ``rediss://…`` or ``unix://…`` for Redis; unset or ``memory://`` for the
    embedded one."""
    lock_timeout_seconds: float = _seconds(3600.0)
    """How long to wait for another process that is downloading the same asset."""
    lock_log_interval_seconds: float = _seconds(5.0, most=DAY)
    unpack_max_bytes: int = Field(default=64 * 2**30, gt=0, le=2**60)
    unpack_max_members: int = Field(default=200_000, gt=0, le=100_000_000)
    unpack_max_ratio: float = Field(default=100.0, ge=1, le=1_000_000, allow_inf_nan=False)
    """Largest unpacked/compressed size ratio of an archive: what tells a bomb from an archive."""
    http_connect_timeout: float = _seconds(15.0, most=DAY)
    http_read_timeout: float = _seconds(60.0, most=DAY)
    http_min_speed: float = Field(default=1024.0, ge=0, le=2**40, allow_inf_nan=False)
    """Bytes per second below which a transfer is ended (and resumed later); 0 switches it off."""
    http_min_speed_window_seconds: float = _seconds(60.0, most=DAY)
    download_deadline_seconds: float = _seconds(DAY)
    """The longest one download may take, every attempt and pause included."""
    max_retry_delay_seconds: float = _seconds(60.0, most=DAY)

    # The file service (flowmas.files): each one, when set, wins over services.file_service in the project file.
    files_storage: str | None = Field(default=None, min_length=1, max_length=300)
    """The storage type: volume, bucket, memory, block:<name>, or a custom class of the project file."""
    files_dir: Path | None = None
    """The volume store's directory (default: $FLOWMAS_HOME/files)."""
    files_max_time_to_live: float | None = _seconds(None, most=365 * DAY)  # type: ignore[arg-type]
    files_default_ttl: float | None = _seconds(None, most=365 * DAY)  # type: ignore[arg-type]
    files_expiration_check_interval: float | None = _seconds(None, most=DAY, least=0.999)  # type: ignore[arg-type]
    files_max_file_bytes: int | None = Field(default=None, gt=0, le=2**50)
    files_max_session_bytes: int | None = Field(default=None, gt=0, le=2**50)
    files_infer_max_bytes: int | None = Field(default=None, gt=0, le=2**40)
    files_read_max_bytes: int | None = Field(default=None, gt=0, le=2**40)
    files_upload_grace_seconds: float | None = _seconds(None, most=7 * DAY, least=0.999)  # type: ignore[arg-type]
    files_share_secret: SecretStr | None = Field(default=None, min_length=16, max_length=4096)
    """The HMAC secret of share URLs; every process of a store must agree (default: the one the store keeps)."""
    files_s3_bucket: str | None = Field(default=None, min_length=3, max_length=63)
    files_s3_prefix: str | None = Field(default=None, max_length=512)
    files_s3_endpoint_url: str | None = Field(default=None, max_length=2048)
    files_s3_region: str | None = Field(default=None, max_length=64)
    files_s3_part_bytes: int | None = Field(default=None, ge=5 * 2**20, le=5 * 2**30)
    """Part size of S3 multipart uploads (5 MiB to 5 GiB)."""
    graph_retention_seconds: float = _seconds(7 * DAY, most=3650 * DAY, least=59.999)
    """How long ``cleanup-cache`` keeps a finished graph run's cache namespace and snapshots (default 7 days)."""
    graph_mailbox_max_messages: int = Field(default=1000, ge=1, le=10**7)
    """Most messages a platform mailbox (``/send``, ``/broadcast``) keeps; past it the oldest are dropped, so
    messages nobody reads cannot fill the cache."""
    graph_mailbox_ttl_seconds: float = _seconds(DAY, most=365 * DAY, least=0.999)
    """How long a platform mailbox lives after its last message (default a day)."""
    assistant_model: str | None = Field(default=None, min_length=1, max_length=300)
    """The saved model block (``<slug>/<name>`` or ``<name>``, e.g. ``openai-model/prod``) the built-in Assistant
    agent answers ``Ask`` with; unset, the Assistant has no ``Ask`` action."""
    assistant_max_iterations: int = Field(default=8, ge=1, le=100)
    """Most model turns one ``Ask`` may take (each may call several actions)."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigurationError(format_settings_error(exc)) from None

    @field_validator("home", "project", "assets_dir", "files_dir", "snapshot_dir")
    @classmethod
    def _expand(cls, path: Path | None) -> Path | None:
        return path.expanduser() if path is not None else None


def format_settings_error(exc: ValidationError) -> str:
    """One line per bad ``FLOWMAS_*`` variable, naming it and the accepted values (never echoing secrets)."""
    lines = ["Invalid flowmas settings (environment):"]
    for error in exc.errors(include_url=False):
        name = "FLOWMAS_" + "_".join(str(part) for part in error["loc"]).upper()
        given = error.get("input")
        secret = "SECRET" in name or "TOKEN" in name
        shown = f" (got {shorten(str(given), 40)!r})" if isinstance(given, (str, int, float)) and not secret else ""
        lines.append(f"  {name}{shown}: {error['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class AssetSettings(_Strict):
    cache_dir: Path | None = None


class ProjectSettings(_Strict):
    assets: AssetSettings | None = None


class ServicesSettings(_Strict):
    """``services:`` of a project file (Solace Agent Mesh's name for it): the file service's section."""

    file_service: FileServiceConfig = Field(default_factory=FileServiceConfig)


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
    services: ServicesSettings = Field(default_factory=ServicesSettings)
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
        seen: dict[str, AssetConfig] = {}
        for asset in self.assets:
            if (first := seen.get(asset.name)) is not None:
                versions = (f"versions {first.version!r} and {asset.version!r}" if first.version != asset.version
                            else f"version {asset.version!r}")
                raise ValueError(
                    f"asset {asset.name!r} is declared twice ({versions}); names address assets (in the CLI, "
                    f"get_asset_path and required_assets), so give each declaration its own name, "
                    f"e.g. '{asset.name}-{asset.version}'")
            seen[asset.name] = asset
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

    @property
    def ref(self) -> ProjectRef:
        """Who owns the cache entries this project fetches (its file, else its name)."""
        return ProjectRef(name=self.name, file=str(self.path) if self.path else None)

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
        raise ConfigurationError(f"Cannot read project file {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{file} is not UTF-8 text (byte {exc.start} cannot be decoded).") from None
    load_dotenv(file.parent / ".env", override=False)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{file} is not valid YAML: {exc}") from None
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
            key = str(error["loc"][-1])
            lines.append(f"  {where}: unknown key {shorten(key, 40)!r}{did_you_mean(key, allowed_keys(error['loc']))}")
        elif error["type"] == "missing":
            lines.append(f"  {where}: required key is missing")
        else:
            lines.append(f"  {where}: {error['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def did_you_mean(given: str, known: list[str]) -> str:
    """``" (did you mean 'x'?)"``, or the list of what is known when nothing is close."""
    close = difflib.get_close_matches(given, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; known here: {', '.join(sorted(known))}" if known else ""


def allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys a project file may have at ``loc[:-1]``, read from the models (for 'did you mean')."""
    node: Any = Project
    for part in loc[:-1]:
        node = _step_into(node, part)
        if node is None:
            return []
    model = _unwrap(node)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return [info.alias or name for name, info in model.model_fields.items() if not info.exclude]


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _step_into(annotation: Any, part: Any) -> Any:
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = annotation.model_fields
        info = fields.get(part) or next((f for f in fields.values() if f.alias == part), None)
        return info.annotation if info is not None else None
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (list, tuple) and isinstance(part, int) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    if origin in (Union, UnionType):
        members = [_unwrap(a) for a in args if a is not type(None)]
        for member in members:  # a discriminated union's tag (pydantic puts it in the location)
            tagged = isinstance(member, type) and issubclass(member, BaseModel) and "type" in member.model_fields
            if tagged and part in get_args(member.model_fields["type"].annotation):
                return member
        if len(members) == 1:
            return _step_into(members[0], part)
    return None


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
