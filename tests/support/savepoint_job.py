"""`streamrec run --source kafka --sink kafka` with a test keyed function, for test_savepoint.py.

Usage (as `flink run -py tests/support/savepoint_job.py ...`; config from STREAMREC_* env):
  savepoint_job.py v1-writer       the job before STATE_VERSION 2: user state written as v1
  savepoint_job.py probe FILE      the current job, recording each user's stored state to FILE
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jobs.entry import Endpoint, run_job  # noqa: E402
from tests.support.state_versions import StateProbe, V1StateWriter  # noqa: E402
from udfs.config import load_config  # noqa: E402

if __name__ == "__main__":
    config = load_config()
    mode = sys.argv[1]
    if mode == "v1-writer":
        recommend: V1StateWriter | StateProbe = V1StateWriter(config)
    elif mode == "probe":
        recommend = StateProbe(config, sys.argv[2])
    else:
        sys.exit(f"unknown mode {mode!r}")
    run_job(config, Endpoint("kafka"), Endpoint("kafka"), recommend=recommend)
