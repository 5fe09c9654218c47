#!/usr/bin/env python3
"""Static checks of the Dockerfile's images (no Docker engine needed or used).

For each runtime image (controller, worker-cpu, worker-cuda; dockerfile.IMAGES):
  - its apt-get install list is exactly the Debian packages that own the shared libraries `ldd`
    resolves for its binaries as built here (dpkg -S), less the packages debian:12-slim already
    has; a missing or an unneeded package fails, named with the libraries behind it;
  - libraries from the torch wheel (torch/lib, nvidia/*/lib) and the CUDA runtime (which the
    build resolves in the CUDA toolkit, the images take from the wheel) are accounted for: the
    worker images copy the staged wheel tree and run ldconfig after it, and the controller's
    binaries need none of them and it copies nothing of LibTorch;
  - USER is numeric and not root (uid and gid), HEALTHCHECK is set, CMD and HEALTHCHECK are
    valid exec form (Docker would run a broken JSON array through /bin/sh);
  - every FROM names an exact version tag (no :latest, no bare name, no floating major), all
    Debian bases are one point release with the major of this machine (whose packages the ldd
    mapping uses), and every COPY --from names an earlier stage.
Also that .dockerignore keeps build trees and .git out of the context.

Exit 77 (ctest SKIP_RETURN_CODE) when the binaries are not built.
Usage: image_check.py [--source-dir DIR] [--build-dir DIR] [--dockerfile PATH]
       image_check.py --apt-packages TARGET   (print that image's apt list, one a line)
       image_check.py --self-test   (also: each of SELF_TESTS' broken Dockerfiles must fail)
"""

import argparse
import importlib.util
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dockerfile  # noqa: E402

SKIP = 77

# The packages of debian:12-slim (bookworm): `debootstrap --variant=minbase bookworm`, which is
# what the Debian images are made from (debuerreotype; slim only deletes documentation). Read
# off a minbase root here with dpkg-query; tests/deploy/rootfs_check.py rebuilds one.
DEBIAN12_SLIM = set("""
adduser apt base-files base-passwd bash bsdutils coreutils dash debconf debian-archive-keyring
debianutils diffutils dpkg e2fsprogs findutils gcc-12-base gpgv grep gzip hostname
init-system-helpers libacl1 libapt-pkg6.0 libattr1 libaudit-common libaudit1 libblkid1
libbz2-1.0 libc-bin libc6 libcap-ng0 libcap2 libcom-err2 libcrypt1 libdb5.3 libdebconfclient0
libext2fs2 libffi8 libgcc-s1 libgcrypt20 libgmp10 libgnutls30 libgpg-error0 libhogweed6
libidn2-0 liblz4-1 liblzma5 libmd0 libmount1 libnettle8 libp11-kit0 libpam-modules
libpam-modules-bin libpam-runtime libpam0g libpcre2-8-0 libseccomp2 libselinux1
libsemanage-common libsemanage2 libsepol2 libsmartcols1 libss2 libstdc++6 libsystemd0
libtasn1-6 libtinfo6 libudev1 libunistring2 libuuid1 libxxhash0 libzstd1 login logsave mawk
mount ncurses-base ncurses-bin passwd perl-base sed sysvinit-utils tar tzdata usr-is-merged
util-linux util-linux-extra zlib1g
""".split())

# Packages a runtime stage may install for a reason ldd cannot see, with that reason. None today:
# the health checks use bash, sh, grep and /proc, all in the base.
EXTRA_PACKAGES = {}

CUDA_TOOLKIT_PREFIXES = ("/usr/local/cuda",)


class Checker:
    def __init__(self):
        self.problems = []

    def fail(self, where, message):
        self.problems.append(f"{where}: {message}")


def wheel_site():
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return None
    return os.path.dirname(os.path.dirname(spec.origin))


def ldd(path):
    """{soname: resolved path or None} of a binary's whole dependency closure."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
    libs = {}
    for line in out.splitlines():
        line = line.strip()
        m = re.match(r"(\S+) => (not found|(\S+) \(0x[0-9a-f]+\))", line)
        if m:
            libs[m.group(1)] = m.group(3)
        elif line.startswith("/"):
            libs[os.path.basename(line.split()[0])] = line.split()[0]  # the dynamic loader
    return libs


def dpkg_owner(paths):
    """{path: package} for the paths dpkg knows (trying the merged-/usr spellings too)."""
    candidates = {}
    for p in paths:
        real = os.path.realpath(p)
        forms = [p, real]
        for f in (p, real):
            if f.startswith("/usr/"):
                forms.append(f[4:])
            else:
                forms.append("/usr" + f)
        candidates[p] = list(dict.fromkeys(forms))
    every = sorted({f for forms in candidates.values() for f in forms})
    res = subprocess.run(["dpkg", "-S"] + every, capture_output=True, text=True)
    owner_of = {}
    for line in res.stdout.splitlines():
        pkgs, _, path = line.partition(": ")
        if path and "diversion" not in pkgs:
            owner_of[path.strip()] = pkgs.split(",")[0].strip().split(":")[0]
    return {p: next((owner_of[f] for f in forms if f in owner_of), None)
            for p, forms in candidates.items()}


def check_from_lines(c, stages, df):
    names = {}
    host_major = None
    try:
        host_major = open("/etc/debian_version").read().strip().split(".")[0]
    except OSError:
        pass
    debian_tags = set()
    for s in stages:
        where = f"{df}:{s.line}: FROM {s.base}"
        if s.base in names:
            continue
        if s.name:
            names[s.name] = s
        ref = s.base
        if "@sha256:" in ref:
            continue
        image, sep, tag = ref.rpartition(":")
        if not sep or "/" in tag:
            c.fail(where, "no tag: pin an exact version tag (or a digest)")
            continue
        if tag == "latest":
            c.fail(where, ":latest is not pinned")
            continue
        if not re.search(r"\d+\.\d+", tag):
            c.fail(where, f"tag {tag} is not an exact version (e.g. 12.11-slim, not 12)")
        if image in ("debian", "docker.io/library/debian"):
            debian_tags.add(tag.removesuffix("-slim"))
            if host_major and re.match(r"\d+", tag) and re.match(r"\d+", tag).group() != host_major:
                c.fail(where, f"Debian {tag} but this machine (whose packages the ldd check maps) "
                              f"is Debian {host_major}")
    if len(debian_tags) > 1:
        c.fail(df, f"Debian stages on different point releases: {sorted(debian_tags)}")
    for s in stages:
        for ins in s.instructions:
            if ins.keyword in ("COPY", "ADD"):
                flags, _ = ins.flags_and_args()
                src = flags.get("from")
                if src and not (src in names and names[src].index < s.index):
                    c.fail(f"{df}:{ins.line}", f"COPY --from={src}: no earlier stage of that name")


def check_image(c, df, stages, target, spec, build_dir, site, report):
    where = f"{df}: image {target}"
    try:
        chain = dockerfile.chain(stages, target)
    except KeyError:
        c.fail(df, f"no stage named {target}")
        return
    # USER, HEALTHCHECK, CMD.
    ids = dockerfile.user_ids(chain)
    user = dockerfile.last(chain, "USER")
    if user is None:
        c.fail(where, "no USER: the image would run as root")
    elif ids is None:
        c.fail(f"{df}:{user.line}", f"USER {user.rest}: not numeric uid:gid (Kubernetes' "
                                    "runAsNonRoot can only verify a numeric user)")
    else:
        uid, gid = ids
        if uid == 0:
            c.fail(f"{df}:{user.line}", "USER is root")
        if gid is None:
            c.fail(f"{df}:{user.line}", "USER names no group: give uid:gid")
        elif gid == 0:
            c.fail(f"{df}:{user.line}", "USER's group is root")
    hc = dockerfile.last(chain, "HEALTHCHECK")
    if hc is None or hc.rest.strip().upper() == "NONE":
        c.fail(where, "no HEALTHCHECK")
    for keyword in ("HEALTHCHECK", "CMD", "ENTRYPOINT"):
        ins = dockerfile.last(chain, keyword)
        if ins is None:
            continue
        try:
            form = ins.exec_form()
        except ValueError as e:
            c.fail(f"{df}:{ins.line}", f"{keyword}: broken exec form ({e}); Docker would hand it "
                                       "to /bin/sh as a string")
            continue
        if keyword == "CMD":
            binaries = {os.path.basename(b) for b in spec["binaries"]}
            if not form or form[0] not in binaries:
                c.fail(f"{df}:{ins.line}", f"CMD starts {form[:1]}, not one of {sorted(binaries)}")
    # What the binaries need.
    needed = {}  # soname -> resolved path
    for rel in spec["binaries"]:
        path = os.path.join(build_dir, rel)
        for soname, resolved in ldd(path).items():
            if resolved is None:
                c.fail(where, f"{rel}: {soname} not found by ldd here")
                continue
            needed[soname] = resolved
    wheel, toolkit, system = {}, {}, {}
    for soname, path in needed.items():
        real = os.path.realpath(path)
        if site and real.startswith(site + os.sep):
            wheel[soname] = os.path.relpath(real, site)
        elif path.startswith(CUDA_TOOLKIT_PREFIXES) or real.startswith(CUDA_TOOLKIT_PREFIXES):
            toolkit[soname] = path
        else:
            system[soname] = path
    # The CUDA toolkit is a build-stage tool: what the build resolves there, the images take
    # from the wheel's nvidia/*/lib under the same soname.
    for soname, path in sorted(toolkit.items()):
        match = None
        if site:
            for d in sorted(os.listdir(os.path.join(site, "nvidia"))):
                cand = os.path.join("nvidia", d, "lib", soname)
                if os.path.exists(os.path.join(site, cand)):
                    match = cand
        if match is None:
            c.fail(where, f"{soname} resolves in the CUDA toolkit ({path}), which the images do "
                          "not have, and the torch wheel has no library of that name")
        else:
            wheel[soname] = match
    owners = dpkg_owner(sorted(set(system.values())))
    required = {}  # package -> sonames
    for soname, path in sorted(system.items()):
        pkg = owners.get(path)
        if pkg is None:
            c.fail(where, f"{soname} ({path}) belongs to no Debian package: the image cannot "
                          "install it")
            continue
        required.setdefault(pkg, []).append(soname)
    installed = dockerfile.apt_packages(chain)
    from_base = {p for p in required if p in DEBIAN12_SLIM}
    for pkg in sorted(set(required) - from_base - set(installed)):
        c.fail(where, f"missing apt package {pkg} (for {', '.join(required[pkg])})")
    for pkg, ins in sorted(installed.items()):
        if pkg in EXTRA_PACKAGES:
            continue
        if pkg in from_base:
            c.fail(f"{df}:{ins.line}", f"unneeded apt package {pkg}: debian:12-slim has it")
        elif pkg not in required:
            c.fail(f"{df}:{ins.line}", f"unneeded apt package {pkg}: none of "
                                       f"{', '.join(spec['binaries'])} loads a library of it")
    # LibTorch: the workers copy the staged wheel tree and refresh the loader cache after it;
    # the controller needs and copies none of it.
    copies = dockerfile.copies(chain)
    torch_copies = [cp for cp in copies
                    if cp[1] and any("torch" in s or "nvidia" in s for s in cp[2])]
    if spec["torch"] is None:
        for soname, rel in sorted(wheel.items()):
            c.fail(where, f"{soname} comes from the torch wheel ({rel}): the controller image "
                          "must not need LibTorch")
        for stage, _, srcs, _, ins in torch_copies:
            c.fail(f"{df}:{ins.line}", f"controller image copies LibTorch ({' '.join(srcs)})")
        for stage, _, srcs, _, ins in copies:
            if any("worker" in s or "lora-train" in s for s in srcs):
                c.fail(f"{df}:{ins.line}", f"controller image copies worker files ({' '.join(srcs)})")
    else:
        if not wheel:
            c.fail(where, "lora-train needs no torch-wheel library here: is it built with LibTorch?")
        srcs = [s for _, _, ss, _, _ in torch_copies for s in ss]
        if srcs != [spec["torch"]]:
            c.fail(where, f"copies the torch-wheel tree {srcs}, expected exactly [{spec['torch']}] "
                          "(scripts/image-stage.sh lays it out)")
        else:
            ins = torch_copies[0][4]
            later = [i for s in chain for i in s.instructions
                     if i.keyword == "RUN" and re.search(r"(^|[\s;&])ldconfig($|[\s;&])", i.rest)
                     and i.line > ins.line]
            if not later:
                c.fail(f"{df}:{ins.line}", "no RUN ldconfig after copying the torch-wheel "
                                           "libraries: the loader would not find them")
    report.append(f"{target}: {len(needed)} libraries; apt {sorted(set(required) - from_base)}; "
                  f"from debian:12-slim {sorted(from_base)}; from the torch wheel {len(wheel)}"
                  + (f" (CUDA runtime: {', '.join(sorted(toolkit))} from the wheel)" if toolkit else ""))


def check_dockerignore(c, source_dir):
    path = os.path.join(source_dir, ".dockerignore")
    try:
        lines = {l.strip() for l in open(path) if l.strip() and not l.startswith("#")}
    except OSError:
        c.fail(path, "missing: `COPY . .` would send build trees and .git to the builder")
        return
    for pattern in ("build*/", ".git/"):
        if pattern not in lines:
            c.fail(path, f"does not exclude {pattern}")


# Broken copies of the Dockerfile the checks must catch: (replace this, with this, a problem
# that must then be reported).
SELF_TESTS = [
    ("libsqlite3-0 libssl3", "libssl3 curl", "missing apt package libsqlite3-0"),
    ("libsqlite3-0 libssl3", "libsqlite3-0 libssl3 curl", "unneeded apt package curl"),
    ("libsentencepiece0", "", "missing apt package libsentencepiece0"),
    ("libre2-9 libsentencepiece0", "libre2-9 libsentencepiece0 zlib1g",
     "unneeded apt package zlib1g: debian:12-slim has it"),
    ("USER 10001:10001", "USER lorad", "USER lorad: not numeric"),
    ("USER 10002:10002\nCMD [\"lora-worker\", \"--controller\", \"lorad:50051\", \"--work-dir\", "
     "\"/scratch\", \"--device\", \"cpu\"]", "USER 0:0\nCMD [\"lora-worker\"]", "USER is root"),
    ("FROM debian:12.11-slim AS worker-base", "FROM debian:latest AS worker-base",
     ":latest is not pinned"),
    ("FROM debian:12.11-slim AS controller", "FROM debian:12-slim AS controller",
     "is not an exact version"),
    ("FROM debian:12.11 AS build", "FROM debian AS build", "no tag"),
    ('"--device", "cpu"]', '"--device", "cpu"', "broken exec form"),
    ("COPY --from=build /out/controller/ /",
     "COPY --from=build /out/controller/ /\nCOPY --from=build /out/torch-cpu/ /",
     "controller image copies LibTorch"),
    ("COPY --from=build /out/torch-cuda/ /\nRUN ldconfig", "COPY --from=build /out/torch-cuda/ /",
     "no RUN ldconfig after copying"),
    ("HEALTHCHECK --interval=30s --timeout=5s --start-period=30s", "HEALTHCHECK NONE\n#",
     "image controller: no HEALTHCHECK"),
    ("COPY --from=build /out/torch-cpu/ /", "COPY --from=builder /out/torch-cpu/ /",
     "no earlier stage of that name"),
]


def self_test(source_dir, build_dir):
    """Each broken Dockerfile of SELF_TESTS must be reported; returns the failures."""
    import tempfile
    text = open(os.path.join(source_dir, "Dockerfile")).read()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for old, new, expect in SELF_TESTS:
            if old not in text:
                failures.append(f"self-test: the Dockerfile no longer contains {old!r}: update "
                                "SELF_TESTS")
                continue
            path = os.path.join(tmp, "Dockerfile")
            with open(path, "w") as f:
                f.write(text.replace(old, new, 1))
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--source-dir",
                                  source_dir, "--build-dir", build_dir, "--dockerfile", path],
                                 capture_output=True, text=True)
            if out.returncode != 1 or expect not in out.stdout:
                failures.append(f"self-test: replacing {old!r} with {new!r} did not report "
                                f"{expect!r} (exit {out.returncode}):\n{out.stdout}{out.stderr}")
    return failures


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--source-dir", default=os.path.normpath(os.path.join(here, "..", "..")))
    ap.add_argument("--build-dir", default=None)
    ap.add_argument("--dockerfile", default=None)
    ap.add_argument("--apt-packages", metavar="TARGET")
    ap.add_argument("--self-test", action="store_true")
    a = ap.parse_args()
    df = a.dockerfile or os.path.join(a.source_dir, "Dockerfile")
    stages = dockerfile.parse(df)
    if a.apt_packages:
        for pkg in sorted(dockerfile.apt_packages(dockerfile.chain(stages, a.apt_packages))):
            print(pkg)
        return 0
    build_dir = a.build_dir or os.path.join(a.source_dir, "build")
    missing = [os.path.join(build_dir, b) for spec in dockerfile.IMAGES.values()
               for b in spec["binaries"] if not os.path.exists(os.path.join(build_dir, b))]
    if missing:
        print(f"SKIP: not built: {', '.join(sorted(set(missing)))}")
        return SKIP
    site = wheel_site()
    c = Checker()
    if site is None:
        c.fail(sys.executable, "cannot find the torch package (the wheel the workers copy)")
    check_from_lines(c, stages, df)
    check_dockerignore(c, a.source_dir)
    report = []
    for target, spec in dockerfile.IMAGES.items():
        check_image(c, df, stages, target, spec, build_dir, site, report)
    for line in report:
        print(line)
    if a.self_test:
        c.problems.extend(self_test(a.source_dir, build_dir))
        if not c.problems:
            print(f"image_check: the {len(SELF_TESTS)} broken Dockerfiles of the self-test fail")
    if c.problems:
        for p in c.problems:
            print(f"FAIL {p}")
        print(f"image_check: {len(c.problems)} problem(s)")
        return 1
    print(f"image_check: ok ({len(dockerfile.IMAGES)} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
