#!/usr/bin/env python3
"""PEFT and transformers as judges of lora-train's adapters and merged exports (tests only).

  peft_judge.py make-adapter BASE OUT KIND   a PEFT adapter on BASE with non-zero factors:
      KIND = patterns (rank_pattern + alpha_pattern), rslora, regex (target_modules regex),
             layers (layers_to_transform), dora (use_dora, magnitudes perturbed),
             pissa (init that modifies the base)
  peft_judge.py loss BASE DATA [--adapter DIR] [--merge-out DIR]
      mean next-token loss in transformers of BASE (+ the adapter through PeftModel), as JSON;
      with --merge-out, also writes PEFT's merge_and_unload() there
  peft_judge.py compare-models A B           max |weight difference| of two checkpoints, as JSON
  peft_judge.py step-signs BASE START TRAINED DATA LR
      PEFT's gradient of the summed loss over DATA at adapter START, against the first AdamW
      step lora-train took from START to TRAINED (an Adam step moves each weight by -LR * sign
      of its gradient): the fraction of weights whose gradient sign agrees, as JSON
  peft_judge.py load-merged DIR DATA         AutoModelForCausalLM + AutoTokenizer-free load of a
                                             merged directory alone; its loss, as JSON
"""
import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
import peft  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

transformers.logging.set_verbosity_error()


def read_data(path):
    with open(path) as f:
        return [json.loads(line)["input_ids"] for line in f if line.strip()]


def mean_loss(model, seqs):
    total, count = 0.0, 0
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor([s])
            logits = model(input_ids=ids).logits[0, :-1].float()
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += len(s) - 1
    return total / count


def load_base(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def make_adapter(base, out, kind):
    model = load_base(base)
    common = dict(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False)
    if kind == "patterns":
        cfg = peft.LoraConfig(**common, target_modules=["q_proj", "v_proj", "down_proj"],
                              rank_pattern={"v_proj": 2, "layers.1.self_attn.q_proj": 6},
                              alpha_pattern={"down_proj": 3.0})
    elif kind == "rslora":
        cfg = peft.LoraConfig(**common, target_modules=["q_proj", "k_proj", "o_proj", "up_proj"],
                              use_rslora=True)
    elif kind == "regex":
        cfg = peft.LoraConfig(**common, target_modules=r".*\.(self_attn\.(q|v)_proj|mlp\.gate_proj)")
    elif kind == "layers":
        cfg = peft.LoraConfig(**common, target_modules=["q_proj", "v_proj"],
                              layers_to_transform=[0, 2], layers_pattern="layers")
    elif kind == "dora":
        cfg = peft.LoraConfig(**common, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                              use_dora=True)
    elif kind == "pissa":
        cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights="pissa")
    else:
        sys.exit(f"unknown kind {kind}")
    torch.manual_seed(3)
    pm = peft.get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if ("lora_A" in name or "lora_B" in name) and kind != "pissa":
                p.normal_(0.0, 0.2)  # both factors non-zero, so the adapter changes the output
            elif "lora_magnitude" in name:
                p.mul_(1 + 0.3 * torch.randn_like(p))  # away from ||W + BA||
    pm.save_pretrained(out, safe_serialization=True)
    print(json.dumps({"written": out}))


def loss(base, data, adapter, merge_out):
    model = load_base(base)
    if adapter:
        model = peft.PeftModel.from_pretrained(model, adapter).eval()
    result = {"loss": mean_loss(model, read_data(data))}
    if merge_out:
        merged = model.merge_and_unload()
        merged.save_pretrained(merge_out, safe_serialization=True)
        result["merged_loss"] = mean_loss(merged, read_data(data))
    print(json.dumps(result))


def weights(d):
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(d, f)))
    return out


def compare_models(a, b):
    wa, wb = weights(a), weights(b)
    # transformers drops a tied lm_head on save; compare what both hold.
    common = sorted(set(wa) & set(wb))
    only = sorted(set(wa) ^ set(wb))
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in common)
    print(json.dumps({"max_abs_weight_diff": worst, "tensors": len(common), "unmatched": only}))


def step_signs(base, start, trained, data, lr):
    model = peft.PeftModel.from_pretrained(load_base(base), start, is_trainable=True)
    model.train()
    total = 0.0
    for s in read_data(data):
        ids = torch.tensor([s])
        logits = model(input_ids=ids).logits[0, :-1].float()
        total = total + torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
    total.backward()
    before, after = load_file(os.path.join(start, "adapter_model.safetensors")), load_file(
        os.path.join(trained, "adapter_model.safetensors"))
    agree = count = 0
    kinds = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        key = name.replace(".default", "")
        if key not in before and key.endswith(".lora_magnitude_vector.weight"):
            key = key[: -len(".weight")]  # PEFT saves the magnitude without ".weight"
        g = p.grad.detach().flatten()
        step = ((after[key] - before[key]).flatten() / -lr)
        significant = g.abs() > 1e-4 * g.abs().max()
        same = (torch.sign(step[significant]) == torch.sign(g[significant])).sum().item()
        agree += same
        count += significant.sum().item()
        kind = key.rsplit(".", 2)[-2] if key.endswith(".weight") else key.rsplit(".", 1)[-1]
        kinds[kind] = kinds.get(kind, 0) + significant.sum().item()
    print(json.dumps({"agree": agree / max(count, 1), "weights": count, "by_kind": kinds}))


def load_merged(d, data):
    # The directory alone: config, weights and generation config from it; the tokenizer files
    # must be there too when the base had them.
    model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    gen = transformers.GenerationConfig.from_pretrained(d)
    print(json.dumps({"loss": mean_loss(model, read_data(data)), "files": sorted(os.listdir(d)),
                      "eos_token_id": gen.eos_token_id}))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-adapter")
    m.add_argument("base")
    m.add_argument("out")
    m.add_argument("kind")
    lo = sub.add_parser("loss")
    lo.add_argument("base")
    lo.add_argument("data")
    lo.add_argument("--adapter")
    lo.add_argument("--merge-out")
    c = sub.add_parser("compare-models")
    c.add_argument("a")
    c.add_argument("b")
    ss = sub.add_parser("step-signs")
    for k in ("base", "start", "trained", "data"):
        ss.add_argument(k)
    ss.add_argument("lr", type=float)
    lm = sub.add_parser("load-merged")
    lm.add_argument("dir")
    lm.add_argument("data")
    a = p.parse_args()
    if a.cmd == "make-adapter":
        make_adapter(a.base, a.out, a.kind)
    elif a.cmd == "loss":
        loss(a.base, a.data, a.adapter, a.merge_out)
    elif a.cmd == "compare-models":
        compare_models(a.a, a.b)
    elif a.cmd == "step-signs":
        step_signs(a.base, a.start, a.trained, a.data, a.lr)
    else:
        load_merged(a.dir, a.data)
