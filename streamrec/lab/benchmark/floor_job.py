"""Entry point for `flink run -py streamrec/lab/benchmark/floor_job.py --floor model|none`: the bench's
floor phase (:mod:`streamrec.lab.benchmark.floor`). A file of its own, like ``jobs/recommend_job.py``, so
the keyed function is pickled by reference to its module, not by value from ``__main__``."""

import sys

from streamrec.lab.benchmark.floor import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
