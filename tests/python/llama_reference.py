#!/usr/bin/env python3
"""Independent reference for lora-train, written from shared/reference/FORMATS.md.

Reads Hugging Face Llama checkpoints and PEFT adapters with its own safetensors parser and
computes the forward pass in float64 with plain torch ops (python3-torch from Debian). The C++
tests compare lora-train's numbers with these.

  llama_reference.py loss --model DIR [--adapter DIR] --dataset FILE.jsonl [--seq-len N]
  llama_reference.py make-adapter --model DIR --out DIR [--rank R --alpha A --targets a,b --seed S --rslora]
"""
import argparse
import json
import math
import os
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = bytearray(data[base + begin:base + end])
        t = torch.frombuffer(raw, dtype=DTYPES[info["dtype"]]) if raw else torch.empty(0, dtype=DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"]).to(torch.float64)
    return out


def write_safetensors(path, tensors):
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, t in tensors.items():
        b = t.to(torch.float32).contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def load_checkpoint(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    index = os.path.join(model_dir, "model.safetensors.index.json")
    weights = {}
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    for name in files:
        weights.update(read_safetensors(os.path.join(model_dir, name)))
    return config, weights


def load_adapter(adapter_dir):
    """Returns {module_name: (A, B, scale)} following PEFT's rules."""
    if not adapter_dir:
        return {}
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        cfg = json.load(f)
    tensors = read_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"))
    import re
    out = {}
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        module = key[len("base_model.model."):key.index(".lora_A.")]
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        r = a.shape[0]
        alpha = cfg["lora_alpha"]
        for pattern, value in (cfg.get("alpha_pattern") or {}).items():
            if re.match(r"(.*\.)?(%s)$" % pattern, module):
                alpha = value
                break
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[module] = (a, b, scale)
    return out


def inv_freq(config):
    d = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    theta = config.get("rope_theta", 10000.0)
    freqs = []
    for j in range(d // 2):
        f = 1.0 / (theta ** (2 * j / d))
        freqs.append(f)
    f = torch.tensor(freqs, dtype=torch.float32)  # checkpoints' reference keeps fp32 frequencies
    scaling = config.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":
        old = scaling["original_max_position_embeddings"]
        low_wl, high_wl = old / scaling["low_freq_factor"], old / scaling["high_freq_factor"]
        scaled = []
        for x in f.tolist():
            wl = 2 * math.pi / x
            if wl < high_wl:
                scaled.append(x)
            elif wl > low_wl:
                scaled.append(x / scaling["factor"])
            else:
                s = (old / wl - scaling["low_freq_factor"]) / (scaling["high_freq_factor"] - scaling["low_freq_factor"])
                scaled.append((1 - s) * x / scaling["factor"] + s * x)
        f = torch.tensor(scaled, dtype=torch.float32)
    return f


def forward(config, w, adapters, ids):
    """Logits [T, V] of one sequence, float64."""
    H = config["num_attention_heads"]
    K = config.get("num_key_value_heads") or H
    d = config.get("head_dim") or config["hidden_size"] // H
    eps = config.get("rms_norm_eps", 1e-6)
    T = len(ids)

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        if name + ".bias" in w:
            y = y + w[name + ".bias"]
        if name in adapters:
            a, b, s = adapters[name]
            y = y + s * ((x @ a.T) @ b.T)
        return y

    def norm(x, weight):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight

    angles = (torch.arange(T, dtype=torch.float32)[:, None] * inv_freq(config)[None, :]).to(torch.float64)
    cos, sin = torch.cos(angles), torch.sin(angles)

    def rope(x):  # x [T, d]: pairs (j, j + d/2) rotate together
        a, b = x[:, : d // 2], x[:, d // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    x = w["model.embed_tokens.weight"][torch.tensor(ids)]
    for i in range(config["num_hidden_layers"]):
        p = "model.layers.%d." % i
        h = norm(x, w[p + "input_layernorm.weight"])
        q, k, v = lin(h, p + "self_attn.q_proj"), lin(h, p + "self_attn.k_proj"), lin(h, p + "self_attn.v_proj")
        heads = []
        for head in range(H):
            kv = head // (H // K)
            qh = rope(q[:, head * d:(head + 1) * d])
            kh = rope(k[:, kv * d:(kv + 1) * d])
            vh = v[:, kv * d:(kv + 1) * d]
            scores = (qh @ kh.T) / math.sqrt(d)
            scores = scores.masked_fill(~causal, float("-inf"))
            heads.append(torch.softmax(scores, dim=-1) @ vh)
        x = x + lin(torch.cat(heads, dim=-1), p + "self_attn.o_proj")
        h = norm(x, w[p + "post_attention_layernorm.weight"])
        g = lin(h, p + "mlp.gate_proj")
        x = x + lin(g * torch.sigmoid(g) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = norm(x, w["model.norm.weight"])
    if config.get("tie_word_embeddings", False) or "lm_head.weight" not in w:
        return x @ w["model.embed_tokens.weight"].T
    return lin(x, "lm_head")


def cmd_loss(args):
    config, w = load_checkpoint(args.model)
    adapters = load_adapter(args.adapter)
    total, count = 0.0, 0
    with open(args.dataset) as f:
        for line in f:
            if not line.strip():
                continue
            seq = json.loads(line)["input_ids"]
            for start in range(0, len(seq) - 1, args.seq_len):
                chunk = seq[start:start + args.seq_len + 1]
                if len(chunk) < 2:
                    continue
                logits = forward(config, w, adapters, chunk[:-1])
                targets = torch.tensor(chunk[1:])
                total += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
                count += len(chunk) - 1
    print(json.dumps({"loss": total / count, "tokens": count}))


def cmd_make_adapter(args):
    config, w = load_checkpoint(args.model)
    g = torch.Generator().manual_seed(args.seed)
    targets = args.targets.split(",")
    tensors = {}
    for name, weight in w.items():
        module = name[: -len(".weight")]
        if not name.endswith(".weight") or module.split(".")[-1] not in targets:
            continue
        out_f, in_f = weight.shape
        tensors["base_model.model.%s.lora_A.weight" % module] = torch.randn(args.rank, in_f, generator=g) * 0.1
        tensors["base_model.model.%s.lora_B.weight" % module] = torch.randn(out_f, args.rank, generator=g) * 0.1
    os.makedirs(args.out, exist_ok=True)
    write_safetensors(os.path.join(args.out, "adapter_model.safetensors"), tensors)
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": args.rank, "lora_alpha": args.alpha,
           "target_modules": targets, "lora_dropout": 0.0, "bias": "none", "use_rslora": args.rslora,
           "base_model_name_or_path": args.model}
    with open(os.path.join(args.out, "adapter_config.json"), "w") as f:
        json.dump(cfg, f)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("loss")
    p.add_argument("--model", required=True)
    p.add_argument("--adapter")
    p.add_argument("--dataset", required=True)
    p.add_argument("--seq-len", type=int, default=2048)
    p.set_defaults(fn=cmd_loss)
    p = sub.add_parser("make-adapter")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--alpha", type=float, default=8)
    p.add_argument("--targets", default="q_proj,v_proj,down_proj")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rslora", action="store_true")
    p.set_defaults(fn=cmd_make_adapter)
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
