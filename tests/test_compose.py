"""docker-compose.yml, .env.example and the Dockerfile agree with each other and with the
settings. `docker compose config` (or Debian's `docker-compose`, which needs no engine)
validates the file where either is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sage_core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


def compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_config_is_valid() -> None:
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed "
                    "(apt-get install docker-compose validates without an engine)")
    result = subprocess.run(
        [*command, "--env-file", str(ROOT / ".env.example"), "-f", str(COMPOSE), "config"],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    worker = rendered["services"]["worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "change-me" in rendered["services"]["api"]["environment"]["SAGETRAIN_DATABASE_URL"]


def test_services_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "minio", "migrate", "api", "worker"} <= set(services)
    for name in ("postgres", "redis", "minio", "api", "worker"):
        assert "healthcheck" in services[name], name
    assert "pg_isready" in str(services["postgres"]["healthcheck"]["test"])
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert "/readyz" in str(services["api"]["healthcheck"]["test"])
    assert services["migrate"]["command"] == ["sagetrain", "migrate"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully")
    assert services["api"]["command"][:2] == ["sagetrain", "serve"]
    assert services["worker"]["command"][:2] == ["sagetrain", "worker"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]


def test_every_sagetrain_variable_is_a_setting(compose: dict[str, Any]) -> None:
    """A misspelt SAGETRAIN_* variable would be ignored silently by pydantic-settings."""
    env = compose["x-sagetrain-env"]
    names = set(env) | set(re.findall(r"^(SAGETRAIN_\w+)=", (ROOT / ".env.example").read_text(),
                                      re.M))
    fields = {f"SAGETRAIN_{name.upper()}" for name in Settings.model_fields}
    allowed = fields | {"SAGETRAIN_BUCKET", "SAGETRAIN_IMAGE"}  # compose's own variables
    assert {n for n in names if n.startswith("SAGETRAIN_")} <= allowed
    for service in ("api", "worker", "migrate"):
        assert compose["services"][service]["environment"] == env


def test_env_example_covers_the_compose_variables(compose: dict[str, Any]) -> None:
    used = set(re.findall(r"\$\{(\w+)(?::-[^}]*)?\}", COMPOSE.read_text()))
    documented = set(re.findall(r"^(\w+)=", (ROOT / ".env.example").read_text(), re.M))
    assert used <= documented, sorted(used - documented)


def test_dockerfile_installs_the_project() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert "pip install" in text and "migrations" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
