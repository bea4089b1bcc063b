"""py-spy on a running process, for the benches' `--profile` (py-spy is not a dependency
of the project: `pip install py-spy`)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

ATTACH_S = 1.5  # py-spy takes about this long to attach before it samples


class Recording:
    """`py-spy record -r 500 -f raw` of `pid` into `path` until `stop` (or for
    `duration_s`): one line per stack and its sample count, the input of a flame graph."""

    def __init__(self, pid: int, path: Path, duration_s: float | None = None) -> None:
        py_spy = shutil.which("py-spy")
        assert py_spy, "--profile needs py-spy on the PATH (pip install py-spy)"
        command = [py_spy, "record", "-p", str(pid), "-r", "500", "-f", "raw", "-o", str(path)]
        if duration_s is not None:
            command += ["-d", str(max(1, round(duration_s)))]
        self._proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        """Stop sampling and wait for the file (py-spy writes it on SIGINT)."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        self._proc.wait(60)


def attach(pid: int, path: Path, duration_s: float | None = None) -> Recording:
    """Start recording `pid`, once py-spy has had time to attach."""
    recording = Recording(pid, path, duration_s)
    time.sleep(ATTACH_S)
    return recording
