#!/usr/bin/env bash
# tests/deploy/run.sh -- the deploy tests (`make test-deploy`): the Helm chart
# charts/circus-warden and the Dockerfile, checked without a cluster or a container engine.
#   1. helm lint --strict: default values, tests/deploy/values-all.yaml (every feature),
#      values-existing-secret.yaml and values-smoke.yaml (container_smoke.sh's hostile-process
#      policy); values.schema.json must refuse bad values; the chart
#      README's values table must match values.yaml (values_doc.py --check).
#   2. helm template | kubernetes-validate --strict for several Kubernetes versions. Built-in
#      kinds are validated against kubernetes-validate's schemas; it only warns about kinds it
#      has no schema for, so any warning other than for ServiceMonitor/PrometheusRule fails the
#      test, and those two are validated strictly against the vendored Prometheus Operator
#      CRDs (manifests.py crds). The capability check is tested too: without the
#      monitoring.coreos.com/v1 API neither is rendered.
#   3. `circus-warden config check` and `policy check` (the built binary) on the config.yaml and
#      policy each values file renders, and on the image's standalone files (deploy/image);
#      checkov (helm framework, for each values file; dockerfile framework) and hadolint.
#   4. promtool check rules on the rendered PrometheusRule and promtool test rules
#      (tests/deploy/rules-test.yml: every alert, firing and not firing).
#   5. pod_boot.py: the rendered pod booted locally (circusd + the warden, the chart's files,
#      args, env and security contexts: circusd as uid 0 with SETUID/SETGID/KILL only, the
#      warden as 10001) and driven over MCP, with default values and with values-all.yaml
#      (which also has a process print to the shared output directory and reads it with
#      get_logs, and checks that an added process runs as the run-as user); and once with
#      a policy without run_as, which the warden must refuse (isolation.require: uid). Root.
# Tools: .tools/deploy-venv (helm, kubernetes-validate, checkov, hadolint), promtool (apt
# `prometheus`), .venv (circus, mcp, PyYAML), target/release/circus-warden; the Makefile
# target installs and builds them. Prints each step's duration.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
TOOLS=${DEPLOY_TOOLS:-$ROOT/.tools/deploy-venv/bin}
HELM=$TOOLS/helm
VPY=${VPY:-$ROOT/.venv/bin/python}
CHART=charts/circus-warden
# Kubernetes minor versions to validate against (kubernetes-validate 1.37 ships 1.25-1.37).
K8S_VERSIONS=${K8S_VERSIONS:-1.29.0 1.31.0 1.33.0 1.35.0}
RELEASE=cw
NAMESPACE=demo
OUT=$(mktemp -d /tmp/cw-deploy.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
export PATH="$TOOLS:$PATH"   # checkov's helm framework runs `helm` from PATH

declare -A VALUES=(
    [default]=""
    [all]="tests/deploy/values-all.yaml"
    [existing-secret]="tests/deploy/values-existing-secret.yaml"
    [smoke]="tests/deploy/values-smoke.yaml"
)
NAMES=(default all existing-secret smoke)
values_args() { [[ -n ${VALUES[$1]} ]] && printf -- '-f\n%s\n' "${VALUES[$1]}"; return 0; }

T0=$(date +%s)
DURATIONS=()
step_start=0
step() { step_name=$1; step_start=$(date +%s%N); printf '\n== %s\n' "$1"; }
step_end() {
    local ms=$(( ($(date +%s%N) - step_start) / 1000000 ))
    DURATIONS+=("$(printf '%7.1fs  %s' "$(echo "$ms" | awk '{print $1/1000}')" "$step_name")")
}

step "helm lint --strict"
for n in "${NAMES[@]}"; do
    mapfile -t va < <(values_args "$n")
    "$HELM" lint --strict "$CHART" "${va[@]}" | tail -n 1 | sed "s/^/[$n] /"
done
# The schema is strict: unknown keys and malformed tokens are refused.
for bad in "unknownKey=1" "config.gate.executabls[0]=/bin/true" "auth.tokens[0].identity=ci,auth.tokens[0].token=short" \
           "auth.tokens[0].identity=ci,auth.tokens[0].token=has\"quote0123456789" "image.pullPolicy=Sometimes" \
           "config.output.dir=/var/tmp/out" "config.output.alerts[0].id=x,config.output.alerts[0].severity=info" \
           "config.isolation.require=maybe" "circusd.watchers[0].name=w,circusd.watchers[0].cmd=/bin/true,circusd.watchers[0].user=root"; do
    if "$HELM" lint --strict "$CHART" --set "$bad" >/dev/null 2>&1; then
        echo "values.schema.json accepted --set $bad" >&2; exit 1
    fi
done
echo "schema refuses unknown keys, misspelt keys, short or unsafe tokens, bad enums, the chart-owned output.dir, an alert rule without a kind, an unknown isolation level, a root ini watcher"
"$VPY" tests/deploy/values_doc.py --check
step_end

step "helm template | kubernetes-validate --strict (Kubernetes $K8S_VERSIONS)"
for n in "${NAMES[@]}"; do
    mapfile -t va < <(values_args "$n")
    "$HELM" template "$RELEASE" "$CHART" -n "$NAMESPACE" --api-versions monitoring.coreos.com/v1 "${va[@]}" > "$OUT/$n.yaml"
    kinds=$("$VPY" -c 'import sys,yaml; print(" ".join(sorted(d["kind"] for d in yaml.safe_load_all(open(sys.argv[1])) if d)))' "$OUT/$n.yaml")
    echo "[$n] renders: $kinds"
    for v in $K8S_VERSIONS; do
        rc=0
        "$TOOLS/kubernetes-validate" --strict --quiet -k "$v" "$OUT/$n.yaml" > "$OUT/kv.txt" 2>&1 || rc=$?
        unexpected=$(grep -v -E "^WARN .*Couldn't find schema for kind (ServiceMonitor|PrometheusRule) with api version monitoring.coreos.com/v1 " "$OUT/kv.txt" || true)
        if [[ $rc != 0 || -n $unexpected ]]; then
            echo "[$n] kubernetes $v: FAILED (rc $rc)"; cat "$OUT/kv.txt"; exit 1
        fi
        echo "[$n] kubernetes $v: ok"
    done
    "$TOOLS/python" tests/deploy/manifests.py crds "$OUT/$n.yaml" | sed "s/^/[$n] /"
done
# Without the monitoring.coreos.com/v1 API, the Prometheus Operator objects are not rendered.
if "$HELM" template "$RELEASE" "$CHART" -n "$NAMESPACE" -f tests/deploy/values-all.yaml | grep -q -E '^kind: (ServiceMonitor|PrometheusRule)'; then
    echo "ServiceMonitor/PrometheusRule rendered without the monitoring.coreos.com/v1 API" >&2; exit 1
fi
echo "capability check: no ServiceMonitor/PrometheusRule without monitoring.coreos.com/v1"
step_end

step "circus-warden config check / policy check (rendered files, the image's files)"
BIN=${CIRCUS_WARDEN_BIN:-$ROOT/target/release/circus-warden}
for n in "${NAMES[@]}"; do
    "$TOOLS/python" tests/deploy/manifests.py files "$OUT/$n.yaml" "$OUT/files-$n" > /dev/null
    "$BIN" config check --config "$OUT/files-$n/$RELEASE-circus-warden-config/config.yaml" 2>&1 | sed "s/^/[$n] config.yaml: /"
    "$BIN" policy check "$OUT/files-$n/$RELEASE-circus-warden-policies/default.yaml" | sed "s/^/[$n] /"
done
(cd deploy/image && "$BIN" config check 2>&1 | sed "s/^/[image] config\/circus-warden.yaml: /")
"$BIN" policy check deploy/image/policies/default.yaml | sed "s/^/[image] /"
step_end

step "checkov (helm: each values file; dockerfile)"
# CKV_K8S_21 ("the default namespace should not be used") is skipped here rather than in the
# chart: every object is in .Release.Namespace, and checkov's helm runner renders into
# `default` because it passes no namespace. Other reviewed findings are skipped in the chart
# and the Dockerfile themselves, each with its reason (see charts/circus-warden/README.md).
for n in "${NAMES[@]}"; do
    va=(); [[ -n ${VALUES[$n]} ]] && va=(--var-file "${VALUES[$n]}")
    BC_SKIP_MAPPING=TRUE "$TOOLS/checkov" -d "$CHART" --framework helm --skip-download --compact --quiet \
        --skip-check CKV_K8S_21 "${va[@]}" > "$OUT/checkov.txt" 2>&1 || { cat "$OUT/checkov.txt"; exit 1; }
    echo "[$n] $(grep -E 'Passed checks' "$OUT/checkov.txt")"
done
BC_SKIP_MAPPING=TRUE "$TOOLS/checkov" -f Dockerfile --framework dockerfile --skip-download --compact --quiet \
    > "$OUT/checkov.txt" 2>&1 || { cat "$OUT/checkov.txt"; exit 1; }
echo "[Dockerfile] $(grep -E 'Passed checks' "$OUT/checkov.txt")"
step_end

step "hadolint Dockerfile"
"$TOOLS/hadolint" Dockerfile
echo "hadolint: clean"
step_end

step "promtool check rules / test rules"
mkdir -p "$OUT/rules"
"$TOOLS/python" tests/deploy/manifests.py rules "$OUT/all.yaml" "$OUT/rules/rules.yml"
cp tests/deploy/rules-test.yml "$OUT/rules/"
promtool check rules "$OUT/rules/rules.yml"
promtool test rules "$OUT/rules/rules-test.yml"
step_end

step "pod boot: default values"
"$VPY" tests/deploy/pod_boot.py --helm "$HELM"
step_end

step "pod boot: values-all.yaml"
"$VPY" tests/deploy/pod_boot.py --helm "$HELM" -f tests/deploy/values-all.yaml
step_end

step "pod boot: isolation.require uid refuses a policy without run_as"
# The chart requires isolation uid; without a run-as user the processes would run as circusd
# (root), and the warden must not start.
printf 'policy:\n  document:\n    run_as: null\n' > "$OUT/no-run-as.yaml"
"$VPY" tests/deploy/pod_boot.py --helm "$HELM" -f "$OUT/no-run-as.yaml" --expect-refusal "isolation.require is uid, but the isolation level is none"
step_end

printf '\n== deploy tests PASSED in %ss\n' "$(( $(date +%s) - T0 ))"
printf '%s\n' "${DURATIONS[@]}"
