#!/usr/bin/env python3
"""Summarizes a chrome trace from `train_bench --profile`: self time per op, top N.

  profile_summary.py trace.json [N]
"""
import collections
import json
import sys

events = json.load(open(sys.argv[1]))
if isinstance(events, dict):
    events = events.get("traceEvents", [])
top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
spans = [e for e in events if e.get("ph") == "X"]
spans.sort(key=lambda e: (e.get("tid"), e["ts"], -e["dur"]))
# Self time: subtract direct children's durations (same thread, nested intervals).
self_time = collections.Counter()
count = collections.Counter()
stack = []
for e in spans:
    while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
        stack.pop()
    if stack and stack[-1].get("tid") == e.get("tid"):
        self_time[stack[-1]["name"]] -= e["dur"]
    self_time[e["name"]] += e["dur"]
    count[e["name"]] += 1
    stack.append(e)
total = sum(v for v in self_time.values())
print("%-50s %10s %7s %8s" % ("op", "self_ms", "share", "calls"))
for name, t in self_time.most_common(top):
    print("%-50s %10.1f %6.1f%% %8d" % (name[:50], t / 1000, 100 * t / total, count[name]))
print("total self time %.1f ms" % (total / 1000))
