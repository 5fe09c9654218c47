#!/usr/bin/env python3
"""The `tokenizers` side of bench/tokenizer_bench: trains the Llama 3 style tokenizer of
tests/python/make_tokenizers.py on the shipped corpus, writes it to --out, then times encoding
every line of --bench-corpus on one thread (add_special_tokens=False), both with encode_batch
and with a loop of encode, best of --repeat each. Prints one JSON object on stdout.

  RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false tokenizer_bench_ref.py \
      --train-corpus tests/data/tokenizer_corpus.txt --out DIR --bench-corpus big.txt
"""
import os

# Before `tokenizers` is imported: one thread, as the C++ side has.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests",
                                "python"))
from make_tokenizers import make_llama3  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def read_lines(path):
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-corpus", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--bench-corpus", required=True)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    tok_json, config = make_llama3(read_lines(args.train_corpus))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok_json, f, ensure_ascii=False)
    with open(os.path.join(args.out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False)
    tok = Tokenizer.from_file(os.path.join(args.out, "tokenizer.json"))

    lines = read_lines(args.bench_corpus)
    nbytes = sum(len(line.encode("utf-8")) for line in lines)
    batch_s = loop_s = float("inf")
    tokens = id_sum = 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        encs = tok.encode_batch(lines, add_special_tokens=False)
        batch_s = min(batch_s, time.perf_counter() - t0)
        tokens = sum(len(e.ids) for e in encs)
        id_sum = sum(sum(e.ids) for e in encs)
        del encs
        t0 = time.perf_counter()
        for line in lines:
            tok.encode(line, add_special_tokens=False)
        loop_s = min(loop_s, time.perf_counter() - t0)
    json.dump({"lines": len(lines), "bytes": nbytes, "tokens": tokens, "id_sum": id_sum,
               "encode_batch_s": batch_s, "encode_loop_s": loop_s}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
