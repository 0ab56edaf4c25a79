"""Write the Taobao sample as it stood HOURS before its newest event (for the first registry version).

Usage: day_before.py SRC OUT HOURS"""
import sys

from udfs.logs import load_events, write_userbehavior_csv

src, out, hours = sys.argv[1], sys.argv[2], float(sys.argv[3])
events = load_events(src, "userbehavior", sort=True)
cut = events[-1].ts - int(hours * 3_600_000)
n = write_userbehavior_csv([e for e in events if e.ts < cut], out)
print(f"{n} of {len(events)} events before {cut} ms -> {out}")
