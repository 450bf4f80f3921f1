{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "videochat-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: the release name, with the chart name unless the release already contains it. */}}
{{- define "videochat-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "videochat-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "videochat-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "videochat-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "videochat-operator.labels" -}}
helm.sh/chart: {{ include "videochat-operator.chart" . }}
{{ include "videochat-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: videochat
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "videochat-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "videochat-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The RBAC rules, shared by the ClusterRole and the namespaced Role. Only
what the operator does: read its resources and write their status, apply and
prune the children it owns, never delete Secrets (generated credentials must
outlive a spec change), publish Events. */}}
{{- define "videochat-operator.rules" -}}
- apiGroups: ["videochat.dev"]
  resources: ["videochatclusters"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["videochat.dev"]
  resources: ["videochatclusters/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Last good pod templates (rollback targets).
- apiGroups: ["apps"]
  resources: ["controllerrevisions"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Pods: health of a rollout, drain marks before a scale-down, replacing a
# drained pod.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch", "delete"]
# Pod CPU for autoscaling, when metrics-server is installed.
- apiGroups: ["metrics.k8s.io"]
  resources: ["pods"]
  verbs: ["get", "list"]
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses", "networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
