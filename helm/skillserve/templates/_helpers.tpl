{{/* Names, labels and images shared by every template. */}}
{{- define "skillserve.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "skillserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "skillserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "skillserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "skillserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "skillserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "skillserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "skillserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "skillserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-cpu" .Chart.AppVersion) .Values.image.tag) -}}
{{- end -}}

{{- define "skillserve.trainerImage" -}}
{{- $repo := default .Values.image.repository .Values.trainer.image.repository -}}
{{- $tag := default (default (printf "%s-cpu" .Chart.AppVersion) .Values.image.tag) .Values.trainer.image.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* The store URI: the configured one, else a file:// store on the cache volume. */}}
{{- define "skillserve.storeUri" -}}
{{- default "file:///var/lib/skillserve/store" .Values.store.uri -}}
{{- end -}}

{{/* Resources with the GPU count folded into requests and limits. */}}
{{- define "skillserve.resources" -}}
{{- $res := deepCopy (default dict .resources) -}}
{{- if gt (int .gpus) 0 -}}
{{- $limits := default dict (get $res "limits") -}}
{{- $_ := set $limits "nvidia.com/gpu" (int .gpus) -}}
{{- $requests := default dict (get $res "requests") -}}
{{- $_ := set $requests "nvidia.com/gpu" (int .gpus) -}}
{{- $_ := set $res "limits" $limits -}}
{{- $_ := set $res "requests" $requests -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* Install-time checks that a JSON schema cannot express. */}}
{{- define "skillserve.validate" -}}
{{- $file := hasPrefix "file://" (include "skillserve.storeUri" .) -}}
{{- if and $file (eq .Values.runner "kubernetes") -}}
{{- fail "runner=kubernetes needs a store the training Jobs can reach: set store.uri to s3://bucket/prefix" -}}
{{- end -}}
{{- if and $file (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) -}}
{{- fail "more than one replica needs a shared store: set store.uri to s3://bucket/prefix" -}}
{{- end -}}
{{- end -}}
