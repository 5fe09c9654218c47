#!/usr/bin/env python3
"""The same model and training loop as bench/train_bench, in PyTorch (eager or torch.compile).

A plain, idiomatic implementation: a Llama of the named flavor's shape (GQA, RoPE, SwiGLU,
RMSNorm), LoRA (rank 8, alpha 16) on the seven projections, frozen base, AdamW on the adapters,
attention through scaled_dot_product_attention, bf16 via autocast. Prints one JSON line:
{"dtype", "tokens_per_second", "step_seconds", "threads", "peak_gpu_bytes"}.

  eager_lora_train.py --dtype bf16 --steps 20 --warmup 3 [--threads 2] [--compile]
                      [--device cuda --flavor llama3.2-1b --seq-len 2048 --batch 4]
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# vocab, dim, layers, heads, kv_heads, hidden, rope theta, tied embeddings
FLAVORS = {
    "debugmodel": (2048, 256, 6, 16, 16, 768, 500000.0, False),
    "llama3.2-1b": (128256, 2048, 16, 32, 8, 8192, 500000.0, True),
}


class LoraLinear(nn.Module):
    def __init__(self, d_in, d_out, rank=0, alpha=16.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) * 0.02, requires_grad=False)
        self.rank = rank
        if rank:
            self.lora_a = nn.Parameter(torch.empty(rank, d_in))
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
            self.lora_b = nn.Parameter(torch.zeros(d_out, rank))
            self.scale = alpha / rank

    def forward(self, x):
        y = F.linear(x, self.weight)
        if self.rank:
            y = y + self.scale * F.linear(F.linear(x, self.lora_a), self.lora_b)
        return y


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.eps = eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotate_half(x):
    d = x.shape[-1] // 2
    return torch.cat((-x[..., d:], x[..., :d]), dim=-1)


class Block(nn.Module):
    def __init__(self, dim, heads, kv_heads, hidden, rank):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        kv = kv_heads * self.head_dim
        self.input_layernorm = RMSNorm(dim)
        self.q_proj, self.k_proj = LoraLinear(dim, dim, rank), LoraLinear(dim, kv, rank)
        self.v_proj, self.o_proj = LoraLinear(dim, kv, rank), LoraLinear(dim, dim, rank)
        self.post_attention_layernorm = RMSNorm(dim)
        self.gate_proj, self.up_proj = LoraLinear(dim, hidden, rank), LoraLinear(dim, hidden, rank)
        self.down_proj = LoraLinear(hidden, dim, rank)

    def forward(self, x, cos, sin):
        B, T, D = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                              enable_gqa=self.kv_heads != self.heads)
        x = x + self.o_proj(attn.transpose(1, 2).reshape(B, T, D))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Model(nn.Module):
    def __init__(self, flavor, rank=8):
        super().__init__()
        vocab, dim, layers, heads, kv_heads, hidden, theta, tied = FLAVORS[flavor]
        self.embed = nn.Parameter(torch.randn(vocab, dim) * 0.02, requires_grad=False)
        self.layers = nn.ModuleList(Block(dim, heads, kv_heads, hidden, rank) for _ in range(layers))
        self.norm = RMSNorm(dim)
        self.lm_head = None if tied else LoraLinear(dim, vocab, 0)
        hd = dim // heads
        self.register_buffer("inv_freq", 1.0 / (theta ** (torch.arange(0, hd, 2).float() / hd)))

    def forward(self, ids):
        T = ids.shape[1]
        freqs = torch.arange(T, device=ids.device).float()[:, None] * self.inv_freq[None]
        emb = torch.cat((freqs, freqs), dim=-1)
        x = F.embedding(ids, self.embed)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        h = self.norm(x)
        return F.linear(h, self.embed) if self.lm_head is None else self.lm_head(h)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--flavor", default="debugmodel", choices=sorted(FLAVORS))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model (inductor)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = Model(args.flavor)
    if args.dtype == "bf16":
        # The frozen base in bf16 (as lora-train keeps it); adapters stay fp32 under autocast.
        for name, prm in model.named_parameters():
            if not prm.requires_grad:
                prm.data = prm.data.to(torch.bfloat16)
    model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, foreach=True)
    fwd = torch.compile(model) if args.compile else model
    vocab = FLAVORS[args.flavor][0]
    ids = torch.randint(0, vocab, (args.batch, args.seq_len + 1), device=dev)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    times = []
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for step in range(args.warmup + args.steps):
        if step == args.warmup and dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            logits = fwd(inputs)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss.item()  # one host sync per step, as lora-train's logging does
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    print(json.dumps({"dtype": args.dtype, "tokens_per_second": args.batch * args.seq_len / step_s,
                      "step_seconds": step_s, "threads": torch.get_num_threads(),
                      "compile": args.compile, "device": args.device,
                      "peak_gpu_bytes": torch.cuda.max_memory_allocated() if dev.type == "cuda" else 0}))


if __name__ == "__main__":
    main()
