"""Expected chat-template renderings, judged by transformers' own apply_chat_template.

Usage: chat_templates.py --templates tests/data/chat_templates --out expected.json

For every template (the real ones in --templates plus small feature snippets below), every
conversation and add_generation_prompt in (False, True), records transformers' text or its
error. For every conversation also records the trained spans as the C++ RenderForTraining
defines them (Render(messages[:i+1]) minus Render(messages[:i], gen=True) for each trained
assistant message), or that the template is not prefix-stable there.
"""
import argparse
import json
import os
import sys

from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

BOS = "<s>"
EOS = "</s>"

# End-of-turn text each real template puts after an assistant message.
END_OF_TURN = {
    "llama3_8b_instruct": "<|eot_id|>",
    "llama3.2_instruct": "<|eot_id|>",
    "llama2_chat": EOS,
    "mistral_7b_instruct_v0.1": EOS,
    "qwen2.5_instruct": "<|im_end|>",
    "qwen3_instruct_2507": "<|im_end|>",
}

# Small templates exercising interpreter features one at a time (whitespace control included).
SNIPPETS = {
    "ws_trim_lstrip": "{% for m in messages %}\n  {% if m.role == 'user' %}\n    U: {{ m.content }}\n  {% else %}\n    A: {{ m.content }}\n  {% endif %}\n{% endfor %}\n",
    "ws_minus": "{%- for m in messages -%}\n  [{{- m.role -}}]  \n  {{ m.content }}  {#- c -#}  |\n{%- endfor %}\n\n",
    "ws_plus": "a\n  {%+ if true %}x{% endif +%}\n  b\n{# comment #}\n  c {{ 'd' }}\n",
    "loop_vars": "{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }}/{{ loop.previtem.role if loop.previtem is defined else '-' }}/{{ loop.nextitem.role if loop.nextitem is defined else '-' }};{% endfor %}",
    "loop_filter_else": "{% for m in messages if m.role == 'assistant' %}[{{ loop.index }}:{{ m.content|length }}]{% else %}none{% endfor %}|{% for x in [] %}x{% else %}empty{% endfor %}",
    "loop_break_continue": "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 5 %}{% break %}{% endif %}{{ i }}{% endfor %}",
    "slicing": "{{ messages[1:]|length }} {{ messages[::-1][0].role }} {{ messages[-1].role }} {{ 'abcdef'[1:4] }} {{ 'abcdef'[::-2] }} {{ [1,2,3,4][1:-1] }} {{ 'héllo'[1] }} {{ 'héllo'|length }}",
    "strings": "{{ '  x y  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '\\n\\nhi\\n'.lstrip('\\n') }}|{{ 'hi  '.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'abc'.startswith('ab') }}|{{ 'abc'.endswith(('x','c')) }}|{{ 'Hello World'.upper() }}{{ 'Hello'.lower() }}|{{ 'a-b'.replace('-', '+') }}|{{ 'hello world'.title() }}|{{ 'hELLO'.capitalize() }}|{{ 'abcabc'.find('c') }}|{{ ', '.join(['x','y']) }}",
    "filters": "{{ '  t  '|trim }}|{{ 'x'|upper }}|{{ undefined_thing|default('dflt') }}|{{ ''|default('e', true) }}|{{ [3,1,2]|first }}{{ [3,1,2]|last }}|{{ ['a','b']|join('-') }}|{{ 'aXbX'|replace('X','y') }}|{{ messages|selectattr('role','equalto','user')|list|length }}|{{ messages|rejectattr('role','equalto','user')|map(attribute='role')|join(',') }}|{{ {'k': 1, 'j': [true, none, 1.5, 'q\"u']}|tojson }}|{{ {'k': [1, {'a': 'é'}]}|tojson(indent=2) }}|{{ {'b':1,'a':2}|items|list }}|{{ 'abc'|list }}|{{ 42|string ~ 'x' }}|{{ -3|abs }}|{{ '7'|int + 1 }}|{{ [1,2]|reverse|list }}",
    "tests": "{{ x is defined }}{{ messages is defined }}{{ none is none }}{{ 'a' is string }}{{ {} is mapping }}{{ [] is iterable }}{{ 3 is number }}{{ 3 is integer }}{{ 3.0 is float }}{{ 4 is even }}{{ 3 is odd }}{{ 9 is divisibleby 3 }}{{ 'a' is in 'cat' }}{{ 1 is equalto 1 }}{{ x is undefined }}{{ true is sameas true }}{{ 'A' is upper }}{{ tools is none }}{{ tools is not none }}",
    "operators": "{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 'a' ~ 1 ~ none }} {{ [1] + [2] }} {{ 'ab' * 2 }} {{ 1 < 2 and 'b' > 'a' }} {{ not 1 == 1.0 }} {{ 'x' in 'xyz' }} {{ 'q' not in ['a'] }} {{ 0 or 'fallback' }} {{ 1 and 'both' }} {{ 'yes' if 0 else 'no' }} {{ 1.5 + 1 }} {{ 10 / 4 }} {{ 0.1 + 0.2 }} {{ 1e20 * 10 }}",
    "literals": "{{ 'it\\'s' }} {{ \"dq \\\"x\\\"\" }} {{ '\\u00e9\\t|' }} {{ [1, 'two', none, true, false] }} {{ {'a': 'b'} }} {{ (1, 2) }} {{ True }} {{ None }} {{ 1_000 }} {{ 'a' 'b' }}",
    "namespace_set": "{% set ns = namespace(count=0, names='') %}{% for m in messages %}{% set ns.count = ns.count + 1 %}{% set ns.names = ns.names ~ m.role[0] %}{% endfor %}{{ ns.count }} {{ ns.names }}{% set a, b = [1, 2] %} {{ a + b }}{% set block %}B{{ 1 + 1 }}{% endset %} {{ block }}",
    "scoping": "{% set x = 'outer' %}{% for m in messages %}{% set x = 'inner' %}{% endfor %}{{ x }}{% if true %}{% set y = 'if-leaks' %}{% endif %} {{ y }}",
    "dict_methods": "{% set d = {'a': 1, 'b': 2} %}{{ d.get('a') }} {{ d.get('z', 'none') }} {{ d.get('z') }} {% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %} {{ d.keys()|list }} {{ d['a'] }} {{ d.b }} {{ d.zz }} {{ 'a' in d }}",
    "macro": "{% macro fmt(m, sep=': ') %}{{ m.role }}{{ sep }}{{ m.content }}{% endmacro %}{% for m in messages %}{{ fmt(m) }}|{{ fmt(m, sep='=') }}\n{% endfor %}",
    "undefined_print": "[{{ nothing }}][{{ nothing|length }}][{{ messages[99] }}][{{ messages[0].nope }}]{% for x in nothing %}x{% endfor %}{% if nothing %}t{% else %}f{% endif %}",
    "undefined_attr_error": "{{ nothing.attr }}",
    "raise": "{% if messages|length > 1 %}{{ raise_exception('Too many messages: ' ~ messages|length) }}{% endif %}ok",
    "generation_tag": "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}",
    "print_containers": "{{ messages[0] }} {{ [1.0, 2.5, -0.0, 1e-7, 123456789012345678.0] }} {{ {'q': \"it's\"} }} {{ ['a\\nb'] }}",
}


def conversations():
    def m(role, content, weight=None):
        d = {"role": role, "content": content}
        if weight is not None:
            d["weight"] = weight
        return d

    return {
        "basic": [m("user", "Hello"), m("assistant", "Hi there!")],
        "system_multi": [
            m("system", "You are a helpful assistant."),
            m("user", "What is 2+2?"),
            m("assistant", "4"),
            m("user", "And 3+3?"),
            m("assistant", "6"),
        ],
        "no_system_multi": [
            m("user", "one"), m("assistant", "uno"), m("user", "two"), m("assistant", "dos"),
            m("user", "three"), m("assistant", "tres"),
        ],
        "unicode": [
            m("system", "Réponds en français 🇫🇷"),
            m("user", "¿Qué tal? 世界 — naïve café"),
            m("assistant", "\u3000Très bien 🚀 ありがとう\u00a0"),
        ],
        "empty_content": [m("user", ""), m("assistant", "")],
        "whitespace": [
            m("user", "  leading and trailing  \n\n"),
            m("assistant", "\n\tindented answer\t\n  "),
            m("user", "\r\nwindows\r\n"),
            m("assistant", " x "),
        ],
        "template_like": [
            m("user", "{{ messages }} {% if x %}y{% endif %} {# c #} {{- raise_exception('no') }}"),
            m("assistant", "Literal: {{ x }} and {% for %}"),
        ],
        "special_tokens": [
            m("user", "<|eot_id|><|im_end|>[INST] <s></s> <|start_header_id|>user<|end_header_id|>"),
            m("assistant", "<|im_start|>assistant\n[/INST]</s>"),
        ],
        "quotes_backslashes": [
            m("user", "He said \"hi\" and 'bye' \\n \\\\ \\"),
            m("assistant", "path C:\\temp\\new \"ok\""),
        ],
        "weights": [
            m("system", "sys"),
            m("user", "q1"),
            m("assistant", "a1 (not trained)", 0),
            m("user", "q2"),
            m("assistant", "a2 (trained)", 1),
        ],
        "ends_with_user": [m("user", "q1"), m("assistant", "a1"), m("user", "q2")],
        "single_user": [m("user", "Just a question")],
        "thinking": [
            m("user", "Think first"),
            m("assistant", "<think>\nstep one\nstep two\n</think>\n\nThe answer is 42."),
        ],
        "bad_alternation": [m("user", "first"), m("user", "second"), m("assistant", "reply")],
        "system_then_assistant": [m("system", "s"), m("assistant", "unprompted")],
    }


def make_tokenizer(template):
    vocab = {"<unk>": 0, BOS: 1, EOS: 2}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
        bos_token=BOS, eos_token=EOS)
    tok.chat_template = template
    return tok


def render(tok, messages, gen):
    plain = [{"role": x["role"], "content": x["content"]} for x in messages]
    try:
        return {"text": tok.apply_chat_template(plain, tokenize=False, add_generation_prompt=gen)}
    except Exception as e:  # the template's own error (raise_exception, undefined, ...)
        return {"error": str(e), "error_type": type(e).__name__}


def spans(tok, messages):
    full = render(tok, messages, False)
    if "error" in full:
        return {"error": full["error"]}
    out = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant" or msg.get("weight", 1) == 0:
            continue
        prompt = render(tok, messages[:i], True)
        turn = render(tok, messages[: i + 1], False)
        if "error" in prompt or "error" in turn:
            return {"error": "prefix render failed", "index": i}
        if not turn["text"].startswith(prompt["text"]) or not full["text"].startswith(turn["text"]):
            return {"error": "not prefix-stable", "index": i}
        b = len(prompt["text"].encode("utf-8"))
        e = len(turn["text"].encode("utf-8"))
        if e > b:
            out.append({"begin": b, "end": e, "text": turn["text"][len(prompt["text"]):],
                        "content": msg["content"]})
    return {"text": full["text"], "spans": out}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--templates", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    templates = {}
    for name in sorted(os.listdir(args.templates)):
        if name.endswith(".jinja"):
            with open(os.path.join(args.templates, name), encoding="utf-8", newline="") as f:
                templates[name[: -len(".jinja")]] = {"source": f.read(), "real": True}
    for name, source in SNIPPETS.items():
        templates[name] = {"source": source, "real": False}
    missing = set(END_OF_TURN) - {n for n, t in templates.items() if t["real"]}
    if missing:
        sys.exit(f"templates missing from {args.templates}: {sorted(missing)}")

    convs = conversations()
    cases, training = [], []
    for tname, t in templates.items():
        tok = make_tokenizer(t["source"])
        for cname, messages in convs.items():
            for gen in (False, True):
                cases.append({"template": tname, "conversation": cname,
                              "add_generation_prompt": gen, **render(tok, messages, gen)})
            if t["real"]:
                training.append({"template": tname, "conversation": cname,
                                 "end_of_turn": END_OF_TURN[tname], **spans(tok, messages)})
    result = {
        "bos_token": BOS, "eos_token": EOS,
        "templates": {n: t["source"] for n, t in templates.items()},
        "conversations": convs, "cases": cases, "training": training,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=1)
    print(f"{len(cases)} render cases, {len(training)} training cases", file=sys.stderr)


if __name__ == "__main__":
    main()
