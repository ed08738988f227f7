"""./run bench NAME [args]: the benchmarks. Each prints its numbers; none of them is a test.

    repair    records repaired per second toward Firestore (bench/repair.py)
    ops       run_job overhead, explain latency, history queries (bench/ops.py)
"""

from __future__ import annotations

import sys

BENCHES = {"repair": "bench.repair", "ops": "bench.ops"}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHES:
        print(__doc__, file=sys.stderr)
        return 2
    import importlib

    importlib.import_module(BENCHES[sys.argv[1]]).main(sys.argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
