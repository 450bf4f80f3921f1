#!/usr/bin/env bash
# Operator checks with real tools (installed by scripts/setup.d/operator.sh):
#   - the CRD files are the output of `videochat-operator crd`
#   - helm lint --strict, and helm template output through kubernetes-validate --strict
#   - every object `plan` prints for each sample through kubernetes-validate --strict
#   - every sample validates against the CRD's OpenAPI schema, and known-bad
#     resources are refused by it
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() { printf '[operator check] FAIL: %s\n' "$*" >&2; exit 1; }
say() { printf '[operator check] %s\n' "$*" >&2; }

need_tool() { # VAR-NAME DESCRIPTION
  local path="${!1:-}"
  [ -n "$path" ] && [ -x "$path" ] || fail "$2 not found (\$$1='${path}'). Run scripts/test, whose scripts/setup.d/operator.sh installs it."
}
need_tool VIDEOCHAT_HELM "helm 4"
need_tool VIDEOCHAT_KUBERNETES_VALIDATE "kubernetes-validate"
need_tool VIDEOCHAT_PYTHON "python venv with jsonschema"

K8S_VERSION=1.37.0
OPERATOR=${CARGO_TARGET_DIR:-target}/debug/videochat-operator
[ -x "$OPERATOR" ] || fail "$OPERATOR missing; build it with: cargo build -p videochat-operator"
CHART=charts/videochat-operator
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

validate() { # FILE WHAT
  if ! "$VIDEOCHAT_KUBERNETES_VALIDATE" --strict --quiet -k "$K8S_VERSION" "$1" >"$WORK/validate.log" 2>&1; then
    cat "$WORK/validate.log" >&2
    fail "$2 does not validate against the Kubernetes $K8S_VERSION schemas (kubernetes-validate --strict)"
  fi
  if grep -q "^WARN" "$WORK/validate.log"; then
    cat "$WORK/validate.log" >&2
    fail "$2: kubernetes-validate had no schema for some object (see WARN above)"
  fi
  say "ok   $2 ($(grep -c '^kind:' "$1") objects) validates"
}

# CRD drift.
"$OPERATOR" crd >"$WORK/crd.yaml"
for copy in crds/videochatcluster.yaml "$CHART/crds/videochatcluster.yaml"; do
  diff -u "$copy" "$WORK/crd.yaml" >&2 \
    || fail "$copy differs from \`videochat-operator crd\`; regenerate: cargo run -p videochat-operator -- crd > $copy"
done
validate crds/videochatcluster.yaml "the CRD"

# Chart.
"$VIDEOCHAT_HELM" lint --strict "$CHART" >"$WORK/lint.log" 2>&1 || { cat "$WORK/lint.log" >&2; fail "helm lint --strict $CHART"; }
say "ok   helm lint --strict"
"$VIDEOCHAT_HELM" lint --strict "$CHART" --set watchNamespace=videochat >/dev/null 2>&1 || fail "helm lint --strict with watchNamespace"
# The values schema must refuse nonsense.
for bad in logFormat=xml replicaCount=-1 adminPort=80; do
  if "$VIDEOCHAT_HELM" template t "$CHART" --set "$bad" >/dev/null 2>&1; then
    fail "values.schema.json accepted $bad"
  fi
done
"$VIDEOCHAT_HELM" template videochat-operator "$CHART" -n videochat-system --include-crds >"$WORK/chart.yaml"
validate "$WORK/chart.yaml" "helm template (defaults)"
"$VIDEOCHAT_HELM" template videochat-operator "$CHART" -n videochat-system --set watchNamespace=videochat >"$WORK/chart-ns.yaml"
validate "$WORK/chart-ns.yaml" "helm template (watchNamespace)"
grep -q "^kind: Role$" "$WORK/chart-ns.yaml" || fail "watchNamespace should render a Role"
# The ServiceMonitor needs the Prometheus Operator's CRD, which
# kubernetes-validate has no schema for: render it and check its shape.
"$VIDEOCHAT_HELM" template videochat-operator "$CHART" --set metrics.serviceMonitor.enabled=true >"$WORK/chart-sm.yaml" \
  || fail "helm template with metrics.serviceMonitor.enabled=true"
grep -q "^kind: ServiceMonitor$" "$WORK/chart-sm.yaml" || fail "metrics.serviceMonitor.enabled=true renders no ServiceMonitor"

# NOTES: the block a user pastes must run in a shell as printed (an indented
# heredoc marker never closes and leaves the shell waiting). Run it in bash
# with kubectl recording what it is given, then check the resource applied.
"$VIDEOCHAT_HELM" install videochat-operator "$CHART" -n videochat-system --dry-run=client >"$WORK/install.txt" 2>&1 \
  || { cat "$WORK/install.txt" >&2; fail "helm install --dry-run=client"; }
sed -n '/^NOTES:/,$p' "$WORK/install.txt" >"$WORK/notes.txt"
awk '/^kubectl create namespace/{on=1} on{print} on && /^YAML$/{exit}' "$WORK/notes.txt" >"$WORK/paste.sh"
grep -q '^YAML$' "$WORK/paste.sh" || fail "NOTES: no pasteable block from 'kubectl create namespace' to a closing YAML line"
mkdir -p "$WORK/bin"
cat >"$WORK/bin/kubectl" <<'EOF_KUBECTL'
#!/usr/bin/env bash
printf '%s\n' "$*" >>"$NOTES_WORK/kubectl-calls"
if [ "${1:-}" = apply ]; then cat >"$NOTES_WORK/applied.yaml"; fi
EOF_KUBECTL
chmod +x "$WORK/bin/kubectl"
NOTES_WORK="$WORK" PATH="$WORK/bin:$PATH" timeout 10 bash -e "$WORK/paste.sh" </dev/null 2>"$WORK/paste.err" \
  || { cat "$WORK/paste.err" >&2; fail "NOTES: the pasted block did not run in bash"; }
[ -s "$WORK/paste.err" ] && { cat "$WORK/paste.err" >&2; fail "NOTES: bash complained about the pasted block"; }
grep -qx 'create namespace videochat' "$WORK/kubectl-calls" || fail "NOTES: the block does not create the namespace"
grep -qx 'apply -f -' "$WORK/kubectl-calls" || fail "NOTES: the block does not run kubectl apply -f -"
"$VIDEOCHAT_PYTHON" operator/tests/validate_samples.py crds/videochatcluster.yaml --valid "$WORK/applied.yaml" >&2 \
  || fail "NOTES: the VideoChatCluster it applies is not valid against the CRD"
say "ok   helm NOTES paste block runs in bash and applies a valid VideoChatCluster"

# Plan output for every sample.
for sample in config/samples/*.yaml; do
  "$OPERATOR" plan -f "$sample" --output objects >"$WORK/plan.yaml" \
    || fail "videochat-operator plan -f $sample failed"
  validate "$WORK/plan.yaml" "plan of $sample"
done

# Samples against the CRD schema; bad resources refused.
"$VIDEOCHAT_PYTHON" operator/tests/validate_samples.py crds/videochatcluster.yaml \
  --valid config/samples/*.yaml --invalid operator/tests/fixtures/invalid/*.yaml >&2 \
  || fail "CRD schema validation of the samples (see FAIL lines above)"
say "all operator checks passed"
