#!/usr/bin/env python3
"""Summarizes a chrome trace from `train_bench --profile` (Kineto).

  profile_summary.py trace.json [N]

Host operators: self time per op, top N (nested spans on one thread subtract their children).
GPU kernels (CUDA runs): device time per kernel name, top N, and how busy the GPU was over the
traced window: a busy share well under 100% means the GPU waited for the host (launch-bound or
synchronising).
"""
import collections
import json
import sys

events = json.load(open(sys.argv[1]))
if isinstance(events, dict):
    events = events.get("traceEvents", [])
top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
kernels = [e for e in spans if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
host = [e for e in spans if e.get("cat") in (None, "cpu_op", "Operator", "user_annotation")]

host.sort(key=lambda e: (e.get("pid"), e.get("tid"), e["ts"], -e["dur"]))
self_time = collections.Counter()
count = collections.Counter()
stack = []
for e in host:
    while stack and (stack[-1].get("tid") != e.get("tid") or
                     stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]):
        stack.pop()
    if stack:
        self_time[stack[-1]["name"]] -= e["dur"]
    self_time[e["name"]] += e["dur"]
    count[e["name"]] += 1
    stack.append(e)
total = sum(v for v in self_time.values())
print("host operators")
print("%-50s %10s %7s %8s" % ("op", "self_ms", "share", "calls"))
for name, t in self_time.most_common(top):
    print("%-50s %10.1f %6.1f%% %8d" % (name[:50], t / 1000, 100 * t / max(total, 1), count[name]))
print("total host self time %.1f ms" % (total / 1000))

if kernels:
    by_name = collections.Counter()
    calls = collections.Counter()
    for e in kernels:
        by_name[e["name"]] += e["dur"]
        calls[e["name"]] += 1
    busy = 0.0
    end = None
    for e in sorted(kernels, key=lambda e: e["ts"]):  # union of kernel intervals
        s, f = e["ts"], e["ts"] + e["dur"]
        if end is None or s > end:
            busy += f - s
            end = f
        elif f > end:
            busy += f - end
            end = f
    window = max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)
    ktotal = sum(by_name.values())
    print("\nGPU kernels")
    print("%-70s %10s %7s %8s" % ("kernel", "gpu_ms", "share", "calls"))
    for name, t in by_name.most_common(top):
        print("%-70s %10.1f %6.1f%% %8d" % (name[:70], t / 1000, 100 * t / ktotal, calls[name]))
    print("kernels: %d launches, %.1f ms of device time; GPU busy %.1f ms of a %.1f ms window "
          "(%.0f%%)" % (len(kernels), ktotal / 1000, busy / 1000, window / 1000,
                        100 * busy / max(window, 1)))
