{{/* Names and labels shared by the chart's objects. */}}

{{- define "grpo-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "grpo-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "grpo-operator.serviceAccountName" -}}
{{- default (include "grpo-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "grpo-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "grpo-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "grpo-operator.labels" -}}
{{ include "grpo-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/*
The least the operator needs, as RBAC rules (used by the ClusterRole, or by a
Role per watched namespace). Each verb is one call the operator makes; see
operator/reconcile.py (Cluster) and operator/handlers.py.
*/}}
{{- define "grpo-operator.rules" -}}
# GRPOJobs: watched by Kopf; patched for Kopf's bookkeeping annotations;
# deleted when ttlSecondsAfterFinished has passed.
- apiGroups: ["grpo.dev"]
  resources: ["grpojobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["grpo.dev"]
  resources: ["grpojobs/status"]
  verbs: ["get", "patch"]
# Children carry ownerReferences with blockOwnerDeletion, which the
# OwnerReferencesPermissionEnforcement admission plugin allows only to
# whoever may update the owner's finalizers.
- apiGroups: ["grpo.dev"]
  resources: ["grpojobs/finalizers"]
  verbs: ["update"]
# GRPOInferencePools: watched, their status written; their children are owned by them
# (finalizers: as for jobs). Never created, changed or deleted by the operator.
- apiGroups: ["grpo.dev"]
  resources: ["grpoinferencepools"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["grpo.dev"]
  resources: ["grpoinferencepools/status"]
  verbs: ["get", "patch"]
- apiGroups: ["grpo.dev"]
  resources: ["grpoinferencepools/finalizers"]
  verbs: ["update"]
# The job's pods: watched (pod events trigger reconciles), created per attempt,
# deleted on suspend/restart/finish.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
# The job's own volume (patched only to drop the job's owner reference when
# storage.retainOnDelete keeps it); user claims (model, data, existingClaim) are only checked.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# The job's vLLM key, generated per job; never read back (its name carries the job's uid).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
{{- if .Values.networkPolicy.enabled }}
# A job's NetworkPolicies: looked for (get), then created; never changed or listed.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create"]
{{- end }}
{{- if and .Values.rbac.checkSecrets (not .Values.rbac.secretNamespaces) }}
{{ include "grpo-operator.secretRule" . }}
{{- end }}
{{- end -}}

{{/* Reading Secrets: everywhere the operator watches, or (rbac.secretNamespaces) in a Role of their own. */}}
{{- define "grpo-operator.secretRule" -}}
# Only to tell users a referenced Secret or key is missing; never listed or watched.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end -}}

{{/* The trainer image of every job that names none: the chart's appVersion by default. */}}
{{- define "grpo-operator.trainerImage" -}}
{{- .Values.jobDefaults.trainerImage | default (printf "ghcr.io/grpo-operator/grpo-trainer:%s" .Chart.AppVersion) -}}
{{- end -}}

{{/* The namespaces a namespaced monitor looks in: the watched ones, or any. */}}
{{- define "grpo-operator.jobNamespaceSelector" -}}
{{- if .Values.watchNamespaces }}
matchNames:
  {{- toYaml .Values.watchNamespaces | nindent 2 }}
{{- else }}
any: true
{{- end }}
{{- end -}}
