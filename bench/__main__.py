"""`python -m bench`: run every bench/bench_*.py (each prints ratios measured side by side in one run).

`python -m bench soak [--minutes M]` runs the soak (bench/soak.py, 20 minutes) instead; it never runs by default.
`python -m bench topology [--models tiny medium]` compares split and colocated placement (bench/topology.py).
"""

import importlib
import logging
import os
import pkgutil
import sys
import time
from pathlib import Path

# The benches print their tables only: no progress bars, no libraries' INFO lines (set before they are imported;
# the Ray workers and subprocesses a bench starts inherit them)
QUIET_ENV = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "VLLM_LOGGING_LEVEL": "WARNING",
}


def main() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    logging.getLogger("ray").setLevel(logging.WARNING)
    if sys.argv[1:2] == ["soak"]:
        from bench import soak

        soak.main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["topology"]:
        from bench import topology

        topology.main(sys.argv[2:])
        return
    only = set(sys.argv[1:])
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("bench_"))
    for name in names:
        if only and name.removeprefix("bench_") not in only and name not in only:
            continue
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        importlib.import_module(f"bench.{name}").main()
        print(f"--- {name}: {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
