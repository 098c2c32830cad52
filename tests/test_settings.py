"""Project files: OpenMAS compatibility, strictness with YAML paths, cache-dir precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowmas import AssetManager, FlowmasSettings, load_project
from flowmas.errors import ConfigurationError, UnknownAssetError
from flowmas.settings import assets_cache_dir

SHA = "sha256:" + "ab" * 32

OPENMAS_PROJECT = f"""
name: "vision-agents"
version: "0.1.0"
agents:
  detector: "agents/detector"
  planner:
    module: "agents.planner"
    class: "PlannerAgent"
    communicator: "http"
    options: {{port: 8001}}
shared_paths: ["shared"]
extension_paths: ["extensions"]
default_config:
  log_level: "INFO"
dependencies: []
assets:
  - name: "yolo"
    version: "8n"
    asset_type: "model"
    description: "Object detector"
    source:
      type: "http"
      url: "https://example.invalid/yolov8n.pt"
      progress_report: true
      progress_report_interval_mb: 5
      authentication:
        strategy: "env_token"
        http:
          token_env_var: "MODEL_TOKEN"
    checksum: "{SHA}"
    retries: 3
    retry_delay_seconds: 10
  - name: "bert"
    source:
      type: "hf"
      repo_id: "google-bert/bert-base-uncased"
      filename: "config.json"
      revision: "main"
    authentication:
      strategy: "env_token"
      hf:
        token_env_var: "HUGGING_FACE_HUB_TOKEN"
  - name: "prompts"
    asset_type: "template"
    source:
      type: "local"
      path: "./templates/prompts.zip"
    unpack: true
    unpack_format: "zip"
settings:
  assets:
    cache_dir: ".cache/assets"
"""


def write(tmp_path: Path, text: str, name: str = "flowmas.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_openmas_project_file_loads_as_is(tmp_path):
    project = load_project(write(tmp_path, OPENMAS_PROJECT, "openmas_project.yml"))

    yolo, bert, prompts = project.assets
    assert yolo.version == "8n" and yolo.retries == 3 and yolo.checksum == SHA
    assert yolo.progress_report_interval_mb == 5  # moved up from source
    assert yolo.authentication.http.token_env_var == "MODEL_TOKEN"
    assert bert.source.revision == "main" and bert.authentication.hf.token_env_var == "HUGGING_FACE_HUB_TOKEN"
    assert prompts.source.path == tmp_path / "templates/prompts.zip"  # relative to the project file
    assert project.agents["detector"].module == "agents.detector"
    assert project.agents["planner"].class_ == "PlannerAgent"
    assert assets_cache_dir(project, FlowmasSettings()) == tmp_path / ".cache/assets"


def test_project_is_found_upwards_from_the_working_directory(tmp_path, monkeypatch):
    write(tmp_path, "name: p\n", "openmas_project.yml")
    (tmp_path / "sub" / "dir").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "sub" / "dir")
    assert load_project().path == tmp_path / "openmas_project.yml"


def test_missing_project_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match="FLOWMAS_PROJECT"):
        load_project()


@pytest.mark.parametrize(
    "asset_yaml, expected",
    [
        ("  - name: m\n    source: {type: http, url: 'http://x/m', tokn: 1}",
         "assets[0] (m).source.tokn: unknown key 'tokn'"),
        ("  - name: m\n    chekcsum: abc\n    source: {type: local, path: x}",
         "assets[0] (m).chekcsum: unknown key 'chekcsum'"),
        ("  - name: m\n    checksum: 'sha256:%s'\n    source: {type: hf, repo_id: a/b}" % ("0" * 64),
         "a Hub snapshot (no 'filename') is a directory"),
        ("  - name: m\n    source: {type: hf, repo_id: a/b, filename: x, allow_patterns: ['*.json']}",
         "select files of a snapshot"),
        ("  - name: m\n    chekcsum: abc\n    source: {type: local, path: x}", "(did you mean 'checksum'?)"),
        ("  - name: m\n    source: {type: http, url: 'http://x/m', tokn: 1}", "known here: authentication,"),
        ("  - name: m\n    retries: 1100\n    source: {type: local, path: x}", "assets[0] (m).retries"),
        ("  - name: m\n    progress_report_interval_mb: 1e308\n    source: {type: local, path: x}",
         "assets[0] (m).progress_report_interval_mb"),
        ("  - name: m\n    source: {type: http, url: 'http://x/a%00b'}", "contains a control character"),
        ("  - name: m\n    source: {type: http, url: 'http://x/%s'}" % ("a" * 300), "longer than the 255 bytes"),
        ("  - name: m\n    source: {type: http, url: 'http://x/dir/'}", "set 'source.filename'"),
        ("  - name: m\n    source: {type: http, url: 'http://x/a b'}", "space or control character"),
        ("  - name: m\n    source: {type: http, url: 'http://x:99999/a'}", "not a valid URL"),
        (("  - name: m\n    source: {type: http, url: 'http://x/m'}\n    authentication: {http: "
         "{token_env_var: T, header_name: 'X Bad'}}"), "header_name"),
        (("  - {name: m, version: '1', source: {type: local, path: x}}\n"
         "  - {name: m, version: '2', source: {type: local, path: x}}"), "asset 'm' is declared twice"),
        ("  - name: m\n    checksum: md5:abc\n    source: {type: local, path: x}", "assets[0] (m).checksum"),
        ("  - name: m\n    source: {type: ftp, url: x}", "assets[0] (m).source"),
        ("  - name: ../evil\n    source: {type: local, path: x}", "assets[0] (../evil).name"),
        ("  - name: m\n    unpack: true\n    source: {type: local, path: x.bin}", "needs 'unpack_format'"),
        ("  - name: m\n    source: {type: http, url: 'http://x/m'}\n    authentication: {http: {scheme: Bearer}}",
         "need 'http: {token_env_var"),
        (("  - name: m\n    source: {type: http, url: 'http://x/m', progress_report: false}\n"
         "    progress_report: true"), "set both on the asset and in 'source'"),
        ("  - name: m\n    source: {type: local, path: x}\n    authentication: {hf: {}}",
         "local sources take no 'authentication'"),
        (("  - name: m\n    source: {type: http, url: 'http://x/m'}\n"
         "    authentication: {strategy: prefect_secret}"), "needs 'block"),
    ],
)
def test_mistakes_are_errors_naming_the_yaml_path(tmp_path, asset_yaml, expected):
    with pytest.raises(ConfigurationError) as info:
        load_project(write(tmp_path, f"name: p\nassets:\n{asset_yaml}\n"))
    assert expected in str(info.value)
    assert str(tmp_path / "flowmas.yaml") in str(info.value)


def test_unknown_required_asset_is_an_error(tmp_path):
    text = "name: p\nagents:\n  a: {module: m, required_assets: [ghost]}\nassets: []\n"
    with pytest.raises(ConfigurationError, match="agent 'a' requires asset 'ghost'"):
        load_project(write(tmp_path, text))


def test_unknown_top_level_key_is_an_error(tmp_path):
    with pytest.raises(ConfigurationError, match="asets: unknown key 'asets'"):
        load_project(write(tmp_path, "name: p\nasets: []\n"))


def test_invalid_yaml_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        load_project(write(tmp_path, "name: [unclosed\n"))


def test_unpack_format_is_inferred_from_the_file_name(tmp_path):
    project = load_project(write(tmp_path, "name: p\nassets:\n  - name: m\n    unpack: true\n"
                                           "    source: {type: http, url: 'http://x/m.tar.gz?sig=1'}\n"))
    assert project.assets[0].unpack_format == "tar.gz"


def test_cache_dir_precedence(tmp_path, monkeypatch):
    project = load_project(write(tmp_path, "name: p\nsettings: {assets: {cache_dir: /from/project}}\n"))
    monkeypatch.setenv("FLOWMAS_HOME", str(tmp_path / "home"))
    assert assets_cache_dir(project, FlowmasSettings()) == Path("/from/project")
    monkeypatch.setenv("FLOWMAS_ASSETS_DIR", str(tmp_path / "env"))
    assert assets_cache_dir(project, FlowmasSettings()) == tmp_path / "env"
    bare = load_project(write(tmp_path, "name: p\n"))
    monkeypatch.delenv("FLOWMAS_ASSETS_DIR")
    assert assets_cache_dir(bare, FlowmasSettings()) == tmp_path / "home" / "assets"


def test_dotenv_beside_the_project_is_loaded(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWMAS_TEST_DOTENV", raising=False)
    (tmp_path / ".env").write_text("FLOWMAS_TEST_DOTENV=from-dotenv\n")
    load_project(write(tmp_path, "name: p\n"))
    import os

    assert os.environ.pop("FLOWMAS_TEST_DOTENV") == "from-dotenv"


def test_unknown_asset_name_lists_the_declared_ones(tmp_path):
    project = load_project(write(tmp_path, "name: p\nassets:\n  - {name: a, source: {type: local, path: x}}\n"))
    with pytest.raises(UnknownAssetError, match=r"Unknown asset 'b'.*Declared assets: a"):
        AssetManager(project, cache_dir=tmp_path / "c").asset("b")


@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("FLOWMAS_UNPACK_MAX_BYTES", "lots", "FLOWMAS_UNPACK_MAX_BYTES (got 'lots'): Input should be a valid integer"),
        ("FLOWMAS_HTTP_READ_TIMEOUT", "1e308", "FLOWMAS_HTTP_READ_TIMEOUT (got '1e308'): Input should be less than"),
        ("FLOWMAS_LOCK_TIMEOUT_SECONDS", "inf", "FLOWMAS_LOCK_TIMEOUT_SECONDS (got 'inf')"),
        ("FLOWMAS_UNPACK_MAX_RATIO", "0.5", "FLOWMAS_UNPACK_MAX_RATIO (got '0.5'): Input should be greater than"),
        ("FLOWMAS_DOWNLOAD_DEADLINE_SECONDS", "-1", "FLOWMAS_DOWNLOAD_DEADLINE_SECONDS (got '-1')"),
    ],
)
def test_absurd_settings_are_configuration_errors_naming_the_variable(monkeypatch, variable, value, expected):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as info:
        FlowmasSettings()
    assert expected in str(info.value)
    assert "Traceback" not in str(info.value) and "pydantic" not in str(info.value)
