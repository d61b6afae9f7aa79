"""The lock (constraints.txt): exact versions of everything, used by `make install`, CI (which
runs `make test`, hence `make install`) and the Dockerfile; pyproject.toml's ranges stay loose."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version

from tests.support import REPO

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, pinned = line.partition("==")
            assert sep and pinned and "://" not in line and ";" not in line, line
            pins[canonical(name)] = pinned.strip()
    return pins


def declared() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["dev"]]


def test_every_dependency_is_pinned_and_ranges_stay_loose() -> None:
    """Each runtime and dev dependency has an exact pin; pyproject.toml pins none."""
    pins = locked()
    for requirement in declared():
        assert "==" not in requirement, requirement
        name = NAME.match(requirement)
        assert name is not None and canonical(name.group()) in pins, requirement


def test_this_environment_runs_the_locked_versions() -> None:
    """What `make install` installed is exactly what the lock says."""
    wrong = {}
    for name, pinned in locked().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # only in the lock's other extras
        if installed != pinned:
            wrong[name] = (installed, pinned)
    assert wrong == {}


def test_install_ci_and_image_use_the_lock() -> None:
    """make install and the Dockerfile install with -c constraints.txt; the build sees it."""
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "pip install --quiet -c constraints.txt -e '.[dev]'" in makefile
    assert "$(BIN)/akisnap: pyproject.toml constraints.txt" in makefile
    assert "pip wheel --wheel-dir /wheels -c constraints.txt ." in (REPO / "Dockerfile").read_text(
        encoding="utf-8"
    )
    assert "!constraints.txt" in (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert "make test" in (REPO / ".ci" / "run").read_text(encoding="utf-8")
