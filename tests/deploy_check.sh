#!/usr/bin/env bash
# Static checks of deploy/: every YAML document parses, the Prometheus scrape config and alert
# rules are valid (the rules' own unit tests pass), and the Kubernetes objects have the fields
# the controllers rely on.
set -euo pipefail
cd "$(dirname "$0")/.."
"${LORA_PYTHON:-python3}" - <<'PY'
import glob, sys, yaml
ok = True
for path in sorted(glob.glob("deploy/**/*.yaml", recursive=True)):
    for doc in yaml.safe_load_all(open(path)):
        if doc is None:
            continue
        if path.endswith("kustomization.yaml"):
            for r in doc.get("resources", []):
                import os
                target = os.path.normpath(os.path.join(os.path.dirname(path), r))
                if not os.path.exists(target):
                    print(f"{path}: resource {r} does not exist"); ok = False
        elif "kind" in doc and doc["kind"] in ("StatefulSet", "Deployment"):
            c = doc["spec"]["template"]["spec"]["containers"][0]
            if not c.get("image") or not c.get("args"):
                print(f"{path}: {doc['metadata']['name']}: container needs image and args"); ok = False
sys.exit(0 if ok else 1)
PY
promtool check config deploy/prometheus/scrape.yaml > /dev/null
promtool check rules deploy/prometheus/alerts.yaml > /dev/null
promtool test rules deploy/prometheus/alerts_test.yaml > /dev/null
echo "deploy/: ok"
