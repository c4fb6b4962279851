"""environment.yml and binder/ match pyproject.toml: names, pins, CPU torch, a strict postBuild."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
ENV_FILES = [ROOT / "environment.yml", ROOT / "binder" / "environment.yml"]
NOT_PACKAGES = {"python", "pip"}  # interpreter and installer, not project dependencies
TORCH_PIN = "torch==2.13.0"


def pyproject_deps() -> dict[str, SpecifierSet]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {canonicalize_name(r.name): r.specifier for r in map(Requirement, deps)}


def env_deps(path: Path) -> tuple[dict[str, SpecifierSet], dict, list[str]]:
    """(package -> specifier, the parsed file, pip options such as --extra-index-url)."""
    env = yaml.safe_load(path.read_text())
    out: dict[str, SpecifierSet] = {}
    options: list[str] = []
    entries: list[str] = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"{path}: unexpected mapping {dep}"
            for item in dep["pip"]:
                (options if item.startswith("-") else entries).append(item)
        else:
            entries.append(dep)
    for item in entries:
        name = re.split(r"[<>=!~ \[]", item, maxsplit=1)[0]
        if name in NOT_PACKAGES:
            continue
        req = Requirement(item)  # conda specs must also be valid PEP 508 (no single `=` pins)
        assert canonicalize_name(req.name) not in out, f"{path}: {req.name} listed twice"
        out[canonicalize_name(req.name)] = req.specifier
    return out, env, options


def compatible(env_spec: SpecifierSet, project_spec: SpecifierSet) -> bool:
    """Same specifier, or an exact `==X` pin that the project's specifier allows."""
    if str(env_spec) == str(project_spec):
        return True
    pins = [s for s in env_spec if s.operator == "=="]
    return len(pins) == 1 and len(env_spec) == 1 and project_spec.contains(pins[0].version)


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_environment_matches_pyproject(path: Path) -> None:
    project = pyproject_deps()
    deps, env, _ = env_deps(path)
    assert sorted(deps) == sorted(project), (
        f"{path.name}: missing {sorted(set(project) - set(deps))}, "
        f"extra {sorted(set(deps) - set(project))}"
    )
    bad = {n: (str(deps[n]), str(project[n])) for n in deps if not compatible(deps[n], project[n])}
    assert not bad, f"{path}: pins differ from pyproject.toml (env, pyproject): {bad}"
    assert str(deps["torch"]) == TORCH_PIN.removeprefix("torch")
    assert "conda-forge" in env["channels"]
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert len(python) == 1 and SpecifierSet(requires).contains(python[0].split("=")[-1] + ".0")


def test_pyproject_pins_torch() -> None:
    assert str(pyproject_deps()["torch"]) == "==2.13.0"


def test_binder_uses_cpu_torch_only() -> None:
    deps, _, options = env_deps(ROOT / "binder" / "environment.yml")
    assert any("download.pytorch.org/whl/cpu" in o for o in options), options
    text = (ROOT / "binder" / "environment.yml").read_text().lower()
    assert not re.search(r"^\s*-\s*(pytorch|pytorch-cuda|cudatoolkit|cuda-\S+)\b", text, re.M)
    assert "pytorch" not in deps  # torch comes from pip (CPU index), not a conda CUDA build


def test_binder_postbuild_is_strict_installs_and_makes_the_sample() -> None:
    post = ROOT / "binder" / "postBuild"
    assert os.access(post, os.X_OK), "binder/postBuild must be executable"
    lines = [ln.strip() for ln in post.read_text().splitlines()]
    assert lines[0].startswith("#!") and "bash" in lines[0]
    code = [ln for ln in lines if ln and not ln.startswith("#")]
    assert re.match(r"set -[a-z]*e", code[0]), "the first command must be `set -e`"
    install = next(i for i, ln in enumerate(code) if re.search(r"pip install .*(-e )?\.$", ln))
    sample = next(i for i, ln in enumerate(code) if ln.startswith("flairlab sample"))
    assert install < sample
    assert not (ROOT / ".binder").exists(), "binder/ and .binder/ together are an error"
