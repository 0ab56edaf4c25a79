#!/usr/bin/env bash
# An A/B test on the shared Taobao sample (userbehavior_users_head), through the bounded job:
# control = a model trained on the log's first half (live), stale = the same model trained on its
# first quarter only (pinned from the registry); lists and feedback for the second half only.
set -euo pipefail
DATA=${DATA:-../shared/data/taobao/userbehavior_users_head.csv}
W=${W:-/tmp/ab}
S=python
mkdir -p "$W"
# median and first-quartile event time of the log, in s (printed by the loader's summary)
read -r Q1 MEDIAN < <($S - "$DATA" "$W/log.sorted.msgpack" <<'PY'
import sys, numpy as np
from udfs.logs import load_events, write_events_msgpack
ev = load_events(sys.argv[1], sort=True)
write_events_msgpack(ev, sys.argv[2])
ts = np.array([e.ts for e in ev]) // 1000
print(int(np.percentile(ts, 25)), int(np.median(ts)))
PY
)
$S -m streamrec.cli train --events "$DATA" --until "$MEDIAN" --out "$W/fresh" --device cpu
$S -m streamrec.cli train --events "$DATA" --until "$Q1" --out "$W/stale" --device cpu
STALE=$($S -c "import json,sys; print(json.load(open(sys.argv[1]))['model_version'])" "$W/stale/manifest.json")
$S -m streamrec.cli model publish --artifact "$W/stale" --registry "$W/registry" --no-announce
STREAMREC_AB_ARMS="[{\"name\": \"control\", \"model_version\": \"live\", \"share\": 0.5},
                    {\"name\": \"stale\", \"model_version\": \"$STALE\", \"share\": 0.5}]" \
STREAMREC_AB_SALT=taobao-ab-1 STREAMREC_RANKING_PROVIDER=cpu \
$S -m streamrec.cli run --source "file:$W/log.sorted.msgpack" --sink "file:$W/out.jsonl" --since "$MEDIAN" \
    --artifact "$W/fresh" --registry "$W/registry" --top-k 10
$S -m streamrec.cli ab report --file "$W/out.jsonl.feedback.jsonl" --out docs/bench/ab
# The same split with both arms on the live model (an A/A test), and the A/A calibration over 400 salts:
STREAMREC_AB_ARMS='[{"name": "control", "model_version": "live", "share": 0.5},
                    {"name": "stale", "model_version": "live", "share": 0.5}]' \
STREAMREC_AB_SALT=taobao-ab-1 STREAMREC_RANKING_PROVIDER=cpu \
$S -m streamrec.cli run --source "file:$W/log.sorted.msgpack" --sink "file:$W/aa.jsonl" --since "$MEDIAN" \
    --artifact "$W/fresh" --registry "$W/registry" --top-k 10
$S -m streamrec.cli ab report --file "$W/aa.jsonl.feedback.jsonl" --out docs/bench/ab/aa-same-split
$S docs/bench/ab/aa_calibration.py "$W/aa.jsonl.feedback.jsonl" 400 | tail -1 > docs/bench/ab/aa_calibration.json
