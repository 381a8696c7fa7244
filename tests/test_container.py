"""The container files, checked without a Docker engine.

docker-compose.yml and docker/Dockerfile are parsed and checked for what a first
`docker compose up` needs. The slow test replays the image build outside Docker: it copies the
files the builder stage copies, runs the builder's install commands into a new virtual
environment, lays out the runtime stage's working directory, and then migrates, serves and runs
the image's HEALTHCHECK command from that environment alone.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from app.db.migrate import head_revision
from app.db.url import render, to_libpq_dsn
from tests.conftest import RUM_PASSWORD, RUM_USERNAME
from tests.database import TestServer as DatabaseServer
from tests.ops_helpers import child_environment

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "docker" / "constraints.txt"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
VENV_IN_IMAGE = "/opt/venv"

# `${NAME:?message}`: Compose refuses to start while NAME is unset or empty.
REQUIRED_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+):\?[^}]+\}")


# ---------------------------------------------------------------------------------------------
# Dockerfile parsing
# ---------------------------------------------------------------------------------------------


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        return [rest for word, rest in self.instructions if word == keyword]


def logical_lines(text: str) -> list[str]:
    """Join continuation lines and drop comments, as Docker's parser does."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending:
        lines.append(pending.strip())
    return lines


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Return the global ARG defaults and the stages, with `${ARG}` in FROM resolved."""
    arguments: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            arguments[name] = default
            continue
        if keyword == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda match: arguments[match.group(1)], words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=image, name=name))
            continue
        stages[-1].instructions.append((keyword, rest))
    return arguments, stages


def copy_operands(rest: str) -> tuple[list[str], str, dict[str, str]]:
    """Split a COPY instruction into its sources, destination and --flags."""
    words = shlex.split(rest)
    flags = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    return words[:-1], words[-1], flags


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


class TestDockerfile:
    def test_parser_joins_continuations(self) -> None:
        _, parsed = parse_dockerfile(
            "ARG BASE=debian\n# comment\nFROM ${BASE} AS one\nRUN a \\\n    && b\nFROM one\n"
        )

        assert [stage.image for stage in parsed] == ["debian", "one"]
        assert parsed[0].name == "one"
        assert parsed[0].instructions == [("RUN", "a && b")]

    def test_multi_stage_slim_runtime(self, stages: list[Stage]) -> None:
        assert len(stages) >= 2
        assert stages[0].name == "builder"
        assert stages[-1].image == "python:3.11-slim"

    def test_copy_sources_exist(self, stages: list[Stage]) -> None:
        checked = 0
        for stage in stages:
            for rest in stage.arguments("COPY"):
                sources, _, flags = copy_operands(rest)
                if "from" in flags:
                    continue
                for source in sources:
                    assert (ROOT / source).exists(), f"COPY source {source} does not exist"
                    checked += 1
        assert checked >= 5

    def test_runtime_copies_venv_from_builder(self, stages: list[Stage]) -> None:
        copies = [copy_operands(rest) for rest in stages[-1].arguments("COPY")]

        assert ([VENV_IN_IMAGE], VENV_IN_IMAGE, {"from": "builder"}) in copies
        destinations = {destination for _, destination, _ in copies}
        assert {"./", "./migrations"} <= destinations

    def test_no_compilers_in_runtime(self, stages: list[Stage]) -> None:
        runtime = " ".join(rest for _, rest in stages[-1].instructions)

        for tool in ("apt-get install", "build-essential", "gcc", "pip install"):
            assert tool not in runtime
        assert any("build-essential" in rest for rest in stages[0].arguments("RUN"))

    def test_runs_as_non_root(self, stages: list[Stage]) -> None:
        users = stages[-1].arguments("USER")

        assert users, "the runtime stage sets no USER"
        assert users[-1].split(":")[0] not in ("root", "0")

    def test_healthcheck_uses_urllib(self, stages: list[Stage]) -> None:
        (check,) = stages[-1].arguments("HEALTHCHECK")

        assert "urllib.request" in check
        assert "/healthz" in check
        assert "curl" not in check
        assert "wget" not in check

    def test_serves_on_all_interfaces(self, stages: list[Stage]) -> None:
        (command,) = stages[-1].arguments("CMD")

        assert json.loads(command)[:4] == ["sso-provider", "serve", "--host", "0.0.0.0"]

    def test_no_secrets_baked_in(self, stages: list[Stage]) -> None:
        for stage in stages:
            for keyword in ("ENV", "ARG"):
                for rest in stage.arguments(keyword):
                    for secret in ("PASSWORD", "DATABASE_URL", "SECRET"):
                        assert secret not in rest.upper()

    def test_dockerignore_excludes_local_state(self) -> None:
        ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()

        for entry in (".git", ".venv", ".env", ".sso-data"):
            assert entry in ignored


class TestConstraints:
    """docker/constraints.txt pins every dependency to a version within pyproject.toml's range."""

    @staticmethod
    def pinned() -> dict[str, Version]:
        versions: dict[str, Version] = {}
        for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
            if not line or line.startswith("#"):
                continue
            name, separator, version = line.partition("==")
            assert separator, f"constraint {line!r} is not of the form name==version"
            versions[canonicalize_name(name)] = Version(version)
        return versions

    @staticmethod
    def declared() -> list[Requirement]:
        project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        listed = project["dependencies"] + project["optional-dependencies"]["dev"]
        return [Requirement(text) for text in listed]

    def test_every_dependency_pinned(self) -> None:
        pinned = self.pinned()

        for requirement in self.declared():
            name = canonicalize_name(requirement.name)
            assert name in pinned, f"{name} is not pinned: run `make constraints`"

    def test_pins_within_declared_ranges(self) -> None:
        pinned = self.pinned()

        for requirement in self.declared():
            version = pinned[canonicalize_name(requirement.name)]
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{requirement.name} {version} is outside {requirement.specifier}: "
                "run `make constraints`"
            )

    def test_install_step_uses_constraints(self) -> None:
        install = (ROOT / "docker" / "install.sh").read_text(encoding="utf-8")
        makefile = (ROOT / "Makefile").read_text(encoding="utf-8")

        assert "--constraint docker/constraints.txt" in install
        assert "-c $(CONSTRAINTS)" in makefile


class TestCompose:
    def test_database_service(self, compose: dict[str, Any]) -> None:
        db = compose["services"]["db"]

        assert db["image"] == "postgres:15"
        assert "pg_isready" in " ".join(db["healthcheck"]["test"])
        volume, _, mount = db["volumes"][0].partition(":")
        assert mount == "/var/lib/postgresql/data"
        assert volume in compose["volumes"]

    def test_migration_runs_once_after_db(self, compose: dict[str, Any]) -> None:
        migrate = compose["services"]["migrate"]

        assert migrate["command"] == ["sso-provider", "migrate"]
        assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
        assert migrate["restart"] == "no"

    def test_service_replicas_after_migration(self, compose: dict[str, Any]) -> None:
        service = compose["services"]["sso-provider"]

        assert service["deploy"]["replicas"] == 2
        condition = service["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully"
        assert "command" not in service, "the image's CMD should start the service"

    def test_build_paths_exist(self, compose: dict[str, Any]) -> None:
        for name in ("migrate", "sso-provider"):
            build = compose["services"][name]["build"]
            context = ROOT / build["context"]
            assert context.is_dir()
            assert (context / build["dockerfile"]).is_file()

    def test_database_url_matches_db(self, compose: dict[str, Any]) -> None:
        db = compose["services"]["db"]["environment"]
        url = compose["services"]["sso-provider"]["environment"]["SSO_DATABASE_URL"]

        assert url.startswith(f"postgresql://{db['POSTGRES_USER']}:")
        assert url.endswith(f"@db:5432/{db['POSTGRES_DB']}")

    def test_secrets_are_required_variables(self, compose: dict[str, Any]) -> None:
        environment = compose["services"]["sso-provider"]["environment"]

        for name in ("SSO_RUM_USERNAME", "SSO_RUM_PASSWORD"):
            assert REQUIRED_VARIABLE.fullmatch(environment[name]), name
        assert REQUIRED_VARIABLE.search(environment["SSO_DATABASE_URL"])
        assert REQUIRED_VARIABLE.fullmatch(
            compose["services"]["db"]["environment"]["POSTGRES_PASSWORD"]
        )

    def test_env_example_lists_required(self) -> None:
        required = set(REQUIRED_VARIABLE.findall(COMPOSE_FILE.read_text(encoding="utf-8")))
        example: dict[str, str] = {}
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.partition("=")
                example[name] = value

        assert required == {"POSTGRES_PASSWORD", "SSO_RUM_USERNAME", "SSO_RUM_PASSWORD"}
        assert required <= set(example)
        for name in required:
            assert example[name] == "", f"{name} must ship empty, so compose refuses to start"

    def test_env_file_ignored_by_git(self) -> None:
        assert ".env" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


# ---------------------------------------------------------------------------------------------
# The image's install step, replayed outside Docker
# ---------------------------------------------------------------------------------------------


def lay_out_stage(stage: Stage, target: Path) -> None:
    """Copy the stage's COPY sources (those not from another stage) into `target`."""
    for rest in stage.arguments("COPY"):
        sources, destination, flags = copy_operands(rest)
        if "from" in flags:
            continue
        for source in sources:
            origin = ROOT / source
            if destination.endswith("/"):
                placed = target / destination / origin.name
            else:
                placed = target / destination
            placed.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_dir():
                shutil.copytree(origin, placed, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(origin, placed)


def run_checked(arguments: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        arguments, capture_output=True, text=True, timeout=900, check=False, **options
    )
    assert result.returncode == 0, f"{arguments} failed:\n{result.stdout}\n{result.stderr}"
    return result


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
# Building and installing every dependency takes minutes on a busy 2-core machine.
@pytest.mark.timeout(1200)
async def test_image_install_outside_docker(
    stages: list[Stage], tmp_path: Path, test_server: DatabaseServer
) -> None:
    builder, runtime = stages[0], stages[-1]
    context = tmp_path / "src"
    venv = tmp_path / "venv"
    workdir = tmp_path / "srv"
    context.mkdir()
    workdir.mkdir()
    lay_out_stage(builder, context)
    lay_out_stage(runtime, workdir)

    # OS packages come from the base image; every other RUN of the builder runs here as is.
    install_steps = [rest for rest in builder.arguments("RUN") if not rest.startswith("apt-get")]
    assert install_steps
    base_python = getattr(sys, "_base_executable", sys.executable)
    environment = child_environment(PYTHON=base_python)
    for step in install_steps:
        run_checked(
            ["sh", "-c", step.replace(VENV_IN_IMAGE, str(venv))], cwd=context, env=environment
        )

    environment["PATH"] = f"{venv / 'bin'}:{environment.get('PATH', '')}"
    environment.pop("PYTHONPATH", None)
    located = run_checked(
        ["python", "-c", "import app; print(app.__file__)"], cwd=workdir, env=environment
    )
    assert located.stdout.strip().startswith(str(venv)), "app was not imported from the venv"
    usage = run_checked(["sso-provider", "--help"], cwd=workdir, env=environment)
    assert "serve" in usage.stdout
    assert "migrate" in usage.stdout

    url = await test_server.create("container_install")
    try:
        environment.update(
            SSO_DATABASE_URL=render(url),
            SSO_ENVIRONMENT="production",
            SSO_RUM_USERNAME=RUM_USERNAME,
            SSO_RUM_PASSWORD=RUM_PASSWORD,
        )
        run_checked(["sso-provider", "migrate"], cwd=workdir, env=environment)
        connection = await asyncpg.connect(to_libpq_dsn(url))
        try:
            version = await connection.fetchval("SELECT version_num FROM alembic_version")
        finally:
            await connection.close()
        assert version == head_revision()

        port = free_port()
        (check,) = runtime.arguments("HEALTHCHECK")
        check_command = json.loads(check.split("CMD", 1)[1].strip().replace("8000", str(port)))
        server = subprocess.Popen(
            ["sso-provider", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            healthy = False
            deadline = time.monotonic() + 60
            while not healthy and time.monotonic() < deadline and server.poll() is None:
                healthy = subprocess.run(check_command, env=environment, check=False,
                                         capture_output=True, timeout=30).returncode == 0
                if not healthy:
                    time.sleep(0.5)
            readiness = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
            server.send_signal(signal.SIGTERM)
            output, _ = server.communicate(timeout=60)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    finally:
        await test_server.drop(url.database or "")

    log = output.decode(errors="replace")
    assert healthy, f"the image's HEALTHCHECK command never passed:\n{log}"
    assert readiness.status_code == 200, readiness.text
    assert readiness.json()["revision"] == head_revision()
    assert server.returncode == 0, log
