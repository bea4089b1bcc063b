"""What a non-editable install and the Docker image carry: the wheel built from this tree,
installed in a clean virtualenv, serves the demo page and the browser client; the image
copies every package the wheel has."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
import requests
from setuptools import find_packages

from rstreams.localredis import free_port
from tests.conftest import RedisUnderTest
from tests.procs import ROOT, child_env


def top_level_packages() -> set[str]:
    """The packages pyproject's `packages.find` puts in the wheel, top level only."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = find_packages(str(ROOT), include=config["packages"]["find"]["include"])
    return {name.split(".")[0] for name in found}


def test_the_image_copies_every_package_of_the_wheel() -> None:
    copied = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if match := re.match(r"COPY\s+(?!--)(.+)$", line.strip()):
            *sources, _dest = match[1].split()
            copied.update(source.rstrip("/") for source in sources)
    assert top_level_packages() == {"api", "worker", "shared", "rstreams"}
    assert top_level_packages() <= copied, "the Dockerfile leaves a package out"
    assert {"pyproject.toml", "README.md"} <= copied
    # Package data lives inside the packages: copying a package copies its data.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, patterns in config.get("package-data", {}).items():
        assert package.split(".")[0] in copied
        for pattern in patterns:
            assert list((ROOT / package.replace(".", "/")).glob(pattern)), pattern


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_wheel_install_serves_the_page_and_the_browser_client(
    tmp_path: Path, redis_server: RedisUnderTest
) -> None:
    # Built from a copy: setuptools reuses a build/ folder it finds in the tree.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in top_level_packages():
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(wheels)],
        check=True,
        timeout=120,
    )
    (wheel,) = wheels.glob("resumable_streams-*.whl")
    # What the code reads besides Python (the page's files, the store's Lua scripts) ships
    # only if pyproject's package-data names it.
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    data = {
        str(path.relative_to(ROOT))
        for package in top_level_packages()
        for path in (ROOT / package).rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc")
    }
    assert {"shared/store/lua/append.lua", "api/static/rstreams.js"} <= data
    assert data <= shipped, f"missing from the wheel: {sorted(data - shipped)}"
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=120,
    )
    port = free_port()
    env = child_env(
        REDIS_URL=redis_server.url,
        CELERY_QUEUE=f"q-wheel-{port}",
        WEB_KEEPALIVE_S="1",
        XDG_RUNTIME_DIR=str(tmp_path),
    )
    env.pop("PYTHONPATH", None)
    # Started outside the tree, so nothing is imported from the source folders.
    dev = subprocess.Popen(
        [env_dir / "bin" / "rstreams", "dev", "--port", str(port), "--worker-concurrency", "2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert dev.stdout is not None
    lines = []
    try:
        for line in dev.stdout:
            lines.append(line)
            if line.startswith("Ready"):
                break
        assert lines and lines[-1].startswith("Ready"), "".join(lines[-40:])
        base = f"http://127.0.0.1:{port}"
        page = requests.get(base + "/", timeout=10)
        assert page.status_code == 200 and 'data-testid="prompt"' in page.text
        module = requests.get(base + "/static/rstreams.js", timeout=10)
        assert module.status_code == 200 and "export class ResumableStreams" in module.text
        assert requests.get(base + "/static/rstreams.d.ts", timeout=10).status_code == 200
        # The installed command-line client runs too, and so does a generation.
        done = subprocess.run(
            [env_dir / "bin" / "rstreams", "--url", base, "generate", "wheel", "--max-tokens", "3"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip()
        installed = subprocess.run(
            [python, "-c", "import api; print(api.__file__)"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert installed.startswith(str(env_dir)), installed
    finally:
        dev.send_signal(signal.SIGINT)
        dev.communicate(timeout=60)
