"""Headless Debian Chromium for the browser tests, driven by Playwright.

Playwright's own browser download cannot run everywhere (it fetches a binary from its
CDN), so the tests drive the system's Chromium: `/usr/bin/chromium` from Debian's
`chromium` package, installed here with apt-get when it is missing and we are root.
`CHROMIUM_PATH` names another binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Screenshots of the end states, kept after the run (CI can upload the folder).
OUTPUT_DIR = Path(os.environ.get("TEST_OUTPUT_DIR", ROOT / "test-output")) / "screenshots"

# Headless as root needs --no-sandbox. Without the background-networking flags Chromium
# keeps trying Google's hosts, which a closed network refuses, many at a time.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _apt_install_chromium() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)


def chromium_path() -> str:
    """The Chromium binary, installed from Debian's packages if missing (as root)."""
    named = os.environ.get("CHROMIUM_PATH")
    if named:
        return named
    for candidate in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(candidate).exists():
            return candidate
    if os.geteuid() == 0 and shutil.which("apt-get"):
        try:
            _apt_install_chromium()
        except subprocess.CalledProcessError as e:
            pytest.fail(f"apt-get could not install chromium: {e.stderr.decode()[-2000:]}")
        if Path("/usr/bin/chromium").exists():
            return "/usr/bin/chromium"
    pytest.fail(
        "the browser tests need Chromium: `apt-get install chromium` (Debian) "
        "or set CHROMIUM_PATH to a Chromium or Chrome binary"
    )


def screenshot_path(name: str) -> Path:
    """Where a test saves the screenshot of its end state."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    return OUTPUT_DIR / f"{name}.png"
