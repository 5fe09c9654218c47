#!/usr/bin/env python3
"""Distributed lora-train, per parallel layout, against one process at the same global batch.

For each layout: bytes rank 0 sends per step (the engine's counter: bytes each collective puts
on the wire under the ring cost model) against the analytical minimum of the algorithm, peak
parameter bytes per rank against the single process, and step time against the single process.
Ranks are processes on loopback (Gloo); they share this machine's cores, so step-time ratios
measure overhead, not speed-up.

  bench/dist_bench.py [--build build] [--flavor debugmodel] [--steps 12] [--seq-len 256]
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile

FLAVORS = {  # hidden, layers, heads, kv heads, intermediate, vocab
    "tiny": (64, 2, 4, 2, 160, 512),
    "debugmodel": (256, 6, 16, 16, 768, 2048),
}

LAYOUTS = [  # name, world, degrees, pp schedule
    ("FSDP 2", 2, {"data_parallel_shard_degree": 2}),
    ("FSDP 4", 4, {"data_parallel_shard_degree": 4}),
    ("HSDP 2x2", 4, {"data_parallel_replicate_degree": 2, "data_parallel_shard_degree": 2}),
    ("PP 2 1F1B", 2, {"pipeline_parallel_degree": 2, "data_parallel_shard_degree": 1}),
    ("PP 2 GPipe", 2, {"pipeline_parallel_degree": 2, "data_parallel_shard_degree": 1,
                       "pipeline_parallel_schedule": "GPipe"}),
    ("CP 2", 2, {"context_parallel_degree": 2, "data_parallel_shard_degree": 1}),
    ("CP 2 ring", 2, {"context_parallel_degree": 2, "data_parallel_shard_degree": 1,
                      "context_parallel_method": "ring"}),
    ("CP 4", 4, {"context_parallel_degree": 4, "data_parallel_shard_degree": 1}),
    ("CP 4 ring", 4, {"context_parallel_degree": 4, "data_parallel_shard_degree": 1,
                      "context_parallel_method": "ring"}),
    ("TP 2", 2, {"tensor_parallel_degree": 2, "data_parallel_shard_degree": 1}),
    ("FSDP 2 x PP 2", 4, {"data_parallel_shard_degree": 2, "pipeline_parallel_degree": 2}),
    ("FSDP 2 x PP 2 reshard", 4, {"data_parallel_shard_degree": 2, "pipeline_parallel_degree": 2,
                                  "fsdp_reshard_after_forward": "always"}),
    ("FSDP 2 no reshard", 2, {"data_parallel_shard_degree": 2,
                              "fsdp_reshard_after_forward": "never"}),
    ("CP 2 x FSDP 2", 4, {"data_parallel_shard_degree": 2, "context_parallel_degree": 2}),
]


def spec_text(flavor, steps, seq_len, rows, threads, checkpoint="none"):
    return f"""[job]
name = "dist-bench"
[model]
flavor = "{flavor}"
[lora]
rank = 8
[training]
steps = {steps}
seq_len = {seq_len}
local_batch_size = {rows}
mixed_precision = "bf16"
num_threads = {threads}
activation_checkpoint = "{checkpoint}"
[dataset]
name = "synthetic-arith"
num_examples = 4000
validation_fraction = 0.0
[checkpoint]
interval = 0
"""


def run(binary, spec, out, world, degrees):
    port = random.randint(20000, 40000)
    sets = [f"resources.world_size={world}"]
    for k, v in degrees.items():
        sets.append(f"parallelism.{k}={v}")
    args = [binary, "run", "--job", spec, "--out", out, "--quiet"]
    for s in sets:
        args += ["--set", s]
    procs = []
    for r in range(world):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    for r, p in enumerate(procs):
        _, err = p.communicate(timeout=1200)
        if p.returncode != 0:
            sys.exit(f"rank {r} failed: {err[-2000:]}")
    return read_events(os.path.join(out, "events.jsonl")), json.load(
        open(os.path.join(out, "summary.json")))


def read_events(path):
    """lora.engine.v1.EngineEvent lines: {"time": ..., "<kind>": {...}}."""
    return [json.loads(line) for line in open(path) if line.strip()]


def of_kind(events, kind):
    return [e[kind] for e in events if kind in e]


def number(message, key):
    """A field of a proto3 JSON message: int64 fields arrive as strings, zeros are omitted."""
    return float(message.get(key, 0))


def per_step(events, key):
    steps = of_kind(events, "step")[2:]  # warm-up
    if key == "bytes_sent":
        deltas = [number(b, key) - number(a, key) for a, b in zip(steps, steps[1:])]
        return statistics.median(deltas)
    return statistics.median(number(e, key) for e in steps)


def analytical_min(flavor, degrees, rows, seq_len, trainable, lora_rank=8):
    """Bytes one rank must send per step for the algorithm this layout runs (ring costs).

    bf16 for gathered weights, activations and K/V; fp32 for every reduction (gradients,
    TP partial sums), as the engine does.
    """
    H, L, heads, kv_heads, inter, vocab = FLAVORS[flavor]
    kv = H // heads * kv_heads
    layer_bytes = 2 * (2 * H * H + 2 * H * kv + 3 * H * inter + 2 * H)
    adapter_bytes = 4 * trainable
    S = degrees.get("data_parallel_shard_degree", 1)
    R = degrees.get("data_parallel_replicate_degree", 1)
    P = degrees.get("pipeline_parallel_degree", 1)
    C = degrees.get("context_parallel_degree", 1)
    Tp = degrees.get("tensor_parallel_degree", 1)
    layers = L / P
    B, T = rows, seq_len
    total = 0.0
    ring = lambda n: (n - 1) / n
    # FSDP, resharding after forward: each owned layer gathered for forward and again for the
    # backward's recomputation, per micro-batch under pipelining; the embedding once per
    # micro-batch on the first stage (rank 0's), the output projection once per step on the
    # last. Holding gathered weights for the step (the default under PP): each once per step.
    M = degrees.get("pipeline_parallel_microbatches", 4) if P > 1 else 1
    reshard = degrees.get("fsdp_reshard_after_forward", "default")
    hold = reshard == "never" or (reshard == "default" and P > 1)
    total += (1 if hold else 2 * M) * layers * ring(S) * layer_bytes
    total += ((1 if hold else M) + (1 if P == 1 else 0)) * ring(S) * 2 * vocab * H
    # Adapter gradients: one all-reduce over data- and context-parallel replicas (this rank's
    # stage's adapters; under TP the slices it holds).
    dp = R * S * C
    stage_adapters = adapter_bytes / P / Tp
    total += 2 * ring(dp) * stage_adapters
    # Pipeline: activations forward, their gradients backward, once per stage boundary
    # (averaged over ranks: the first stage sends the one, the last the other).
    if P > 1:
        total += B * T * H * 2 * 2 * (P - 1) / P
    # Context parallel, all-gather: per layer, K and V gathered (bf16); their gradients
    # reduce-scattered (fp32). Recomputation under FSDP gathers again. Ring: every forward
    # passes cp - 1 blocks on; the backward passes cp - 1 blocks and cp fp32 dK/dV
    # accumulators (the last hop takes each home).
    if C > 1:
        forward_passes = 2 if S > 1 else 1
        block = B * (T // C) * kv * 2  # K and V elements of one rank's chunks
        total += layers * forward_passes * (C - 1) * block * 2
        if degrees.get("context_parallel_method") == "ring":
            total += layers * ((C - 1) * block * 2 + C * block * 4)
        else:
            total += layers * (C - 1) * block * 4
    # Tensor parallel: per layer two all-reduces forward (attention, MLP outputs) and two
    # backward (their inputs' gradients; none for rank 0's first layer, whose input is the
    # frozen embedding's output), fp32; plus the replicated LoRA factors' gradients.
    if Tp > 1:
        total += (layers * 4 - 1) * 2 * ring(Tp) * B * T * H * 4
        # Replicated factors inside the layers (lora_a of q/k/v/gate/up, lora_b of o/down) see
        # only this rank's slice of the other factor: their gradients are summed.
        total += 2 * ring(Tp) * layers * 7 * lora_rank * H * 4
    return total


def fmt_bytes(b):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(b) < 1024:
            return f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} TiB"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--flavor", default="debugmodel", choices=sorted(FLAVORS))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rows", type=int, default=4, help="local batch per data-parallel replica")
    ap.add_argument("--only", default="", help="comma-separated layout names")
    ap.add_argument("--activation-checkpoint", default="none", choices=["none", "full"])
    a = ap.parse_args()
    binary = os.path.join(a.build, "worker", "lora-train")
    cores = os.cpu_count() or 1
    work = tempfile.mkdtemp(prefix="dist-bench-")
    singles = {}
    print(f"flavor {a.flavor}, bf16, seq_len {a.seq_len}, {a.rows} rows per replica, "
          f"{a.steps} steps, {cores} cores")
    print("| layout | ranks | bytes/step rank 0 | analytical min | ratio | resident params "
          "rank 0 | vs single | peak params/rank | vs single | step s | vs single | peak RSS rank 0 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    try:
        for name, world, degrees in LAYOUTS:
            if a.only and name not in a.only.split(","):
                continue
            dp = degrees.get("data_parallel_shard_degree", 1) * degrees.get(
                "data_parallel_replicate_degree", 1)
            rows = a.rows * dp
            if rows not in singles:
                spec = os.path.join(work, f"single-{rows}.toml")
                open(spec, "w").write(spec_text(a.flavor, a.steps, a.seq_len, rows, cores, a.activation_checkpoint))
                ev, summary = run(binary, spec, os.path.join(work, f"single-{rows}"), 1, {})
                singles[rows] = (per_step(ev, "step_seconds"), number(summary, "parameter_bytes"))
            single_step, single_params = singles[rows]
            spec = os.path.join(work, f"{world}.toml")
            threads = max(1, cores // world)
            open(spec, "w").write(spec_text(a.flavor, a.steps, a.seq_len, a.rows, threads, a.activation_checkpoint))
            out = os.path.join(work, name.replace(" ", "_"))
            ev, summary = run(binary, spec, out, world, degrees)
            sent = per_step(ev, "bytes_sent")
            step_s = per_step(ev, "step_seconds")
            minimum = analytical_min(a.flavor, degrees, a.rows, a.seq_len,
                                     number(summary, "trainable_parameters"))
            peak = max(number(summary, "peak_parameter_bytes"), *[
                number(s, "peak_parameter_bytes")
                for r in range(1, world)
                for s in of_kind(read_events(os.path.join(out, f"rank-{r}", "events.jsonl")),
                                 "rank_status")])
            resident = number(summary, "parameter_bytes")
            print(f"| {name} | {world} | {fmt_bytes(sent)} | {fmt_bytes(minimum)} | "
                  f"{sent / minimum:.2f} | {fmt_bytes(resident)} | "
                  f"{resident / single_params:.2f} | {fmt_bytes(peak)} | {peak / single_params:.2f} | "
                  f"{step_s:.3f} | {step_s / single_step:.2f} | {fmt_bytes(number(summary, 'peak_rss_bytes'))} |",
                  flush=True)
        print(f"single process: " + ", ".join(
            f"{r} rows {s:.3f} s/step, params {fmt_bytes(p)}" for r, (s, p) in singles.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
