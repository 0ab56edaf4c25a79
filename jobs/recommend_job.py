"""Entry point for `flink run -py jobs/recommend_job.py [streamrec run flags]`.

The Flink client executes this file; `env.execute()` inside then submits the
job to the cluster the client points at. Flags are those of `streamrec run`.
"""

import sys

from streamrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
