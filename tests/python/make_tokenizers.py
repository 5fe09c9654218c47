#!/usr/bin/env python3
"""Trains tokenizer.json files with the Hugging Face `tokenizers` library, the judge of
lora's own tokenizer.json support (worker/engine/data/hf_tokenizer.h), and records its answers.

  make_tokenizers.py --corpus tests/data/tokenizer_corpus.txt --out DIR [--configs llama3,qwen2]

For each configuration DIR/<name>/ gets tokenizer.json, tokenizer_config.json and
reference.json: the texts (every corpus line, blocks of lines, random strings of awkward
characters) and, for each, encode(text, add_special_tokens=False).ids, the same with True,
decode of the latter with and without skip_special_tokens, and every id's token string.

Configurations (the shapes of real tokenizer.json files, trained small on the corpus):
  llama3          Split(Llama 3 regex) + ByteLevel, ignore_merges, TemplateProcessing "<|begin_of_text|> $A"
  qwen2           NFC, Split(Qwen2 regex) + ByteLevel, no BOS, non-special and normalized added tokens
  gpt2            ByteLevel(use_regex=true) alone, no post-processor, merges as "a b" strings
  gpt2_prefix     the same with add_prefix_space=true
  llama2          SentencePiece-like: Prepend("▁") + Replace(" ", "▁"), byte_fallback, "<s> $A"
  mistral         Metaspace(prepend_scheme first, split false), same decoder as llama2
  mistral_always  Metaspace(prepend_scheme always, split true), Metaspace decoder
"""
import argparse
import json
import os
import random
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,  # noqa: E402
                        pre_tokenizers, processors, trainers)

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>"]
QWEN2_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SP_SPECIAL = ["<unk>", "<s>", "</s>"]
BYTE_TOKENS = ["<0x%02X>" % b for b in range(256)]

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}")

# Pieces of the random strings: the characters where pre-tokenizers and normalizers differ.
FUZZ_PIECES = [
    " ", "  ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u1680",
    "\u2000", "\u2028", "\u2029", "\u202f", "\u3000", "\u200b", "\u200d", "\ufeff", "\x00",
    "'", "'s", "'S", "'t", "'re", "'RE", "'Ve", "'m", "'LL", "'d", "'x", "'\u017f", "\u212a",
    "a", "Z", "word", "Word", "WORD", "é", "e\u0301", "\u0301", "\u0323\u0307", "\u1100",
    "\u1161", "\u11a8", "\uac00", "\u212b", "\u0958", "ß", "ſ", "ǅ", "ʰ", "º",
    "0", "7", "42", "123", "98765", "٣", "۴", "५", "Ⅻ", "½", "²", "①", "𝟘",
    ".", ",", "!", "?", "-", "_", "(", ")", "{", "}", "[", "]", "<", ">", "|", "/", "\\",
    "#", "$", "%", "&", "*", "+", "=", "~", "`", "^", "@", ";", ":", "\"",
    "—", "…", "«", "»", "€", "™", "©", "°", "→", "∑", "√",
    "中", "文字", "日本", "カナ", "ひら", "한", "國", "ж", "Ωμέγα", "مرحبا", "שלום", "नमस्ते", "ไทย",
    "😀", "👍🏽", "👨‍👩‍👧", "🏳️‍🌈", "🇩🇪", "1️⃣", "\U0001f9d1\u200d\U0001f4bb", "𝔘𝔫𝔦",
    "▁", "▁▁", "<s>", "</s>", "<unk>", "<0x41>", "<|begin_of_text|>", "<|eot_id|>",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|", "|>", "<tool_call>", "Café", "Cafe\u0301",
]


def trainer_words(lines):
    for line in lines:
        yield line


def add_fake_vocab(tok_json, words):
    """Adds vocab entries that no merge produces, so that ignore_merges changes results."""
    model = tok_json["model"]
    next_id = max(model["vocab"].values()) + 1
    for w in words:
        if w not in model["vocab"]:
            model["vocab"][w] = next_id
            next_id += 1


def byte_level(lines, pattern, vocab_size):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    if pattern is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(trainer_words(lines), trainer)
    return tok


def make_llama3(lines):
    tok = byte_level(lines, LLAMA3_PATTERN, 3000)
    j = json.loads(tok.to_str())
    # Whole pre-tokens of the corpus that merges do not reach: ignore_merges emits them whole.
    vocab = j["model"]["vocab"]
    unreached = sorted({p for line in lines for p, _ in tok.pre_tokenizer.pre_tokenize_str(line)
                        if p not in vocab and len(p) > 3})
    add_fake_vocab(j, unreached[::7][:60])
    tok = Tokenizer.from_str(json.dumps(j))
    tok.add_special_tokens(LLAMA3_SPECIAL)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A:0 <|begin_of_text|> $B:1",
            special_tokens=[("<|begin_of_text|>", bos)])])
    j = json.loads(tok.to_str())
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
              "chat_template": CHAT_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast"}
    return j, config


def make_qwen2(lines):
    tok = byte_level(lines, QWEN2_PATTERN, 3000)
    tok.normalizer = normalizers.NFC()
    tok.add_special_tokens(QWEN2_SPECIAL)
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                    AddedToken("Café", special=False, normalized=True)])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = False
    # Qwen2 ships its template as a list of named templates in some revisions.
    config = {"bos_token": None, "eos_token": {"content": "<|im_end|>", "special": True},
              "chat_template": [{"name": "tool_use", "template": "{{ tools }}"},
                                {"name": "default", "template": CHAT_TEMPLATE}]}
    return j, config


def make_gpt2(lines):
    tok = byte_level(lines, None, 2000)
    tok.add_special_tokens(["<|endoftext|>"])
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = False
    # The older "left right" string form of merges, as GPT-2's file has it.
    j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]
    return j, {}


def make_gpt2_prefix(lines, base):
    j = json.loads(json.dumps(base))
    j["pre_tokenizer"]["add_prefix_space"] = True
    return j, {}


def make_sentencepiece_like(lines):
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always",
                                                 split=True)
    trainer = trainers.BpeTrainer(vocab_size=2500, show_progress=False, limit_alphabet=160,
                                  special_tokens=SP_SPECIAL + BYTE_TOKENS)
    tok.train_from_iterator(trainer_words(lines), trainer)
    j = json.loads(tok.to_str())
    # As in Llama 2's file: the byte tokens are in the model's vocab, not added tokens.
    j["added_tokens"] = [t for t in j["added_tokens"] if t["content"] in SP_SPECIAL]
    j["post_processor"] = json.loads(processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]).__getstate__())
    j["decoder"] = json.loads(decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(content=" ", left=1, right=0)]).__getstate__())
    return j


def make_llama2(lines, base):
    j = json.loads(json.dumps(base))
    j["normalizer"] = json.loads(normalizers.Sequence([
        normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]).__getstate__())
    j["pre_tokenizer"] = None
    return j, {"bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>"}


def make_mistral(lines, base):
    j = json.loads(json.dumps(base))
    j["normalizer"] = None
    j["pre_tokenizer"] = json.loads(pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first", split=False).__getstate__())
    return j, {"bos_token": "<s>", "eos_token": "</s>"}


def make_mistral_always(lines, base):
    j = json.loads(json.dumps(base))
    j["normalizer"] = None
    j["pre_tokenizer"] = json.loads(pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="always", split=True).__getstate__())
    j["decoder"] = json.loads(decoders.Metaspace(
        replacement="▁", prepend_scheme="always", split=True).__getstate__())
    return j, {}


def fuzz_texts(count):
    rng = random.Random(1129)
    out = []
    for _ in range(count):
        n = rng.randint(1, 24)
        out.append("".join(rng.choice(FUZZ_PIECES) for _ in range(n)))
    return out


def write_config(out_dir, name, tok_json, config, texts):
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    text = json.dumps(tok_json, ensure_ascii=False)
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(text)
    if config is not None:
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False)
    tok = Tokenizer.from_str(text)
    plain = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    special = [e.ids for e in tok.encode_batch(texts, add_special_tokens=True)]
    vocab = tok.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1
    ref = {
        "texts": texts,
        "plain": plain,
        "special": special,
        "decode": tok.decode_batch(special, skip_special_tokens=True),
        "decode_keep": tok.decode_batch(special, skip_special_tokens=False),
        "vocab_size": size,
        "id_to_token": [tok.id_to_token(i) for i in range(size)],
    }
    with open(os.path.join(d, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False)
    return sum(len(x) for x in plain)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--configs", default="llama3,qwen2,gpt2,gpt2_prefix,llama2,mistral,mistral_always")
    parser.add_argument("--fuzz", type=int, default=3000)
    args = parser.parse_args()
    with open(args.corpus, encoding="utf-8", newline="") as f:
        corpus = f.read()
    lines = corpus.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    blocks = ["\n".join(lines[i:i + 7]) for i in range(0, len(lines), 7)]
    texts = lines + blocks + fuzz_texts(args.fuzz) + [""]
    wanted = args.configs.split(",")
    sp_base = None
    for name in wanted:
        if name == "llama3":
            j, c = make_llama3(lines)
        elif name == "qwen2":
            j, c = make_qwen2(lines)
        elif name == "gpt2":
            j, c = make_gpt2(lines)
        elif name == "gpt2_prefix":
            j, c = make_gpt2_prefix(lines, make_gpt2(lines)[0])
        elif name in ("llama2", "mistral", "mistral_always"):
            if sp_base is None:
                sp_base = make_sentencepiece_like(lines)
            if name == "llama2":
                j, c = make_llama2(lines, sp_base)
            elif name == "mistral":
                j, c = make_mistral(lines, sp_base)
            else:
                j, c = make_mistral_always(lines, sp_base)
        else:
            print("unknown configuration %r" % name, file=sys.stderr)
            return 2
        tokens = write_config(args.out, name, j, c or None, texts)
        print("%s: %d texts, %d tokens" % (name, len(texts), tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
