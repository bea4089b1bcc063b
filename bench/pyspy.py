"""py-spy on a running process, for the benches' `--profile` (py-spy is not a dependency
of the project: `pip install py-spy`), and what a record holds most:

    .venv/bin/python -m bench.pyspy RECORD [--top 40]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import time
from pathlib import Path

ATTACH_S = 1.5  # py-spy takes about this long to attach before it samples


class Recording:
    """`py-spy record -r 500 -f raw` of `pid` into `path` until `stop`: one line per stack
    and its sample count, the input of a flame graph."""

    def __init__(self, pid: int, path: Path) -> None:
        py_spy = shutil.which("py-spy")
        assert py_spy, "--profile needs py-spy on the PATH (pip install py-spy)"
        command = [py_spy, "record", "-p", str(pid), "-r", "500", "-f", "raw", "-o", str(path)]
        self._proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        """Stop sampling and wait for the file (py-spy writes it on SIGINT)."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        self._proc.wait(60)


def attach(pid: int, path: Path) -> Recording:
    """Start recording `pid`, once py-spy has had time to attach."""
    recording = Recording(pid, path)
    time.sleep(ATTACH_S)
    return recording


def shares(path: Path, top: int = 40) -> list[tuple[float, str]]:
    """The functions in most of a raw record's samples: (% of samples whose stack holds
    the function, the function and its file)."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        total += int(n)
        # A frame is "function (file:line)": the function wherever in it a sample was.
        for frame in {frame.rpartition(":")[0] + ")" for frame in stack.split(";") if frame}:
            counts[frame] = counts.get(frame, 0) + int(n)
    ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
    return [(100 * n / total, frame) for frame, n in ranked]


def main() -> None:
    """Print the functions in most of a record's samples."""
    parser = argparse.ArgumentParser(
        description="The functions in most of a py-spy record's samples"
    )
    parser.add_argument("record", type=Path, help="a `--profile` file (py-spy's raw format)")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    for share, frame in shares(args.record, args.top):
        print(f"{share:5.1f} %  {frame}")


if __name__ == "__main__":
    main()
