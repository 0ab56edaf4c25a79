"""`streamrec run --source kafka --sink kafka` whose keyed function fails once.

Usage: python tests/support/fault_job.py MARKER_FILE AFTER_SECONDS (config from STREAMREC_* env).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jobs.entry import Endpoint, run_job  # noqa: E402
from tests.support.faults import FailOnce  # noqa: E402
from udfs.config import load_config  # noqa: E402

if __name__ == "__main__":
    config = load_config()
    run_job(config, Endpoint("kafka"), Endpoint("kafka"), recommend=FailOnce(config, sys.argv[1], float(sys.argv[2])))
