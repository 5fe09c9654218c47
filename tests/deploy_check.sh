#!/usr/bin/env bash
# Static checks of deploy/: every YAML document parses, the Prometheus scrape config and alert
# rules are valid (the rules' own unit tests pass), the PrometheusRule of
# components/monitoring carries exactly the rules of prometheus/alerts.yaml (and they pass
# promtool too). The rendered Kubernetes objects are checked by tests/deploy/k8s_check.py
# (ctest k8s_manifests_check), the images by tests/deploy/image_check.py (image_check).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${LORA_PYTHON:-python3}
"$PYTHON" - <<'PY'
import glob, sys, yaml
ok = True
for path in sorted(glob.glob("deploy/**/*.yaml", recursive=True)):
    try:
        list(yaml.safe_load_all(open(path)))
    except yaml.YAMLError as e:
        print(f"{path}: {e}"); ok = False
sys.exit(0 if ok else 1)
PY
"$PYTHON" scripts/gen-prometheus-rule.py --check
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -c 'import sys, yaml; yaml.safe_dump({"groups": yaml.safe_load(open(sys.argv[1]))["spec"]["groups"]}, open(sys.argv[2], "w"))' \
  deploy/components/monitoring/prometheusrule.yaml "$tmp/prometheusrule-groups.yaml"
promtool check config deploy/prometheus/scrape.yaml > /dev/null
promtool check rules deploy/prometheus/alerts.yaml "$tmp/prometheusrule-groups.yaml" > /dev/null
promtool test rules deploy/prometheus/alerts_test.yaml > /dev/null
echo "deploy/: ok"
