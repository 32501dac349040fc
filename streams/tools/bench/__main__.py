"""The bench's child processes: ``noop COUNT RESULT`` (the pipeline's ceiling) and
``memory ITEMS EVENTS`` (one catalogue size of the memory section)."""

import sys
from pathlib import Path

if sys.argv[1] == "noop":
    from onevec.streams.tools.bench.noop import noop_main

    noop_main(int(sys.argv[2]), Path(sys.argv[3]))
elif sys.argv[1] == "memory":
    from onevec.streams.tools.bench.memory import memory_main

    memory_main(int(sys.argv[2]), int(sys.argv[3]))
else:
    raise SystemExit(f"unknown child command {sys.argv[1]!r}")
