{{/* Names, labels and images shared by every template. */}}
{{- define "skillserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* At most 52 characters: room for the longest suffix a template adds ("-trainer-jobs", "-job-template"). */}}
{{- define "skillserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
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

{{/* Trainer pods' account: the chart's own when trainer.serviceAccount.create, else the named one (or none). */}}
{{- define "skillserve.trainerServiceAccountName" -}}
{{- if .Values.trainer.serviceAccount.create -}}
{{- default (printf "%s-trainer" (include "skillserve.fullname" .)) .Values.trainer.serviceAccount.name -}}
{{- else -}}
{{- .Values.trainer.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Where a pre-fetched model lives on the models volume: its basename, so API ids stay what they were. */}}
{{- define "skillserve.modelDir" -}}
{{- printf "/models/%s" (base (toString .Values.config.model)) -}}
{{- end -}}

{{- define "skillserve.modelClaim" -}}
{{- default (printf "%s-models" (include "skillserve.fullname" .)) .Values.modelCache.existingClaim -}}
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

{{/* A resource quantity ("16Gi", "500m", "1.5", 2) as a plain number, to compare requests with limits. */}}
{{- define "skillserve.quantity" -}}
{{- $q := toString . -}}
{{- $number := regexFind "^[0-9.]+" $q -}}
{{- $suffix := trimPrefix $number $q -}}
{{- $scale := dict "" 1.0 "m" 0.001 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 -}}
{{- /* Exponent notation ("1e3") is rare in values; it compares as its mantissa. */ -}}
{{- mulf (float64 $number) (default 1.0 (get $scale $suffix)) -}}
{{- end -}}

{{/* What the API server checks in a container's resources, checked at install time with the value's name:
     a request never above its limit, and extended resources (GPUs) requested only with an equal limit. */}}
{{- define "skillserve.checkResources" -}}
{{- $requests := default dict .resources.requests -}}
{{- $limits := default dict .resources.limits -}}
{{- range $resource, $request := $requests -}}
{{- $limit := get $limits $resource -}}
{{- $native := or (has $resource (list "cpu" "memory" "ephemeral-storage")) (hasPrefix "hugepages-" $resource) -}}
{{- if and (not $native) (not (hasKey $limits $resource)) -}}
{{- fail (printf "%s.requests.%s needs an equal %s.limits.%s: Kubernetes does not overcommit extended resources (use the gpus value for nvidia.com/gpu)" $.path $resource $.path $resource) -}}
{{- end -}}
{{- if and (hasKey $limits $resource) (gt (float64 (include "skillserve.quantity" $request)) (float64 (include "skillserve.quantity" $limit))) -}}
{{- fail (printf "%s.requests.%s (%v) is above %s.limits.%s (%v): Kubernetes refuses a request larger than its limit" $.path $resource $request $.path $resource $limit) -}}
{{- end -}}
{{- if and (not $native) (hasKey $limits $resource) (ne (float64 (include "skillserve.quantity" $request)) (float64 (include "skillserve.quantity" $limit))) -}}
{{- fail (printf "%s.requests.%s must equal %s.limits.%s for an extended resource" $.path $resource $.path $resource) -}}
{{- end -}}
{{- end -}}
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
{{- include "skillserve.checkResources" (dict "resources" (fromYaml (include "skillserve.resources" (dict "resources" .Values.resources "gpus" .Values.gpus))) "path" "resources") -}}
{{- include "skillserve.checkResources" (dict "resources" (fromYaml (include "skillserve.resources" (dict "resources" .Values.trainer.resources "gpus" .Values.trainer.gpus))) "path" "trainer.resources") -}}
{{- $tp := int (default 1 .Values.config.tensor_parallel_size) -}}
{{- if and (gt $tp 1) (gt $tp (int .Values.gpus)) -}}
{{- fail (printf "config.tensor_parallel_size=%d needs at least that many GPUs: set gpus to %d" $tp $tp) -}}
{{- end -}}
{{- if and .Values.modelCache.enabled (eq .Values.runner "kubernetes") (not (has "ReadOnlyMany" .Values.modelCache.accessModes)) (not (has "ReadWriteMany" .Values.modelCache.accessModes)) -}}
{{- fail "modelCache with runner=kubernetes: training pods mount the model too, so modelCache.accessModes needs ReadOnlyMany or ReadWriteMany" -}}
{{- end -}}
{{- /* A ReadWriteOnce(Pod) claim attaches to one node: a second replica scheduled elsewhere would hang in
     ContainerCreating. The modes checked are the ones the values give, also for an existingClaim. */ -}}
{{- $replicas := or (gt (int .Values.replicaCount) 1) (and .Values.autoscaling.enabled (gt (int .Values.autoscaling.maxReplicas) 1)) -}}
{{- $many := ternary (printf "autoscaling.maxReplicas=%d" (int .Values.autoscaling.maxReplicas)) (printf "replicaCount=%d" (int .Values.replicaCount)) (and .Values.autoscaling.enabled (gt (int .Values.autoscaling.maxReplicas) 1)) -}}
{{- if and $replicas .Values.modelCache.enabled (not (has "ReadOnlyMany" .Values.modelCache.accessModes)) (not (has "ReadWriteMany" .Values.modelCache.accessModes)) -}}
{{- fail (printf "modelCache with %s: every replica mounts the model claim, and a %s claim attaches to one node only, so modelCache.accessModes needs ReadOnlyMany or ReadWriteMany (or use one replica)" $many (join "/" .Values.modelCache.accessModes)) -}}
{{- end -}}
{{- if and $replicas (eq .Values.cache.type "pvc") (not (has "ReadWriteMany" .Values.cache.accessModes)) -}}
{{- fail (printf "cache.type=pvc with %s: every replica mounts the cache claim, and a %s claim attaches to one node only, so cache.accessModes needs ReadWriteMany (or use cache.type=emptyDir, or one replica)" $many (join "/" .Values.cache.accessModes)) -}}
{{- end -}}
{{- end -}}

{{/* The endpoint picker's pods: never matched by the gateway's selector (component differs). */}}
{{- define "skillserve.eppSelectorLabels" -}}
app.kubernetes.io/name: {{ include "skillserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: endpoint-picker
{{- end -}}

{{- define "skillserve.eppLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "skillserve.eppSelectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
