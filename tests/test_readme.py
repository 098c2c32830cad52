"""README.md, run as written: every shell command and snippet a first-time user would copy.

The commands run in this checkout with the venv activated exactly as the README says (``. .venv/bin/activate``),
with ``FLOWMAS_HOME`` pointing at a temporary directory so nothing touches the developer's home. Each bash
block is claimed by one test below; a block no test claims fails ``test_every_bash_block_is_run_by_a_test``,
so the README cannot grow a command that nobody runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from flowmas.settings import project_from_dict

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
ACTIVATE = ". .venv/bin/activate"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", README, flags=re.MULTILINE | re.DOTALL)


def commands(block: str) -> list[str]:
    lines = [line.split(" #", 1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def block_starting(command: str) -> str:
    [found] = [block for block in blocks("bash") if commands(block) and commands(block)[0] == command]
    return found


def user_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A shell environment like a new user's: no flowmas or Prefect API variables, a private FLOWMAS_HOME."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FLOWMAS_", "PREFECT_API", "VIRTUAL_ENV"))}
    env.update({"FLOWMAS_HOME": str(tmp_path / "home"), **extra})
    return env


def bash(script: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``script`` in bash, after the README's activation line, from the repository root."""
    return subprocess.run(["bash", "-euo", "pipefail", "-c", f"{ACTIVATE}\n{script}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


# --- every block is claimed -------------------------------------------------------------------------

FILES_CLI = "URL=$(flowmas files upload examples/templates/greeting.txt --session demo --ttl 3600)"
FILES_REST = ("FILE=$(curl -s -X POST http://127.0.0.1:8082/invoke/UploadFile -H 'Content-Type: application/json' "
              "\\")
GRAPH_CLI = "flowmas graph plan examples.research:graph"
CLAIMED = {"make up", ACTIVATE, "flowmas assets list", "export PREFECT_API_URL=http://127.0.0.1:4200/api",
           "curl -s -w '\\n' http://127.0.0.1:8082/agents/greeter", FILES_CLI, FILES_REST, GRAPH_CLI}


def test_every_bash_block_is_run_by_a_test() -> None:
    firsts = [commands(block)[0] for block in blocks("bash")]
    assert sorted(firsts) == sorted(CLAIMED), "a README bash block that no test runs"


def test_make_test_is_what_ci_runs() -> None:
    assert commands(block_starting("make up")) == ["make up", "make test"]
    ci = [line for line in (REPO / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-2:] == ["make check", "make test"]  # CI runs the README's test command, after the checks


def test_the_activation_line_is_the_one_these_tests_use() -> None:
    assert commands(block_starting(ACTIVATE)) == [ACTIVATE]
    assert (REPO / ".venv/bin/activate").is_file()


# --- snippets ---------------------------------------------------------------------------------------


def test_the_yaml_example_is_a_valid_project(tmp_path: Path) -> None:
    [example] = [block for block in blocks("yaml") if block.startswith("# flowmas.yaml")]
    project = project_from_dict(yaml.safe_load(example), base_dir=tmp_path, source=str(tmp_path / "flowmas.yaml"))
    assert [a.name for a in project.assets] == ["detector", "encoder", "minilm", "prompts"]
    assert project.asset("minilm").is_directory_source and project.asset("prompts").unpack_format == "zip"
    assert project.agent("reader").required_assets == ["encoder", "prompts"]


def test_the_file_service_yaml_example_is_a_valid_section(tmp_path: Path) -> None:
    [example] = [block for block in blocks("yaml") if block.startswith("services:")]
    project = project_from_dict({"name": "files", **yaml.safe_load(example)}, base_dir=tmp_path,
                                source=str(tmp_path / "flowmas.yaml"))
    config = project.services.file_service
    assert config.storage_kind() == ("volume", None) and config.read_max_bytes == 300_000
    assert config.config.bucket is not None and config.config.bucket.bucket_name == "my-bucket"


def test_the_python_snippet_runs_as_written(tmp_path: Path) -> None:
    [snippet] = blocks("python")
    script = tmp_path / "snippet.py"
    script.write_text(snippet)

    done = subprocess.run([str(REPO / ".venv/bin/python"), str(script)], cwd=REPO, env=user_env(tmp_path),
                          capture_output=True, text=True, timeout=120, check=False)

    assert done.returncode == 0, done.stderr
    greeting, same, prefetched = done.stdout.splitlines()
    assert greeting == (REPO / "examples/templates/greeting.txt").read_text().strip()
    assert same == "True" and prefetched.startswith("{'greeting': PosixPath(")
    assert str(tmp_path / "home" / "assets") in prefetched  # the default cache, under FLOWMAS_HOME


def test_the_greeter_example_runs(tmp_path: Path) -> None:
    done = bash("python -m examples.greeter", user_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (REPO / "examples/templates/greeting.txt").read_text().strip()


def test_the_cli_block_runs_as_written(tmp_path: Path) -> None:
    block = block_starting("flowmas assets list")

    done = bash(block, user_env(tmp_path))

    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "not cached" in out  # the first list, before the download
    assert re.search(r"greeting: .*/template/greeting/latest/data/greeting\.txt \(fetched \d+ B in ", out)
    assert "greeting: verified" in out
    assert '"status": "cached"' in out  # list --json
    assert out.rstrip().endswith("greeting: removed")
    assert "Traceback" not in done.stderr


def test_the_files_cli_block_runs_as_written(tmp_path: Path) -> None:
    done = bash(block_starting(FILES_CLI), user_env(tmp_path))

    assert done.returncode == 0, done.stdout + done.stderr
    greeting = (REPO / "examples/templates/greeting.txt").read_text()
    lines = done.stdout.splitlines()
    assert lines[0] == "name: greeting.txt" and "mime_type: text/plain" in done.stdout
    assert greeting.splitlines()[0] in lines  # download ?head=1
    assert '"filename": "greeting.txt"' in done.stdout  # ls --json
    assert done.stdout.count(greeting.strip()) >= 1  # the share URL read by another session
    assert re.search(r"^deleted amfs://[0-9a-f]{32}_greeting[.]txt$", done.stdout, flags=re.MULTILINE)
    assert lines[-1].startswith("expire: 0 expired file(s) deleted")
    assert (tmp_path / "home/files").is_dir() and "Traceback" not in done.stderr


def test_the_graph_cli_block_runs_as_written(tmp_path: Path) -> None:
    done = bash(block_starting(GRAPH_CLI), user_env(tmp_path))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "level 2: search_notes, search_papers, search_web" in done.stdout
    assert done.stdout.count("summarise: done (visits 2)") == 2  # run, then resume (nothing runs again)
    assert "resumed from" in done.stdout and "  summarise#2 ok" in done.stderr
    assert (tmp_path / "home/snapshots/demo/.flowmas-graph").is_file() and "Traceback" not in done.stderr


# --- make up, then the deployment run of "On Prefect" -----------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_make_up_then_the_readme_deployment_run(tmp_path: Path) -> None:
    """What the README tells a newcomer: `make up`, then in another shell curl and `prefect deployment run`."""
    readme_port_free = _port_free(4200)
    assert _port_free(8082), "port 8082 (the README's container address) is taken on this machine"
    env = user_env(tmp_path, PREFECT_RUNNER_POLL_FREQUENCY="1")  # the runner picks the run up within a second
    up = subprocess.Popen(["make", "up"], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(up.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not (match := re.search(r"Prefect UI at http://127\.0\.0\.1:(\d+)", "".join(lines))):
            assert up.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        while "OPACA container at http://127.0.0.1:8082" not in "".join(lines):
            assert up.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        assert "serving download-assets/default" in "".join(lines)
        port = int(match.group(1))
        block = block_starting("export PREFECT_API_URL=http://127.0.0.1:4200/api")
        if readme_port_free:
            assert port == 4200  # what the README's export line assumes
        else:  # something else holds 4200 on this machine: the README says to use the printed address
            block = block.replace(":4200/", f":{port}/")

        assert httpx.get("http://127.0.0.1:8082/docs", timeout=10).status_code == 200  # the address printed
        asked = bash(block_starting("curl -s -w '\\n' http://127.0.0.1:8082/agents/greeter"), env, timeout=120)

        assert asked.returncode == 0, asked.stdout + asked.stderr
        agent, greeting, downloaded = asked.stdout.splitlines()
        assert json.loads(agent)["agentId"] == "greeter" and "Greet" in agent
        assert json.loads(greeting) == (REPO / "examples/templates/greeting.txt").read_text().strip()
        [row] = json.loads(downloaded)
        assert row["asset"] == "greeting" and row["status"] in ("fetched", "cached")

        files = bash(block_starting(FILES_REST), env, timeout=120)
        assert files.returncode == 0, files.stdout + files.stderr
        read, listed, expired = (json.loads(line) for line in files.stdout.splitlines())
        assert read["content"] == "hello, files\n" and read["encoding"] == "text" and read["truncated"] is False
        assert [md["filename"] for md in listed] == ["hello.txt"] and expired["errors"] == 0
        assert re.search(r"serving .*expire-files/default", "".join(lines))  # the file sweep, on its interval

        done = bash(block, env, timeout=180)

        assert done.returncode == 0, done.stdout + done.stderr
        assert "Completed" in done.stdout, done.stdout
        assert (tmp_path / "home/assets/template/greeting/latest/data/greeting.txt").is_file()
        assert done.stdout.count("download-assets") >= 1 and "Completed" in done.stdout.split("--watch")[-1]
    finally:
        if up.poll() is None:
            # SIGTERM, as `docker stop` or systemd stop it (tests/prefect/test_up.py covers Ctrl-C's SIGINT).
            os.killpg(up.pid, signal.SIGTERM)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()
        reader.join(timeout=60)  # the pipe ends once flowmas up, make's child, has exited too
    output = "".join(lines)
    assert "flowmas up: stopped serving" in output and "Traceback" not in output, output
    for closed in (f"http://127.0.0.1:{port}/api/health", "http://127.0.0.1:8082/info"):
        with pytest.raises(httpx.ConnectError):
            httpx.get(closed, timeout=2)
