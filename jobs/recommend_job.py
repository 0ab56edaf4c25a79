"""Entry point for `flink run -py jobs/recommend_job.py [flags of streamrec run]`.

The Flink client executes this file; `env.execute()` inside then submits the
job to the cluster the client points at.
"""

import sys

from jobs.entry import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
