#!/usr/bin/env python3
"""transformers as the judge of lora-train's model families (tests only; never a hub download).

  hf_families.py make OUT        tiny random checkpoints written by transformers' save_pretrained,
                                 one directory per family, each with data.jsonl (input_ids) and
                                 reference.json (mean loss in fp32 and bf16) + ref_logits.safetensors
  hf_families.py compare DIR OURS.safetensors
                                 max |logit difference| between OURS (lora-train eval
                                 --dump-logits) and the reference, as JSON
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
import transformers  # noqa: E402

transformers.logging.set_verbosity_error()

SEQ = 24  # longer than the sliding windows below, so the windows bind
SHAPE = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=384, rms_norm_eps=1e-6,
             initializer_range=0.1)


def families():
    T = transformers
    return {
        # Llama 3.1 style: llama3 rope scaling, separate lm_head.
        "llama3": T.LlamaConfig(**SHAPE, rope_theta=500000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
            max_position_embeddings=128),
        # Llama 3.2 style: tied embeddings.
        "llama3_tied": T.LlamaConfig(**SHAPE, rope_theta=500000.0, tie_word_embeddings=True),
        # Qwen2 / 2.5: q/k/v bias, tied embeddings (0.5B-3B ship tied).
        "qwen2": T.Qwen2Config(**SHAPE, rope_theta=1000000.0, tie_word_embeddings=True),
        # Qwen2 with its sliding window on the layers from max_window_layers on.
        "qwen2_sliding": T.Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=8,
                                       max_window_layers=1),
        # Qwen3: q/k RMSNorm, head_dim not hidden/heads.
        "qwen3": T.Qwen3Config(**SHAPE, head_dim=24, rope_theta=1000000.0),
        # Mistral v0.1: a sliding window on every layer.
        "mistral": T.MistralConfig(**SHAPE, sliding_window=8),
        # Room for the chat tests' trained tokenizers (a few thousand ids).
        "llama3_chat": T.LlamaConfig(**{**SHAPE, "vocab_size": 4096}, rope_theta=500000.0,
                                     tie_word_embeddings=True),
    }


def build(config, seed):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        # transformers initialises biases to 0 and norms to 1: perturb them so they matter.
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.1)
            elif "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def mean_loss(model, seqs, dtype):
    m = model.to(dtype)
    total, count = 0.0, 0
    logits_out = {}
    with torch.no_grad():
        for i, s in enumerate(seqs):
            ids = torch.tensor([s])
            logits = m(input_ids=ids).logits[0, :-1].float()
            logits_out[f"chunk{i}"] = logits.contiguous()
            loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
            total += loss.item()
            count += len(s) - 1
    return total / count, logits_out


def make(out):
    for i, (name, config) in enumerate(families().items()):
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        model = build(config, seed=100 + i)
        model.save_pretrained(d, safe_serialization=True)
        g = torch.Generator().manual_seed(7 + i)
        seqs = [torch.randint(0, config.vocab_size, (SEQ,), generator=g).tolist() for _ in range(3)]
        with open(os.path.join(d, "data.jsonl"), "w") as f:
            for s in seqs:
                f.write(json.dumps({"input_ids": s}) + "\n")
        loss32, logits = mean_loss(model, seqs, torch.float32)
        save_file(logits, os.path.join(d, "ref_logits.safetensors"))
        loss16, _ = mean_loss(model, seqs, torch.bfloat16)
        with open(os.path.join(d, "reference.json"), "w") as f:
            json.dump({"loss_fp32": loss32, "loss_bf16": loss16,
                       "model_type": config.model_type}, f)
    print(json.dumps(sorted(families().keys())))


def compare(d, ours_path):
    ref = load_file(os.path.join(d, "ref_logits.safetensors"))
    ours = load_file(ours_path)
    if sorted(ref) != sorted(ours):
        print(json.dumps({"error": f"chunks differ: {sorted(ref)} vs {sorted(ours)}"}))
        return 1
    worst = 0.0
    for k in ref:
        if ref[k].shape != ours[k].shape:
            print(json.dumps({"error": f"{k}: shape {list(ours[k].shape)} vs {list(ref[k].shape)}"}))
            return 1
        worst = max(worst, (ref[k] - ours[k]).abs().max().item())
    print(json.dumps({"max_abs_logit_diff": worst}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "make":
        make(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
