"""The shape of the code: the core imports no face or framework; public surfaces are explicit."""

from __future__ import annotations

import ast
from pathlib import Path

import flowmas

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"prefect", "fastapi", "starlette", "blocks", "tasks", "flows", "agents_api"}


def test_core_imports_neither_prefect_nor_fastapi_nor_a_face():
    offenders = []
    for file in (REPO / "flowmas").rglob("*.py"):
        if file.name == "cli.py":
            continue  # the command line may start the faces (`flowmas up`)
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{file.relative_to(REPO)}:{node.lineno} imports {n}"
                          for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_public_surface_is_explicit_and_importable():
    assert sorted(flowmas.__all__) == sorted(set(flowmas.__all__))
    for name in flowmas.__all__:
        assert hasattr(flowmas, name), name


def test_face_packages_are_this_repositorys():
    import agents_api
    import blocks
    import flows
    import tasks

    for package in (blocks, tasks, flows, agents_api):
        assert Path(package.__file__).resolve().is_relative_to(REPO), package.__file__
