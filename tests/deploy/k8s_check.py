#!/usr/bin/env python3
"""Renders every deploy/ variant with `kubectl kustomize` and checks each object.

Variants: base, overlays/cpu, overlays/gpu, overlays/ha, and each overlay with
components/monitoring.
Per variant, failing with the variant, object and field named:
  - schema: every built-in object validates against the Kubernetes OpenAPI schemas of the
    oldest and newest versions in SCHEMA_VERSIONS, strictly (unknown fields fail), through the
    kubernetes-validate package (pinned in requirements.txt; its schemas ship in the wheel, so
    this runs offline); CRD objects (cert-manager, Prometheus Operator) get structural checks;
  - Pod Security "restricted" on every pod template, and more: runAsNonRoot, numeric
    runAsUser/runAsGroup/fsGroup equal to the USER of the image's Dockerfile target,
    seccompProfile RuntimeDefault, every container with allowPrivilegeEscalation false,
    readOnlyRootFilesystem, capabilities drop ALL (add nothing), not privileged, no host
    namespaces, ports or paths, allowed volume types and sysctls only, no service-account token;
    the namespace enforces restricted;
  - writable volumes where the processes write: /tmp, and the --data-dir / --work-dir of the
    args, each a writable emptyDir or volume claim; every disk emptyDir has a sizeLimit and the
    containers request and limit ephemeral-storage covering them;
  - images: registry/name:tag (no latest), the controller on the controller image everywhere,
    workers on the CPU image with --device cpu or the CUDA image with --device cuda and GPUs;
  - Secrets: none rendered (the operator creates lorad-tokens; cert-manager the TLS Secrets,
    which the overlays must issue), no placeholder lorad refuses (server/grpc/auth.cc) anywhere,
    and every file the args name under a Secret mount is a key that Secret has;
  - the worker StatefulSet's headless Service and PodDisruptionBudget select its pods;
  - NetworkPolicy, evaluated: a default deny; workers and labelled clients reach lorad's gRPC
    port (the one --listen, the container port and the Service agree on), Prometheus its
    metrics port, workers each other on exactly the range the worker pods' ip_local_port_range
    sysctl sets, everyone DNS; nothing else admitted to lorad;
  - replicas (more than one lorad, overlays/ha): --store-url-file (PostgreSQL), --advertise
    through a headless governing Service that publishes not-ready replicas, readiness GET
    /leader, one ReadWriteMany claim instead of a claim each, a PodDisruptionBudget, egress to
    PostgreSQL;
  - monitoring: the ServiceMonitor selects the lorad Service's metrics port, and the
    PrometheusRule's groups are exactly deploy/prometheus/alerts.yaml's.
Usage: k8s_check.py [--source-dir DIR] [--self-test]
  --self-test: also each broken copy of deploy/ in SELF_TESTS must fail with its problem.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dockerfile  # noqa: E402

SCHEMA_VERSIONS = ["1.29.0", "1.37.0"]
NAMESPACE = "lorad"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "ClusterIssuer", "PriorityClass", "StorageClass"}
# Pod Security Standards (restricted, v1.29+).
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
# Secrets the operator creates (docs/OPERATIONS.md) and the keys lorad and the workers read.
OPERATOR_SECRETS = {"lorad-tokens": {"tokens.csv"}, "lorad-store": {"url"}}
TLS_SECRETS = {"lorad-tls", "lora-worker-tls"}
TLS_KEYS = {"tls.crt", "tls.key", "ca.crt"}
# Who deploy/ admits: Prometheus as documented in networkpolicy.yaml, a labelled client.
PROMETHEUS = ({"kubernetes.io/metadata.name": "monitoring"}, {"app.kubernetes.io/name": "prometheus"})
CLIENT = ({"kubernetes.io/metadata.name": "team-a"}, {"lorad.io/client": "true"})
STRANGER = ({"kubernetes.io/metadata.name": "team-a"}, {"app": "something-else"})
# CRDs: the apiVersions deploy/ uses and the spec keys each kind may have.
CRD_SPECS = {
    ("cert-manager.io/v1", "Issuer"): {"selfSigned", "ca", "acme", "vault", "venafi"},
    ("cert-manager.io/v1", "Certificate"): {
        "isCA", "commonName", "secretName", "duration", "renewBefore", "privateKey", "usages",
        "issuerRef", "dnsNames", "ipAddresses", "uris", "emailAddresses", "subject",
        "secretTemplate", "keystores", "revisionHistoryLimit", "additionalOutputFormats",
        "literalSubject", "nameConstraints", "otherNames", "encodeUsagesInRequest",
        "renewBeforePercentage"},
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
        "podTargetLabels", "sampleLimit", "targetLimit", "attachMetadata"},
    ("monitoring.coreos.com/v1", "PrometheusRule"): {"groups"},
}


class Problems(list):
    def add(self, variant, obj, field, message):
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}" if obj else "-"
        self.append(f"{variant}: {where}: {field}: {message}")


# --- rendering ---------------------------------------------------------------------------

def variants(source):
    deploy = os.path.join(source, "deploy")
    out = [("base", os.path.join(deploy, "base"), [])]
    for overlay in sorted(os.listdir(os.path.join(deploy, "overlays"))):
        path = os.path.join(deploy, "overlays", overlay)
        out.append((overlay, path, []))
        out.append((f"{overlay}+monitoring", path, [os.path.join(deploy, "components/monitoring")]))
    return out


def render(path, components):
    if shutil.which("kubectl") is None:
        raise RuntimeError("kubectl not found (its `kubectl kustomize` renders deploy/)")
    if not components:
        text = subprocess.run(["kubectl", "kustomize", path], capture_output=True, text=True)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            k = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                 "resources": [os.path.relpath(path, tmp)],
                 "components": [os.path.relpath(c, tmp) for c in components]}
            with open(os.path.join(tmp, "kustomization.yaml"), "w") as f:
                yaml.safe_dump(k, f)
            text = subprocess.run(["kubectl", "kustomize", tmp], capture_output=True, text=True)
    if text.returncode != 0:
        raise RuntimeError(text.stderr.strip())
    return [d for d in yaml.safe_load_all(text.stdout) if d]


def worker_port_range(source):
    """(low, high) of the worker pods' net.ipv4.ip_local_port_range in deploy/base."""
    for obj in render(os.path.join(source, "deploy/base"), []):
        if obj["kind"] in WORKLOADS and pod_spec(obj):
            for s in pod_spec(obj).get("securityContext", {}).get("sysctls", []):
                if s["name"] == "net.ipv4.ip_local_port_range":
                    lo, hi = s["value"].split()
                    return int(lo), int(hi)
    raise SystemExit("deploy/base sets no net.ipv4.ip_local_port_range")


def pod_spec(obj):
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj.get("spec", {}).get("template", {}).get("spec")


def pod_labels(obj):
    if obj["kind"] == "Pod":
        return obj["metadata"].get("labels", {})
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return obj["spec"]["template"].get("metadata", {}).get("labels", {})


def arg_value(args, flag):
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def quantity(q):
    """Bytes (or units) of a Kubernetes quantity."""
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(q))
    if not m:
        raise ValueError(f"quantity {q!r}")
    mult = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20,
            "Gi": 2**30, "Ti": 2**40, "m": 1e-3}[m.group(2)]
    return float(m.group(1)) * mult


def image_target(image):
    """(Dockerfile target, problem) of a container image reference."""
    ref = image.split("@")[0]
    name, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "")
    base = name.split("/")[-1]
    problem = None
    if "/" not in name:
        problem = f"{image}: no registry (set the overlay's images: newName)"
    elif not tag and "@" not in image:
        problem = f"{image}: no tag"
    elif tag == "latest":
        problem = f"{image}: :latest"
    for target, spec in dockerfile.IMAGES.items():
        if spec["image"] == base:
            return target, problem
    return None, problem or f"{image}: not one of the Dockerfile's images"


# --- the checks --------------------------------------------------------------------------

def check_schema(p, variant, objs):
    try:
        import kubernetes_validate
    except ImportError:
        p.add(variant, None, "schema", "the kubernetes-validate package is missing: "
              "pip install -r requirements.txt (it is pinned there)")
        return
    for obj in objs:
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key in CRD_SPECS:
            extra = set(obj.get("spec", {})) - CRD_SPECS[key]
            if extra:
                p.add(variant, obj, "spec", f"fields {sorted(extra)} unknown to {key[0]} {key[1]}")
            if not obj.get("metadata", {}).get("name"):
                p.add(variant, obj, "metadata.name", "missing")
            continue
        for version in SCHEMA_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                p.add(variant, obj, "apiVersion", f"{key[0]} {key[1]} unknown to Kubernetes "
                      f"{version} (and not a CRD this check knows)")
                break
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(x) for x in e.path) or "(object)"
                p.add(variant, obj, path, f"Kubernetes {version} schema: {e.message}")
                break


def check_security(p, variant, obj, uids):
    spec = pod_spec(obj)
    psc = spec.get("securityContext", {})
    for f in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"):
        if spec.get(f) is True and f != "hostUsers":
            p.add(variant, obj, f"spec.{f}", "host namespaces are not allowed (restricted)")
    if spec.get("automountServiceAccountToken") is not False:
        p.add(variant, obj, "automountServiceAccountToken", "must be false: nothing here calls "
              "the Kubernetes API")
    if psc.get("runAsNonRoot") is not True:
        p.add(variant, obj, "securityContext.runAsNonRoot", "must be true (restricted)")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        p.add(variant, obj, "securityContext.seccompProfile.type", "must be RuntimeDefault")
    for s in psc.get("sysctls", []):
        if s.get("name") not in SAFE_SYSCTLS:
            p.add(variant, obj, "securityContext.sysctls", f"{s.get('name')} is not a safe sysctl")
    for f in ("runAsUser", "runAsGroup", "fsGroup"):
        v = psc.get(f)
        if not isinstance(v, int) or v <= 0:
            p.add(variant, obj, f"securityContext.{f}", f"{v!r}: must be a numeric id, not root")
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    for v in vols.values():
        kind = [k for k in v if k != "name"]
        if not kind or kind[0] not in RESTRICTED_VOLUMES:
            p.add(variant, obj, f"volumes.{v['name']}", f"volume type {kind} not allowed (restricted)")
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    for c in containers:
        where = f"containers.{c['name']}"
        csc = c.get("securityContext", {})
        if csc.get("allowPrivilegeEscalation") is not False:
            p.add(variant, obj, f"{where}.securityContext.allowPrivilegeEscalation", "must be false")
        if csc.get("readOnlyRootFilesystem") is not True:
            p.add(variant, obj, f"{where}.securityContext.readOnlyRootFilesystem", "must be true")
        caps = csc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            p.add(variant, obj, f"{where}.securityContext.capabilities.drop", "must include ALL")
        if caps.get("add"):
            p.add(variant, obj, f"{where}.securityContext.capabilities.add", f"{caps['add']}: none")
        if csc.get("privileged"):
            p.add(variant, obj, f"{where}.securityContext.privileged", "not allowed")
        if csc.get("runAsNonRoot") is False or csc.get("runAsUser") == 0:
            p.add(variant, obj, f"{where}.securityContext", "runs as root")
        if (csc.get("seccompProfile") or {}).get("type") == "Unconfined":
            p.add(variant, obj, f"{where}.securityContext.seccompProfile", "Unconfined")
        for port in c.get("ports", []):
            if "hostPort" in port:
                p.add(variant, obj, f"{where}.ports", "hostPort not allowed")
        target, problem = image_target(c.get("image", ""))
        if problem:
            p.add(variant, obj, f"{where}.image", problem)
        if target:
            uid, gid = uids[target]
            user = csc.get("runAsUser", psc.get("runAsUser"))
            group = csc.get("runAsGroup", psc.get("runAsGroup"))
            if user != uid:
                p.add(variant, obj, f"{where} runAsUser", f"{user}, but image {target} runs as "
                      f"USER {uid} (Dockerfile)")
            if group != gid:
                p.add(variant, obj, f"{where} runAsGroup", f"{group}, but image {target} has group {gid}")
            if psc.get("fsGroup") != gid:
                p.add(variant, obj, "securityContext.fsGroup", f"{psc.get('fsGroup')}, but image "
                      f"{target}'s group is {gid}")


def check_writable(p, variant, obj):
    spec = pod_spec(obj)
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    claims = {t["metadata"]["name"] for t in obj.get("spec", {}).get("volumeClaimTemplates", [])}
    disk_limit = 0.0
    for c in spec.get("containers", []):
        where = f"containers.{c['name']}"
        mounts = c.get("volumeMounts", [])
        writable = {}
        for m in mounts:
            v = vols.get(m["name"])
            ok = (v is not None and "emptyDir" in v) or m["name"] in claims or (
                v is not None and "persistentVolumeClaim" in v)
            if ok and not m.get("readOnly"):
                writable[m["mountPath"]] = m["name"]
            if v is not None and "secret" in v and not m.get("readOnly"):
                p.add(variant, obj, f"{where}.volumeMounts.{m['name']}", "Secret mounted writable")
        args = c.get("args", []) + c.get("command", [])
        needs = {"/tmp": "temporary files"}
        for flag in ("--data-dir", "--work-dir"):
            value = arg_value(args, flag)
            if value:
                needs[value] = flag
        for path, why in needs.items():
            if not any(path == mp or path.startswith(mp.rstrip("/") + "/") for mp in writable):
                p.add(variant, obj, f"{where}.volumeMounts", f"{path} ({why}) is on the read-only "
                      "root: mount a writable emptyDir or volume claim there")
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            if "ephemeral-storage" not in res.get(kind, {}):
                p.add(variant, obj, f"{where}.resources.{kind}.ephemeral-storage", "missing")
        disk_limit += quantity(res.get("limits", {}).get("ephemeral-storage", 0))
        # Files the args name under a Secret mount must be keys of that Secret.
        for a in args:
            for m in mounts:
                v = vols.get(m["name"], {})
                if "secret" in v and a.startswith(m["mountPath"].rstrip("/") + "/"):
                    key = a[len(m["mountPath"].rstrip("/")) + 1:]
                    name = v["secret"]["secretName"]
                    keys = TLS_KEYS if name in TLS_SECRETS else OPERATOR_SECRETS.get(name, set())
                    if key not in keys:
                        p.add(variant, obj, f"{where}.args", f"{a}: Secret {name} has no key {key} "
                              f"(it has {sorted(keys)})")
    disk_dirs = 0.0
    for v in vols.values():
        ed = v.get("emptyDir")
        if ed is None:
            continue
        if "sizeLimit" not in ed:
            p.add(variant, obj, f"volumes.{v['name']}.emptyDir.sizeLimit", "missing: an emptyDir "
                  "without a cap can fill the node")
        elif ed.get("medium") != "Memory":
            disk_dirs += quantity(ed["sizeLimit"])
    if disk_dirs > disk_limit:
        p.add(variant, obj, "resources.limits.ephemeral-storage", f"the containers' limits "
              f"({disk_limit / 2**30:.0f} GiB) are below their emptyDirs' sizeLimits "
              f"({disk_dirs / 2**30:.0f} GiB): the kubelet evicts before the caps are reached")


def label_match(selector, labels):
    sel = selector or {}
    if any(labels.get(k) != v for k, v in sel.get("matchLabels", {}).items()):
        return False
    for e in sel.get("matchExpressions", []):
        has, val = e["key"] in labels, labels.get(e["key"])
        op = e["operator"]
        if op == "In" and val not in e.get("values", []):
            return False
        if op == "NotIn" and val in e.get("values", []):
            return False
        if op == "Exists" and not has or op == "DoesNotExist" and has:
            return False
    return True


def peer_match(peer, ns_labels, labels):
    """Whether a NetworkPolicy peer admits a pod (namespace labels, pod labels)."""
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        if not label_match(peer["namespaceSelector"], ns_labels):
            return False
    elif ns_labels.get("kubernetes.io/metadata.name") != NAMESPACE:
        return False
    return label_match(peer.get("podSelector"), labels)


def port_match(ports, port):
    if not ports:
        return True
    for pp in ports:
        if pp.get("protocol", "TCP") != "TCP":
            continue
        lo = pp.get("port")
        if lo is None:
            return True
        hi = pp.get("endPort", lo)
        if isinstance(lo, int) and lo <= port <= hi:
            return True
    return False


def allowed(policies, src, dst, port):
    """Whether TCP src -> dst:port is admitted; src/dst are (namespace labels, pod labels) and
    dst is in NAMESPACE. Both the destination's ingress and, for a source in NAMESPACE, its
    egress policies must admit it."""

    def side(direction, me, other):
        selecting = [np for np in policies if label_match(np["spec"].get("podSelector"), me[1])
                     and direction in np["spec"].get("policyTypes", ["Ingress"])]
        if not selecting:
            return True
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for np in selecting:
            for rule in np["spec"].get(key, []):
                peers = rule.get(peers_key)
                if (not peers or any(peer_match(pr, other[0], other[1]) for pr in peers)) and \
                        port_match(rule.get("ports"), port):
                    return True
        return False

    ok = side("Ingress", dst, src)
    if src[0].get("kubernetes.io/metadata.name") == NAMESPACE:
        ok = ok and side("Egress", src, dst)
    return ok


def check_network(p, variant, objs, by_kind):
    policies = by_kind.get("NetworkPolicy", [])
    own = {"kubernetes.io/metadata.name": NAMESPACE}
    if not any(np["spec"].get("podSelector") in ({}, None)
               and set(np["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
               and not np["spec"].get("ingress") and not np["spec"].get("egress")
               for np in policies):
        p.add(variant, None, "NetworkPolicy", "no default deny (podSelector {}, Ingress and Egress)")
    ctl = [o for o in by_kind.get("StatefulSet", []) if o["metadata"]["name"] == "lorad"]
    wrk = [o for o in by_kind.get("StatefulSet", []) if o["metadata"]["name"] == "lora-worker"]
    if not ctl or not wrk:
        p.add(variant, None, "StatefulSet", "lorad and lora-worker StatefulSets expected")
        return
    ctl, wrk = ctl[0], wrk[0]
    cl, wl = (own, pod_labels(ctl)), (own, pod_labels(wrk))
    for o in (ctl, wrk):
        types = set()
        for np in policies:
            if label_match(np["spec"].get("podSelector"), pod_labels(o)):
                types |= set(np["spec"].get("policyTypes", []))
        if types != {"Ingress", "Egress"}:
            p.add(variant, o, "NetworkPolicy", f"its pods are not isolated both ways ({sorted(types)})")
    c = pod_spec(ctl)["containers"][0]
    ports = {pp.get("name"): pp["containerPort"] for pp in c.get("ports", [])}
    listen = arg_value(c["args"], "--listen") or ""
    metrics = arg_value(c["args"], "--metrics-listen") or ""
    grpc_port = int(listen.rsplit(":", 1)[1]) if ":" in listen else None
    metrics_port = int(metrics.rsplit(":", 1)[1]) if ":" in metrics else None
    if ports.get("grpc") != grpc_port:
        p.add(variant, ctl, "containers.lorad.ports.grpc", f"{ports.get('grpc')}, but --listen {listen}")
    if ports.get("metrics") != metrics_port:
        p.add(variant, ctl, "containers.lorad.ports.metrics", f"{ports.get('metrics')}, but "
              f"--metrics-listen {metrics}")
    svc = [s for s in by_kind.get("Service", []) if s["metadata"]["name"] == "lorad"]
    if not svc or not label_match({"matchLabels": svc[0]["spec"].get("selector", {})}, cl[1]):
        p.add(variant, ctl, "Service lorad", "missing, or does not select the lorad pods")
    # The workers dial the Service's gRPC port.
    w = pod_spec(wrk)["containers"][0]
    target = arg_value(w["args"], "--controller") or ""
    host, _, port = target.rpartition(":")
    if svc:
        sp = {pp["name"]: pp for pp in svc[0]["spec"]["ports"]}
        if host.split(".")[0] != "lorad" or not port.isdigit() or "grpc" not in sp or \
                int(port) != sp["grpc"]["port"]:
            p.add(variant, wrk, "containers.worker.args --controller", f"{target}: not the lorad "
                  "Service's grpc port")
        elif sp["grpc"].get("targetPort") not in ("grpc", grpc_port):
            p.add(variant, svc[0], "spec.ports.grpc.targetPort", "not lorad's gRPC port")
    if grpc_port is not None:
        if not allowed(policies, wl, cl, grpc_port):
            p.add(variant, wrk, "NetworkPolicy", f"workers cannot reach lorad:{grpc_port}")
        if not allowed(policies, CLIENT, cl, grpc_port):
            p.add(variant, ctl, "NetworkPolicy", f"clients labelled {CLIENT[1]} cannot reach "
                  f"lorad:{grpc_port}")
        if allowed(policies, STRANGER, cl, grpc_port):
            p.add(variant, ctl, "NetworkPolicy", f"an unlabelled pod of another namespace reaches "
                  f"lorad:{grpc_port}")
    if metrics_port is not None:
        if not allowed(policies, PROMETHEUS, cl, metrics_port):
            p.add(variant, ctl, "NetworkPolicy", f"Prometheus {PROMETHEUS} cannot scrape "
                  f"lorad:{metrics_port}")
        if allowed(policies, STRANGER, cl, metrics_port) or allowed(policies, wl, cl, metrics_port):
            p.add(variant, ctl, "NetworkPolicy", f"lorad:{metrics_port} is open beyond Prometheus")
    for other in (1, 22, 8080):
        if allowed(policies, wl, cl, other):
            p.add(variant, ctl, "NetworkPolicy", f"workers reach lorad on port {other}")
    # Ranks: exactly the sysctl's range between workers, nothing outside it.
    rng = None
    for s in pod_spec(wrk).get("securityContext", {}).get("sysctls", []):
        if s["name"] == "net.ipv4.ip_local_port_range":
            lo, hi = (int(x) for x in s["value"].split())
            rng = (lo, hi)
    if rng is None:
        p.add(variant, wrk, "securityContext.sysctls", "no net.ipv4.ip_local_port_range: the "
              "ranks' ports would be anywhere in the kernel's ephemeral range")
    else:
        lo, hi = rng
        for port in (lo, (lo + hi) // 2, hi):
            if not allowed(policies, wl, wl, port):
                p.add(variant, wrk, "NetworkPolicy", f"worker -> worker :{port} (in the rank range "
                      f"{lo}-{hi}) is not admitted")
        for port in (lo - 1, hi + 1):
            if allowed(policies, wl, wl, port):
                p.add(variant, wrk, "NetworkPolicy", f"worker -> worker :{port} (outside {lo}-{hi}) "
                      "is admitted")
        if allowed(policies, STRANGER, wl, lo):
            p.add(variant, wrk, "NetworkPolicy", "pods other than workers reach the rank ports")
    for who, labels in (("lorad", cl), ("workers", wl)):
        dns = ({"kubernetes.io/metadata.name": "kube-system"}, {"k8s-app": "kube-dns"})
        own_egress = [np for np in policies if label_match(np["spec"].get("podSelector"), labels[1])
                      and "Egress" in np["spec"].get("policyTypes", [])]
        ok = any(port_match(r.get("ports"), 53) and (not r.get("to") or any(
            peer_match(pr, dns[0], dns[1]) for pr in r["to"]))
            for np in own_egress for r in np["spec"].get("egress", []))
        if not ok:
            p.add(variant, None, "NetworkPolicy", f"{who} cannot resolve names (port 53)")


def check_objects(p, variant, objs, uids, source, placeholders):
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
        md = o.get("metadata", {})
        if o["kind"] not in CLUSTER_SCOPED and md.get("namespace") != NAMESPACE:
            p.add(variant, o, "metadata.namespace", f"{md.get('namespace')!r}, expected {NAMESPACE}")
    ns = [n for n in by_kind.get("Namespace", []) if n["metadata"]["name"] == NAMESPACE]
    if not ns:
        p.add(variant, None, "Namespace", f"{NAMESPACE} is not rendered")
    else:
        labels = ns[0]["metadata"].get("labels", {})
        for mode in ("enforce", "audit", "warn"):
            if labels.get(f"pod-security.kubernetes.io/{mode}") != "restricted":
                p.add(variant, ns[0], f"metadata.labels.pod-security.kubernetes.io/{mode}",
                      "must be restricted")
    for s in by_kind.get("Secret", []):
        p.add(variant, s, "kind", "Secrets are not part of deploy/: the operator creates "
              "lorad-tokens, cert-manager the TLS Secrets (docs/OPERATIONS.md)")
    # No placeholder lorad would refuse, anywhere.
    def walk(x, path):
        if isinstance(x, dict):
            for k, v in x.items():
                yield from walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(x, list):
            for i, v in enumerate(x):
                yield from walk(v, f"{path}[{i}]")
        elif isinstance(x, str):
            yield path, x
    for o in objs:
        for path, value in walk(o, ""):
            for line in value.splitlines() or [value]:
                first = line.split(",")[0].strip().lower()
                if first in placeholders or line.strip().lower() in placeholders:
                    p.add(variant, o, path, f"placeholder {first!r} (lorad refuses it at start)")
    issued = {c["spec"].get("secretName") for c in by_kind.get("Certificate", [])}
    certmanager = bool(by_kind.get("Certificate"))
    workloads = [o for o in objs if o["kind"] in WORKLOADS and pod_spec(o)]
    for o in workloads:
        check_security(p, variant, o, uids)
        check_writable(p, variant, o)
        for v in pod_spec(o).get("volumes", []):
            if "secret" in v:
                name = v["secret"]["secretName"]
                if name in TLS_SECRETS:
                    if certmanager and name not in issued:
                        p.add(variant, o, f"volumes.{v['name']}", f"Secret {name}: no Certificate "
                              "issues it")
                elif name not in OPERATOR_SECRETS:
                    p.add(variant, o, f"volumes.{v['name']}", f"Secret {name} is neither issued "
                          "here nor one the operator is told to create")
    if variant != "base" and not certmanager:
        p.add(variant, None, "Certificate", "overlays serve TLS: the cert-manager component is missing")
    # Device, image and GPUs agree.
    for o in workloads:
        for c in pod_spec(o)["containers"]:
            target, _ = image_target(c.get("image", ""))
            args = c.get("args", [])
            device = arg_value(args, "--device")
            gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
            if o["metadata"]["name"] == "lorad" and target != "controller":
                p.add(variant, o, f"containers.{c['name']}.image", f"{c.get('image')}: lorad runs on "
                      "the controller image")
            if target == "worker-cuda" and (device != "cuda" or not gpus):
                p.add(variant, o, f"containers.{c['name']}", "CUDA image without --device cuda "
                      "and nvidia.com/gpu limits")
            if target == "worker-cpu" and (device != "cpu" or gpus):
                p.add(variant, o, f"containers.{c['name']}", "CPU image with --device "
                      f"{device} / GPUs {gpus}")
            if args and target and os.path.basename(args[0]) not in {
                    os.path.basename(b) for b in dockerfile.IMAGES[target]["binaries"]}:
                p.add(variant, o, f"containers.{c['name']}.args[0]", f"{args[0]} is not a binary "
                      f"of image {target}")
        if variant.startswith("gpu") and o["metadata"]["name"] == "lora-worker":
            if image_target(pod_spec(o)["containers"][0]["image"])[0] != "worker-cuda":
                p.add(variant, o, "containers.worker.image", "the gpu overlay's workers run the "
                      "CUDA image")
    # The worker StatefulSet: headless governing Service, PDB.
    for o in by_kind.get("StatefulSet", []):
        labels = pod_labels(o)
        svc = [s for s in by_kind.get("Service", [])
               if s["metadata"]["name"] == o["spec"].get("serviceName")]
        if o["metadata"]["name"] == "lora-worker":
            if not svc or svc[0]["spec"].get("clusterIP") != "None":
                p.add(variant, o, "spec.serviceName", "must name a headless Service (clusterIP: None)")
            elif not label_match({"matchLabels": svc[0]["spec"].get("selector", {})}, labels):
                p.add(variant, svc[0], "spec.selector", "does not select the worker pods")
            pdbs = [d for d in by_kind.get("PodDisruptionBudget", [])
                    if label_match(d["spec"].get("selector"), labels)]
            if not pdbs:
                p.add(variant, o, "PodDisruptionBudget", "none selects the worker pods")
            elif not any("maxUnavailable" in d["spec"] or "minAvailable" in d["spec"] for d in pdbs):
                p.add(variant, pdbs[0], "spec", "neither maxUnavailable nor minAvailable")
    check_network(p, variant, objs, by_kind)
    check_replicas(p, variant, by_kind)
    # Monitoring.
    for sm in by_kind.get("ServiceMonitor", []):
        svcs = [s for s in by_kind.get("Service", [])
                if label_match(sm["spec"].get("selector"), s["metadata"].get("labels", {}))]
        if [s["metadata"]["name"] for s in svcs] != ["lorad"]:
            p.add(variant, sm, "spec.selector", f"selects Services {[s['metadata']['name'] for s in svcs]}, "
                  "expected exactly lorad")
        else:
            names = {pp.get("name") for pp in svcs[0]["spec"]["ports"]}
            for ep in sm["spec"].get("endpoints", []):
                if ep.get("port") not in names or ep.get("port") != "metrics":
                    p.add(variant, sm, "spec.endpoints.port", f"{ep.get('port')}: not the lorad "
                          "Service's metrics port")
    if variant.endswith("+monitoring"):
        if not by_kind.get("ServiceMonitor") or not by_kind.get("PrometheusRule"):
            p.add(variant, None, "monitoring", "ServiceMonitor and PrometheusRule expected")
        with open(os.path.join(source, "deploy/prometheus/alerts.yaml")) as f:
            groups = yaml.safe_load(f)["groups"]
        for r in by_kind.get("PrometheusRule", []):
            if r["spec"].get("groups") != groups:
                p.add(variant, r, "spec.groups", "differ from deploy/prometheus/alerts.yaml: run "
                      "scripts/gen-prometheus-rule.py")


def check_replicas(p, variant, by_kind):
    """More than one lorad: PostgreSQL, routing to the leader, a shared volume, a PDB."""
    for o in by_kind.get("StatefulSet", []):
        if o["metadata"]["name"] != "lorad" or o["spec"].get("replicas", 1) <= 1:
            continue
        c = pod_spec(o)["containers"][0]
        args = c.get("args", [])
        if not arg_value(args, "--store-url-file"):
            p.add(variant, o, "containers.lorad.args", "replicas > 1 without --store-url-file: "
                  "SQLite belongs to one controller; replicas share PostgreSQL")
        advertise = arg_value(args, "--advertise") or ""
        if f".{o['spec'].get('serviceName')}." not in advertise:
            p.add(variant, o, "containers.lorad.args --advertise", f"{advertise!r}: must name the "
                  "replica through the governing Service (followers quote it to clients)")
        probe = (c.get("readinessProbe") or {}).get("httpGet", {})
        if probe.get("path") != "/leader":
            p.add(variant, o, "containers.lorad.readinessProbe", "must be GET /leader: the lorad "
                  "Service routes clients and workers to the leader only")
        if o["spec"].get("volumeClaimTemplates"):
            p.add(variant, o, "spec.volumeClaimTemplates", "a claim per replica: replicas share "
                  "artifacts and uploads on one ReadWriteMany claim")
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod_spec(o).get("volumes", [])
                  if "persistentVolumeClaim" in v}
        for pvc in by_kind.get("PersistentVolumeClaim", []):
            if pvc["metadata"]["name"] in claims and \
                    "ReadWriteMany" not in pvc["spec"].get("accessModes", []):
                p.add(variant, pvc, "spec.accessModes", "replicas mount it together: "
                      "ReadWriteMany")
        svc = [s for s in by_kind.get("Service", [])
               if s["metadata"]["name"] == o["spec"].get("serviceName")]
        if not svc or svc[0]["spec"].get("clusterIP") != "None" or \
                not svc[0]["spec"].get("publishNotReadyAddresses"):
            p.add(variant, o, "spec.serviceName", "must name a headless Service that publishes "
                  "not-ready (following) replicas too")
        if not any(label_match(d["spec"].get("selector"), pod_labels(o))
                   for d in by_kind.get("PodDisruptionBudget", [])):
            p.add(variant, o, "PodDisruptionBudget", "none selects the lorad replicas")
        egress = [r for np in by_kind.get("NetworkPolicy", [])
                  if label_match(np["spec"].get("podSelector"), pod_labels(o))
                  for r in np["spec"].get("egress", [])]
        if not any(port_match(r.get("ports"), 5432) for r in egress):
            p.add(variant, o, "NetworkPolicy", "lorad cannot reach PostgreSQL (TCP 5432)")


def placeholders_of(source):
    """The placeholder secrets lorad refuses, read from its source."""
    text = open(os.path.join(source, "server/grpc/auth.cc")).read()
    m = re.search(r"for \(const char\* placeholder : \{([^}]*)\}", text)
    if not m:
        raise SystemExit("server/grpc/auth.cc: cannot find lorad's placeholder list")
    return {s.lower() for s in re.findall(r'"([^"]*)"', m.group(1))}


# Broken copies of deploy/ the checks must catch: (file, replace this (every occurrence), with
# this, a problem that must then be reported).
SELF_TESTS = [
    ("base/lorad.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false",
     "containers.lorad.securityContext.readOnlyRootFilesystem: must be true"),
    ("base/lora-worker.yaml", "runAsUser: 10002", "runAsUser: 10003",
     "runs as USER 10002 (Dockerfile)"),
    ("base/lora-worker.yaml", "capabilities: {drop: [ALL]}", "capabilities: {drop: [NET_RAW]}",
     "capabilities.drop: must include ALL"),
    ("base/lora-worker.yaml", "seccompProfile: {type: RuntimeDefault}",
     "seccompProfile: {type: Unconfined}", "seccompProfile.type: must be RuntimeDefault"),
    ("base/lora-worker.yaml", "automountServiceAccountToken: false", "",
     "automountServiceAccountToken: must be false"),
    ("base/namespace.yaml", "enforce: restricted", "enforce: baseline",
     "pod-security.kubernetes.io/enforce: must be restricted"),
    ("base/lorad.yaml", "- {name: tmp, mountPath: /tmp}", "",
     "/tmp (temporary files) is on the read-only root"),
    ("base/lorad.yaml", "- {name: data, mountPath: /data}", "- {name: data, mountPath: /var/lib/lorad}",
     "/data (--data-dir) is on the read-only root"),
    ("base/lora-worker.yaml", "emptyDir: {sizeLimit: 50Gi}", "emptyDir: {sizeLimit: 80Gi}",
     "below their emptyDirs' sizeLimits"),
    ("base/lora-worker.yaml", "emptyDir: {sizeLimit: 50Gi}", "emptyDir: {}",
     "emptyDir.sizeLimit: missing"),
    ("base/lora-worker.yaml", "limits: {memory: 16Gi, ephemeral-storage: 56Gi}",
     "limits: {memory: 16Gi}", "resources.limits.ephemeral-storage: missing"),
    ("base/lorad.yaml", "---\napiVersion: v1\nkind: Service",
     "---\napiVersion: v1\nkind: Secret\nmetadata: {name: lorad-tokens}\n"
     "stringData: {tokens.csv: \"change-me,ops,admin\\n\"}\n---\napiVersion: v1\nkind: Service",
     "placeholder 'change-me'"),
    ("base/lorad.yaml", '"/etc/lorad/tokens/tokens.csv"', '"/etc/lorad/tokens/token.csv"',
     "Secret lorad-tokens has no key token.csv"),
    ("base/lorad.yaml", "image: lorad-controller", "image: lora-worker-cpu",
     "lorad runs on the controller image"),
    ("overlays/gpu/kustomization.yaml", "value: lora-worker-cuda", "value: lora-worker-cpu",
     "CPU image with --device cuda"),
    ("base/lora-worker.yaml", "          - {name: net.ipv4.ip_local_port_range, value: \"40000 40999\"}\n",
     "          - {name: net.ipv4.tcp_syncookies, value: \"1\"}\n",
     "no net.ipv4.ip_local_port_range"),
    ("base/lora-worker.yaml", "value: \"40000 40999\"", "value: \"40000 41999\"",
     "(in the rank range 40000-41999) is not admitted"),
    ("base/networkpolicy.yaml", "endPort: 40999}", "endPort: 41999}",
     "(outside 40000-40999) is admitted"),
    ("base/networkpolicy.yaml", "        - namespaceSelector: {}\n          podSelector:\n"
     "            matchLabels: {lorad.io/client: \"true\"}\n", "        - namespaceSelector: {}\n",
     "an unlabelled pod of another namespace reaches lorad:50051"),
    ("base/networkpolicy.yaml", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n",
     "  podSelector: {}\n  policyTypes: [Ingress]\n", "no default deny"),
    ("base/lora-worker.yaml", "  clusterIP: None\n", "", "must name a headless Service"),
    ("base/lora-worker.yaml", "  maxUnavailable: 1\n  selector:\n    matchLabels: {app: lora-worker}",
     "  maxUnavailable: 1\n  selector:\n    matchLabels: {app: other}",
     "PodDisruptionBudget: none selects the worker pods"),
    ("base/lora-worker.yaml", "podManagementPolicy: Parallel", "podManagmentPolicy: Parallel",
     "schema"),
    ("components/monitoring/prometheusrule.yaml", "for: 2m", "for: 3m",
     "differ from deploy/prometheus/alerts.yaml"),
    ("components/monitoring/servicemonitor.yaml", "- port: metrics", "- port: grpc",
     "not the lorad Service's metrics port"),
    ("overlays/ha/kustomization.yaml", "httpGet: {path: /leader, port: metrics}",
     "tcpSocket: {port: grpc}", "readinessProbe: must be GET /leader"),
    ("overlays/ha/kustomization.yaml", '"--store-url-file", "/etc/lorad/store/url",', "",
     "replicas > 1 without --store-url-file"),
    ("overlays/ha/replicas.yaml", 'accessModes: ["ReadWriteMany"]', 'accessModes: ["ReadWriteOnce"]',
     "replicas mount it together"),
    ("overlays/ha/replicas.yaml", "        - {protocol: TCP, port: 5432}", "        - {protocol: TCP, port: 5433}",
     "lorad cannot reach PostgreSQL"),
]


def self_test(source):
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in ("Dockerfile", "server/grpc/auth.cc"):
            os.makedirs(os.path.join(tmp, os.path.dirname(f)), exist_ok=True)
            shutil.copy(os.path.join(source, f), os.path.join(tmp, f))
        for rel, old, new, expect in SELF_TESTS:
            shutil.rmtree(os.path.join(tmp, "deploy"), ignore_errors=True)
            shutil.copytree(os.path.join(source, "deploy"), os.path.join(tmp, "deploy"))
            path = os.path.join(tmp, "deploy", rel)
            text = open(path).read()
            if old not in text:
                failures.append(f"self-test: deploy/{rel} no longer contains {old!r}: update "
                                "SELF_TESTS")
                continue
            with open(path, "w") as f:
                f.write(text.replace(old, new))
            # The schemas are slow to evaluate: only the mutation that needs them uses them.
            extra = [] if expect == "schema" else ["--no-schema"]
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--source-dir", tmp]
                                 + extra, capture_output=True, text=True)
            if out.returncode != 1 or expect not in out.stdout:
                failures.append(f"self-test: deploy/{rel}: {old!r} -> {new!r} did not report "
                                f"{expect!r} (exit {out.returncode}):\n{out.stdout}{out.stderr}")
    return failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source-dir", default=os.path.normpath(os.path.join(HERE, "..", "..")))
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--no-schema", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    source = a.source_dir
    stages = dockerfile.parse(os.path.join(source, "Dockerfile"))
    uids = {}
    p = Problems()
    for target in dockerfile.IMAGES:
        ids = dockerfile.user_ids(dockerfile.chain(stages, target))
        if ids is None or ids[1] is None:
            p.add("Dockerfile", None, target, "no numeric USER uid:gid")
            ids = (None, None)
        uids[target] = ids
    placeholders = placeholders_of(source)
    counts = []
    for name, path, components in variants(source):
        try:
            objs = render(path, components)
        except RuntimeError as e:
            p.add(name, None, "kubectl kustomize", str(e))
            continue
        counts.append(f"{name} ({len(objs)})")
        if not a.no_schema:
            check_schema(p, name, objs)
        check_objects(p, name, objs, uids, source, placeholders)
    if a.self_test and not p:
        p.extend(self_test(source))
        if not p:
            print(f"k8s_check: the {len(SELF_TESTS)} broken copies of deploy/ of the self-test fail")
    for line in p:
        print(f"FAIL {line}")
    if p:
        print(f"k8s_check: {len(p)} problem(s)")
        return 1
    print(f"k8s_check: ok: {', '.join(counts)} objects; schemas of Kubernetes "
          f"{' and '.join(SCHEMA_VERSIONS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
