"""Prefect deployment steps for flowmas, named in the ``pull:`` section of prefect.yaml.

Prefect's own ``set_working_directory`` with ``directory: "{{ $FLOWMAS_REPO }}"`` crashes a run whose
worker lacks that variable: unset, the templated key is dropped (a missing-argument TypeError); empty, it
chdirs to "" (FileNotFoundError). This step falls back to the checkout it lives in, which is where the
worker's interpreter found it (``flows`` is importable only from the flowmas checkout or its venv), and
refuses a directory that does not hold ``flows/`` with a message that says where the directory came from.
"""

from __future__ import annotations

import os
from pathlib import Path

from flowmas.errors import ConfigurationError

CHECKOUT = Path(__file__).resolve().parents[1]
"""The flowmas checkout this module was imported from: the directory holding flows/, blocks/, tasks/."""


def set_working_directory(directory: str | None = None) -> dict[str, str]:
    """Change into the flowmas checkout and return ``{"directory": <absolute path>}``, as Prefect's step does.

    The directory is ``directory`` if given and non-empty, else ``$FLOWMAS_REPO`` if set and non-empty,
    else this module's checkout. A relative path is taken from the current directory. It must exist and
    hold ``flows/`` (the deployments' entrypoints are relative to it); otherwise ConfigurationError.
    """
    repo = os.environ.get("FLOWMAS_REPO", "")
    set_repo = ("Set FLOWMAS_REPO in the worker's environment to the flowmas checkout (the directory holding "
                "flows/, blocks/, tasks/)")
    if directory:
        chosen, source = directory, "the `directory` of the pull step in prefect.yaml"
        todo = "Fix that `directory`, or drop it to use FLOWMAS_REPO or this checkout"
    elif repo:
        chosen, source = repo, "FLOWMAS_REPO"
        todo = f"{set_repo}, or unset it to use {CHECKOUT}"
    else:
        chosen, source = str(CHECKOUT), "the checkout flows/steps.py was imported from; FLOWMAS_REPO is unset"
        todo = set_repo
    path = Path(chosen).expanduser().resolve()
    if not path.is_dir():
        problem = "does not exist" if not path.exists() else "is not a directory"
    elif not (path / "flows").is_dir():
        problem = "holds no flows/ directory, so it is not a flowmas checkout"
    else:
        os.chdir(path)
        return {"directory": os.getcwd()}
    raise ConfigurationError(f"The pull step cannot use {path} (from {source}): it {problem}. {todo}.")
