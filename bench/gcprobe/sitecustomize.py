"""A probe, on PYTHONPATH for a benchmark's processes only: every collection of the
garbage collector's oldest generation in a gunicorn process, timed, one line each in
`<temp dir>/rstreams-gcprobe/<pid>.log`. Under gevent such a pass stops every connection
of the process; docs/BENCHMARKS.md ("Full garbage collections") shows how to use it.

    PYTHONPATH=bench/gcprobe .venv/bin/python -m bench.followers --loads 1x1
"""

import gc
import os
import sys
import tempfile
import time

if any("gunicorn" in arg for arg in sys.argv):
    _OUT = os.path.join(tempfile.gettempdir(), "rstreams-gcprobe")
    os.makedirs(_OUT, exist_ok=True)
    _started = [0.0, 0]

    def _time_full_passes(phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            _started[1] = sum(len(gc.get_objects(generation)) for generation in range(3))
            _started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - _started[0]) * 1000
        with open(os.path.join(_OUT, f"{os.getpid()}.log"), "a") as f:
            f.write(
                f"{time.time():.3f} full pass {ms:.2f} ms over {_started[1]} objects, "
                f"{info['collected']} freed\n"
            )

    gc.callbacks.append(_time_full_passes)
