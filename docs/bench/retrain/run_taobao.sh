#!/bin/bash
# The Taobao retrain run: a first version from the log as it stood a day earlier, then the whole
# sample through the input topic, retrained, compared with it and published if not worse.
set -euo pipefail
cd /work/wt-registry
B=${BOOTSTRAP:-127.0.0.1:39092}  # `streamrec kafka start`; the recorded run used a private LocalKafka
WORK=${WORK:-/tmp/rt}
REG=$WORK/registry
DATA=/work/shared/data/taobao/userbehavior_users_head.csv
S=".venv/bin/python -m streamrec.cli"
OUT=docs/bench/retrain
run() { echo; echo "\$ $*"; "$@"; }
mkdir -p $WORK && rm -rf $REG $WORK/art-day-before $WORK/art-today
echo "# $(date -u +%FT%TZ), $(nproc) cores shared with two other sessions; broker at $B"
run env PYTHONPATH=. .venv/bin/python docs/bench/retrain/day_before.py $DATA $WORK/taobao_day_before.csv 24
run $S retrain --events $WORK/taobao_day_before.csv --hours 48 --registry $REG --out $WORK/art-day-before \
    --bootstrap-servers $B --device cpu --no-progress --json-out $OUT/taobao_day_before.json
run .venv/bin/python -c "from streamrec.lab.local.kafka import create_topics; print(create_topics('$B', ['behavior-events']))"
run $S replay --events $DATA --topic behavior-events --bootstrap-servers $B --no-progress
run $S retrain --from-topic behavior-events --hours 48 --registry $REG --out $WORK/art-today \
    --bootstrap-servers $B --device cpu --no-progress --json-out $OUT/taobao.json
run $S model list --registry $REG
run $S consume --topic model-control --bootstrap-servers $B --timeout 5
run cat $REG/history.jsonl
