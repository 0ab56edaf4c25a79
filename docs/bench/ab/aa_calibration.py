"""A/A calibration on a real log: all shoppers ranked by one model (an A/A run's feedback), arms
reassigned by many salts; how often does the report's 95% interval of the arm difference exclude 0?"""
import json
import sys
import time

from streamrec.lab.evaluation.ab_report import ab_report
from udfs.ab import assign_arm
from udfs.config import ArmConfig
from udfs.records import decode_feedback_record

with open(sys.argv[1]) as f:
    records = [decode_feedback_record(json.loads(line)) for line in f]
arms = [ArmConfig(name="control", model_version="live", share=0.5),
        ArmConfig(name="b", model_version="live", share=0.5)]
n_salts = int(sys.argv[2])
excl = {"hr@10": 0, "ndcg@10": 0}
t = time.time()
for i in range(n_salts):
    salt = f"aa-{i}"
    relabeled = [r._replace(arm=assign_arm(str(r.user_id), arms, salt).name) for r in records]
    rep = ab_report(relabeled, resamples=1000)
    b = rep["arms"]["b"]
    for m in excl:
        lo, hi = b[m + "_diff_ci"]
        excl[m] += int(lo > 0 or hi < 0)
    if i == 0:
        print(json.dumps(b)[:600], time.time() - t, flush=True)
print(json.dumps({"salts": n_salts, "records": len(records), "interval_excludes_0": excl,
                  "false_positive_rate": {m: v / n_salts for m, v in excl.items()}}))
