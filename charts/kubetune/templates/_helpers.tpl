{{/* The release's full name, within a DNS label. */}}
{{- define "kubetune.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubetune.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubetune.serviceAccountName" -}}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Namespaces listed for the all-namespaces mode would narrow nothing: refuse them rather than let an admin
believe they do. */}}
{{- define "kubetune.checkWatch" -}}
{{- if and (not .Values.watch.namespaced) .Values.watch.namespaces -}}
{{- fail (printf "values watch.namespaces=%v: set watch.namespaced=true to serve only these namespaces, or empty the list to serve every namespace" .Values.watch.namespaces) -}}
{{- end -}}
{{- end -}}

{{/* The namespaces watched in namespaced mode: the listed ones, else the release's. */}}
{{- define "kubetune.watchNamespaces" -}}
{{- if .Values.watch.namespaces -}}
{{- join "," .Values.watch.namespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- /* The rules on namespaced objects: exactly the verbs the operator uses, no wildcards. */}}
{{- define "kubetune.namespacedRules" }}
  # FinetuneJobs: kopf lists and watches them, and patches its annotations and finalizer onto them.
  - apiGroups: [kubetune.dev]
    resources: [finetunejobs]
    verbs: [get, list, watch, patch]
  # Children carry ownerReferences with blockOwnerDeletion: true; where OwnerReferencesPermissionEnforcement
  # is on (OpenShift) setting it needs update on the owner's finalizers subresource.
  - apiGroups: [kubetune.dev]
    resources: [finetunejobs/finalizers]
    verbs: [update]
  # Their status: phase, conditions, progress (a merge patch of the status subresource; never read through it).
  - apiGroups: [kubetune.dev]
    resources: [finetunejobs/status]
    verbs: [patch]
  # The worker and merge Jobs: created, suspended/resumed (patch), deleted on deadline and TTL.
  - apiGroups: [batch]
    resources: [jobs]
    verbs: [get, create, patch, delete]
  # The training config and the headless rendezvous Service of each job.
  - apiGroups: [""]
    resources: [configmaps, services]
    verbs: [get, create, delete]
  # Worker pods: restarts, exit codes and termination messages.
  - apiGroups: [""]
    resources: [pods]
    verbs: [list]
  # The rank-0 pod's log: progress lines.
  - apiGroups: [""]
    resources: [pods/log]
    verbs: [get]
  # Events on FinetuneJobs, one per transition (kubectl describe ftj); listed to read the Job controller's
  # FailedCreate Events (pods refused by a ResourceQuota, a LimitRange, a missing PriorityClass, a policy).
  - apiGroups: [""]
    resources: [events]
    verbs: [create, list]
  {{- if .Values.networkPolicy.enabled }}
  # One NetworkPolicy per FinetuneJob (networkPolicy.enabled): created with the other children, deleted on TTL.
  - apiGroups: [networking.k8s.io]
    resources: [networkpolicies]
    verbs: [get, create, delete]
  {{- end }}
  {{- if gt (int .Values.replicaCount) 1 }}
  # Peering between replicas (namespaced operators): only one acts at a time.
  - apiGroups: [kopf.dev]
    resources: [kopfpeerings]
    verbs: [list, watch, patch]
  {{- end }}
{{- end }}
