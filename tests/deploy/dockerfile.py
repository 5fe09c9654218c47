"""A small Dockerfile reader for the image tests: stages, their instructions, and the parts of
them the checks need (apt-get install lists, COPY sources, USER, HEALTHCHECK, exec forms).

Covers the syntax the project's Dockerfile uses: comments, parser directives, backslash line
continuations, FROM ... AS name, JSON (exec) and shell forms. Not a full BuildKit parser
(no heredocs, no escape directive, no ARG expansion in FROM)."""

import json
import re
import shlex


class Instruction:
    def __init__(self, line, keyword, rest):
        self.line = line  # first line number in the file
        self.keyword = keyword.upper()
        self.rest = rest

    def flags_and_args(self):
        """(flags dict, remaining text) for instructions with --flag=value options."""
        flags = {}
        rest = self.rest
        while True:
            m = re.match(r"--([a-z-]+)(?:=(\S+))?\s+", rest)
            if not m:
                return flags, rest
            flags[m.group(1)] = m.group(2) or ""
            rest = rest[m.end():]

    def exec_form(self):
        """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD; None for shell form.
        Raises ValueError for text that starts like JSON but does not parse: Docker would
        silently run it through /bin/sh as a shell-form command."""
        text = self.rest
        if self.keyword == "HEALTHCHECK":
            _, text = self.flags_and_args()
            if not text.upper().startswith("CMD"):
                return None
            text = text[3:].strip()
        text = text.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("not a JSON array of strings")
        return value

    def __repr__(self):
        return f"line {self.line}: {self.keyword} {self.rest}"


class Stage:
    def __init__(self, index, base, name, line):
        self.index = index
        self.base = base  # image reference or an earlier stage's name
        self.name = name
        self.line = line
        self.instructions = []

    def label(self):
        return self.name or f"stage {self.index}"


def logical_lines(text):
    """(line number, text) of each instruction, continuations joined, comments dropped."""
    out = []
    buf, start = [], None
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if start is None:
            start = number
        if raw.rstrip().endswith("\\"):
            buf.append(raw.rstrip()[:-1])
            continue
        buf.append(raw)
        out.append((start, " ".join(part.strip() for part in buf).strip()))
        buf, start = [], None
    if buf:
        out.append((start, " ".join(part.strip() for part in buf).strip()))
    return out


def parse(path):
    with open(path) as f:
        text = f.read()
    stages = []
    for number, line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        ins = Instruction(number, keyword, rest.strip())
        if ins.keyword == "FROM":
            flags, args = ins.flags_and_args()
            words = args.split()
            name = None
            if len(words) == 3 and words[1].upper() == "AS":
                name = words[2]
            elif len(words) != 1:
                raise ValueError(f"{path}:{number}: cannot read FROM {args}")
            stages.append(Stage(len(stages), words[0], name, number))
            continue
        if not stages:
            if ins.keyword == "ARG":
                continue
            raise ValueError(f"{path}:{number}: {ins.keyword} before the first FROM")
        stages[-1].instructions.append(ins)
    return stages


def by_name(stages):
    return {s.name: s for s in stages if s.name}


def chain(stages, target):
    """The stage named target and the stages it is FROM, most derived first."""
    names = by_name(stages)
    if target not in names:
        raise KeyError(target)
    out = [names[target]]
    while out[-1].base in names and names[out[-1].base].index < out[-1].index:
        out.append(names[out[-1].base])
    return out


def last(chain_stages, keyword):
    """The effective instruction of this keyword for the image (the most derived one)."""
    for stage in chain_stages:
        for ins in reversed(stage.instructions):
            if ins.keyword == keyword:
                return ins
    return None


def apt_packages(chain_stages):
    """{package: instruction} of every `apt-get install` in the chain's RUN instructions."""
    found = {}
    for stage in chain_stages:
        for ins in stage.instructions:
            if ins.keyword != "RUN":
                continue
            for command in re.split(r"&&|;|\|\|", ins.rest):
                words = shlex.split(command)
                if "apt-get" not in words:
                    continue
                i = words.index("apt-get")
                rest = words[i + 1:]
                while rest and rest[0].startswith("-"):
                    rest = rest[1:]
                if not rest or rest[0] != "install":
                    continue
                for w in rest[1:]:
                    if w.startswith("-"):
                        continue
                    found[w.split("=")[0]] = ins
    return found


def copies(chain_stages):
    """(stage label, from-stage or None, sources, destination, instruction) of each COPY/ADD."""
    out = []
    for stage in chain_stages:
        for ins in stage.instructions:
            if ins.keyword not in ("COPY", "ADD"):
                continue
            flags, args = ins.flags_and_args()
            words = shlex.split(args)
            out.append((stage.label(), flags.get("from"), words[:-1], words[-1], ins))
    return out


# The images the Dockerfile builds: target stage -> the image name deploy/ uses (kustomize
# `images:` rewrites the registry and tag) and the binaries (relative to the build directory)
# whose shared libraries the image must provide.
IMAGES = {
    "controller": {
        "image": "lorad-controller",
        "binaries": ["server/lorad", "client/loractl"],
        "torch": None,
    },
    "worker-cpu": {
        "image": "lora-worker-cpu",
        "binaries": ["worker/lora-worker", "worker/lora-train", "lib/liblora_sentencepiece.so"],
        "torch": "/out/torch-cpu/",
    },
    "worker-cuda": {
        "image": "lora-worker-cuda",
        "binaries": ["worker/lora-worker", "worker/lora-train", "lib/liblora_sentencepiece.so"],
        "torch": "/out/torch-cuda/",
    },
}


def user_ids(chain_stages):
    """(uid, gid) of the image's USER when numeric, else None."""
    ins = last(chain_stages, "USER")
    if ins is None:
        return None
    m = re.fullmatch(r"(\d+)(?::(\d+))?", ins.rest.strip())
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)) if m.group(2) is not None else None
