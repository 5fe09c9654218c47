#!/usr/bin/env python3
"""transformers as the judge of `dataset.format = "messages"` (tests only; no hub downloads).

  chat_data.py OUT

For each chat format (Llama 3, Qwen2.5 ChatML, Mistral v0.1) OUT/<name>/ gets a tokenizer
trained by `tokenizers` on the repository's corpus (tests/python/make_tokenizers.py) with the
real chat template (tests/data/chat_templates/), chat JSONL (data.jsonl), and reference.json:
for every line the ids transformers produces (apply_chat_template(tokenize=False) encoded with
add_special_tokens=False, as apply_chat_template(tokenize=True) does) and the loss mask found
independently: a token trains when its character offsets overlap what rendering an assistant
turn (weight != 0) adds after its generation prompt.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import make_tokenizers as mt  # noqa: E402
import transformers  # noqa: E402

transformers.logging.set_verbosity_error()

SYSTEM = {"role": "system", "content": "You answer in one short sentence."}
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}],
    [SYSTEM, {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue, like the sea."}],
    [{"role": "user", "content": "Bonjour, ça va ?"},
     {"role": "assistant", "content": "Très bien, merci ! 😊", "weight": 0},
     {"role": "user", "content": "Und auf Deutsch? 日本語も"},
     {"role": "assistant", "content": "Sehr gut, danke. はい。"}],
    [{"role": "user", "content": "Write code:\n  def f(x):\n\treturn x"},
     {"role": "assistant", "content": "```python\ndef f(x):\n    return x * 2\n```"},
     {"role": "user", "content": "  spaces   and\r\nnewlines  "},
     {"role": "assistant", "content": "  kept   as\n\nthey are  "}],
    [SYSTEM, {"role": "user", "content": "Say <|im_end|> or <|eot_id|> or </s> literally."},
     {"role": "assistant", "content": "I say {{ nothing }} here."}],
]


def formats():
    return {
        "llama3": (mt.make_llama3, "llama3_8b_instruct.jinja", True),
        "qwen2": (mt.make_qwen2, "qwen2.5_instruct.jinja", True),
        "mistral": (None, "mistral_7b_instruct_v0.1.jinja", False),
    }


def render(tok, messages, gen):
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def main(out):
    with open(os.path.join(ROOT, "tests/data/tokenizer_corpus.txt"), encoding="utf-8",
              newline="") as f:
        lines = f.read().split("\n")
    sp_base = None
    summary = {}
    for name, (make, template_file, system_ok) in formats().items():
        if make is None:
            sp_base = sp_base or mt.make_sentencepiece_like(lines)
            tok_json, config = mt.make_mistral(lines, sp_base)
        else:
            tok_json, config = make(lines)
        with open(os.path.join(ROOT, "tests/data/chat_templates", template_file),
                  encoding="utf-8") as f:
            config = dict(config or {})
            config["chat_template"] = f.read()
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tok_json, f, ensure_ascii=False)
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False)
        tok = transformers.PreTrainedTokenizerFast(
            tokenizer_file=os.path.join(d, "tokenizer.json"),
            bos_token=config["bos_token"]["content"] if isinstance(config.get("bos_token"), dict)
            else config.get("bos_token"),
            eos_token=config["eos_token"]["content"] if isinstance(config.get("eos_token"), dict)
            else config.get("eos_token"))
        tok.chat_template = config["chat_template"]
        refs = []
        with open(os.path.join(d, "data.jsonl"), "w", encoding="utf-8") as data:
            for conv in CONVERSATIONS:
                if not system_ok:
                    conv = [m for m in conv if m["role"] != "system"]
                data.write(json.dumps({"messages": conv}, ensure_ascii=False) + "\n")
                text = render(tok, conv, False)
                enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
                spans = []
                for i, m in enumerate(conv):
                    if m["role"] == "assistant" and m.get("weight", 1) != 0:
                        begin = len(render(tok, conv[:i], True))
                        end = len(render(tok, conv[:i + 1], False))
                        spans.append((begin, end))
                mask = [int(any(s < e_ and e > b_ for b_, e_ in spans))
                        for s, e in enc["offset_mapping"]]
                refs.append({"text": text, "ids": enc["input_ids"], "mask": mask,
                             "spans": [text[b:e] for b, e in spans]})
        with open(os.path.join(d, "reference.json"), "w", encoding="utf-8") as f:
            json.dump(refs, f, ensure_ascii=False)
        summary[name] = {"lines": len(refs), "tokens": sum(len(r["ids"]) for r in refs),
                         "trained": sum(sum(r["mask"]) for r in refs)}
    print(json.dumps(summary))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
