#!/usr/bin/env python3
"""The runtime images without a Docker engine: assembles each runtime stage of the Dockerfile as
a directory tree and runs it, as the image's user, on a read-only root.

  1. a Debian 12 minbase root (`debootstrap --variant=minbase bookworm`: the package set of
     debian:12-slim), made once and kept in WORK/base;
  2. scripts/image-stage.sh lays out this machine's build as the build stage would (/out);
  3. for each target, the stage chain's instructions run on a copy of the base: RUN in a chroot
     (apt-get installs the stage's real list from Debian's archive), COPY --from=build from
     /out, ENV, USER, WORKDIR, CMD and HEALTHCHECK recorded;
  4. in a private mount and network namespace, each root is bind-mounted read-only with only
     the volumes deploy/ mounts writable (/tmp; /data for lorad, /scratch for the worker), and
     net.ipv4.ip_local_port_range set as deploy/'s workers set it. Then: the controller's CMD
     (with a tokens.csv), its HEALTHCHECK; the worker image's CMD (2 slots; `lorad` resolves
     through /etc/hosts as through the Service), its HEALTHCHECK; loractl submits a 2-rank job
     (Gloo rendezvous and collectives inside the worker image), which must SUCCEED; every TCP
     port the ranks listen on must lie in the port range the NetworkPolicy opens.

Needs root, debootstrap and Debian's archive (the machines here reach it); not part of ctest.
The build stage itself (CUDA toolkit, pip) is not run: this machine's build stands in for it.
Usage: tests/deploy/rootfs_check.py [--build-dir build] [--work /tmp/lorad-rootfs]
       [--targets controller,worker-cpu[,worker-cuda]] [--steps 30]
"""

import argparse
import os
import shlex
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import dockerfile  # noqa: E402

MIRROR = "http://deb.debian.org/debian"


def run(cmd, **kw):
    print("+", cmd if isinstance(cmd, str) else " ".join(shlex.quote(c) for c in cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def make_base(work):
    base = os.path.join(work, "base")
    if os.path.exists(os.path.join(base, ".complete")):
        return base
    shutil.rmtree(base, ignore_errors=True)
    run(["debootstrap", "--variant=minbase", "bookworm", base, MIRROR])
    open(os.path.join(base, ".complete"), "w").close()
    return base


class Image:
    def __init__(self, target, root):
        self.target = target
        self.root = root
        self.env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        self.user = "0:0"
        self.workdir = "/"
        self.cmd = None
        self.healthcheck = None


def assemble(work, base, out, stages, target):
    root = os.path.join(work, target)
    shutil.rmtree(root, ignore_errors=True)
    run(["cp", "-a", base, root])
    shutil.copy("/etc/resolv.conf", os.path.join(root, "etc/resolv.conf"))
    img = Image(target, root)
    for stage in reversed(dockerfile.chain(stages, target)):
        for ins in stage.instructions:
            k = ins.keyword
            if k == "RUN":
                env = dict(img.env, DEBIAN_FRONTEND="noninteractive")
                run(["chroot", root, "/usr/bin/env", "-i"] + [f"{a}={b}" for a, b in env.items()]
                    + ["/bin/sh", "-c", ins.rest])
            elif k in ("COPY", "ADD"):
                flags, args = ins.flags_and_args()
                words = shlex.split(args)
                if flags.get("from") != "build":
                    raise SystemExit(f"line {ins.line}: only COPY --from=build is assembled here")
                for src in words[:-1]:
                    if not src.startswith("/out/"):
                        raise SystemExit(f"line {ins.line}: {src} is not under /out")
                    dest = os.path.join(root, words[-1].lstrip("/"))
                    os.makedirs(dest, exist_ok=True)
                    run(["cp", "-a", os.path.join(out, src[len("/out/"):]).rstrip("/") + "/.", dest])
            elif k == "ENV":
                for item in shlex.split(ins.rest):
                    key, _, value = item.partition("=")
                    img.env[key] = value
            elif k == "USER":
                img.user = ins.rest.strip()
            elif k == "WORKDIR":
                img.workdir = ins.rest.strip()
            elif k == "CMD":
                img.cmd = ins.exec_form()
            elif k == "HEALTHCHECK":
                img.healthcheck = ins.exec_form()
    os.remove(os.path.join(root, "etc/resolv.conf"))
    return img


def chroot_cmd(img, argv, extra_env=None):
    env = dict(img.env, **(extra_env or {}))
    return (["chroot", f"--userspec={img.user}", img.root, "/usr/bin/env", "-i"]
            + [f"{k}={v}" for k, v in env.items()] + ["sh", "-c", 'cd "$0" && exec "$@"',
                                                       img.workdir] + argv)


def smoke(work, images, steps, port_range):
    ctl, wrk = images["controller"], images["worker-cpu"]
    data, scratch = os.path.join(work, "data"), os.path.join(work, "scratch")
    for d, uid in ((data, ctl.user), (scratch, wrk.user)):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        u, g = uid.split(":")
        os.chown(d, int(u), int(g))
        os.chmod(d, 0o750)
    admin, worker_token = os.urandom(16).hex(), os.urandom(16).hex()
    tokens = os.path.join(work, "tokens")
    shutil.rmtree(tokens, ignore_errors=True)
    os.makedirs(tokens)
    with open(os.path.join(tokens, "tokens.csv"), "w") as f:
        f.write(f"{admin},ops,admin\n{worker_token},pool,worker\n")
    u, g = ctl.user.split(":")
    os.chown(os.path.join(tokens, "tokens.csv"), 0, int(g))
    os.chmod(os.path.join(tokens, "tokens.csv"), 0o440)
    # Mount points the container runtime would create, and the Service's name.
    os.makedirs(os.path.join(ctl.root, "etc/lorad/tokens"), exist_ok=True)
    with open(os.path.join(wrk.root, "etc/hosts"), "a") as f:
        f.write("127.0.0.1 lorad\n")
    q = shlex.quote
    lo, hi = port_range
    script = f"""
set -euo pipefail
ip link set lo up
sysctl -q -w net.ipv4.ip_local_port_range="{lo} {hi}"
for r in {q(ctl.root)} {q(wrk.root)}; do
  mount --bind "$r" "$r"; mount -o remount,bind,ro "$r"
  mount -t proc proc "$r/proc"; mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
done
mount --bind {q(data)} {q(ctl.root)}/data
mount --bind -o ro {q(tokens)} {q(ctl.root)}/etc/lorad/tokens
mount --bind {q(scratch)} {q(wrk.root)}/scratch
if touch {q(ctl.root)}/usr/x 2>/dev/null; then echo "root is writable" >&2; exit 1; fi
echo "== controller: CMD on a read-only root"
{' '.join(q(a) for a in chroot_cmd(ctl, ctl.cmd))} > {q(work)}/lorad.log 2>&1 &
lorad_pid=$!
ok=0
for i in $(seq 60); do
  if {' '.join(q(a) for a in chroot_cmd(ctl, ctl.healthcheck))}; then ok=1; break; fi
  sleep 0.5
done
[ $ok = 1 ] || {{ echo "controller HEALTHCHECK never passed"; cat {q(work)}/lorad.log; exit 1; }}
echo "controller HEALTHCHECK: ok"
echo "== worker-cpu: CMD (2 slots), token from the environment"
{' '.join(q(a) for a in chroot_cmd(wrk, wrk.cmd + ['--slots', '2'], {'LORA_WORKER_TOKEN': worker_token}))} > {q(work)}/worker.log 2>&1 &
ok=0
for i in $(seq 120); do
  if {' '.join(q(a) for a in chroot_cmd(wrk, wrk.healthcheck))} 2>/dev/null; then ok=1; break; fi
  sleep 0.5
done
[ $ok = 1 ] || {{ echo "worker HEALTHCHECK never passed"; cat {q(work)}/worker.log; exit 1; }}
echo "worker HEALTHCHECK: ok"
echo "== loractl (controller image): a 2-rank job, {steps} steps"
cp {q(SOURCE)}/configs/llama3_debugmodel_lora.toml {q(ctl.root)}/tmp/job.toml
( while sleep 0.5; do ss -Hltnp 2>/dev/null || true; done ) > {q(work)}/listen.log &
watcher=$!
{' '.join(q(a) for a in chroot_cmd(ctl, ['loractl', '--timeout', '60', 'submit', '/tmp/job.toml', '--watch', '--set', f'training.steps={steps}', '--set', 'resources.world_size=2', '--set', 'checkpoint.interval=10', '--set', 'dataset.validation_interval=10'], {'LORACTL_TOKEN': admin}))} < /dev/null
kill $watcher
{' '.join(q(a) for a in chroot_cmd(ctl, ['loractl', 'list'], {'LORACTL_TOKEN': admin}))}
kill -TERM $lorad_pid; wait $lorad_pid || true
"""
    with open(os.path.join(work, "smoke.sh"), "w") as f:
        f.write(script)
    run(["unshare", "--mount", "--net", "--fork", "bash", os.path.join(work, "smoke.sh")])
    # Every socket that listened while the job ran, less lorad's own (gRPC and metrics); the
    # rest are the ranks' (lora-train renames its main thread, so match by elimination).
    ports = set()
    for line in open(os.path.join(work, "listen.log")):
        local = line.split()[3]
        if '"lorad"' not in line:
            ports.add(int(local.rsplit(":", 1)[1]))
    if not ports:
        raise SystemExit("no listening socket of the ranks was seen")
    outside = sorted(p for p in ports if not lo <= p <= hi)
    print(f"the ranks listened on {len(ports)} TCP port(s) {sorted(ports)[:8]}...; "
          f"outside {lo}-{hi}: {outside}")
    if outside:
        raise SystemExit("ranks listened outside the NetworkPolicy's port range")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default=os.path.join(SOURCE, "build"))
    ap.add_argument("--work", default="/tmp/lorad-rootfs")
    ap.add_argument("--targets", default="controller,worker-cpu")
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("rootfs_check: needs root (debootstrap, chroot, mounts)")
    os.makedirs(a.work, exist_ok=True)
    stages = dockerfile.parse(os.path.join(SOURCE, "Dockerfile"))
    base = make_base(a.work)
    out = os.path.join(a.work, "out")
    run([os.path.join(SOURCE, "scripts/image-stage.sh"), a.build_dir, out])
    images = {}
    for target in a.targets.split(","):
        images[target] = assemble(a.work, base, out, stages, target)
        img = images[target]
        du = subprocess.run(["du", "-sm", "--exclude=proc", img.root], capture_output=True,
                            text=True).stdout.split()[0]
        print(f"{target}: {du} MiB assembled, user {img.user}, CMD {img.cmd}")
        probe = ["lorad", "--help"] if target == "controller" else ["lora-train", "version"]
        run(chroot_cmd(img, probe), stdout=subprocess.DEVNULL)
    if "controller" in images and "worker-cpu" in images:
        import k8s_check  # the worker port range deploy/ configures
        smoke(a.work, images, a.steps, k8s_check.worker_port_range(SOURCE))
    print("rootfs_check: ok")


if __name__ == "__main__":
    main()
