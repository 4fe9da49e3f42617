{{/* Names, labels and the small pieces every template shares. */}}

{{- define "llmops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* `<release>-llmops`, or the release name when it already says llmops. */}}
{{- define "llmops.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The name of one component's resources: (list $ "rag"). */}}
{{- define "llmops.component" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "llmops.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llmops.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "llmops.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "llmops.labels" -}}
{{- $root := index . 0 -}}
{{ include "llmops.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: llmops
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The image reference of `images.<key>`: (list $ "llmops"). */}}
{{- define "llmops.image" -}}
{{- $root := index . 0 -}}
{{- $img := index $root.Values.images (index . 1) -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* A service's settings prefix: llm-proxy -> LLM_PROXY_. MLflow takes no prefix. */}}
{{- define "llmops.prefix" -}}
{{- if ne . "mlflow" -}}{{ . | upper | replace "-" "_" }}_{{- end -}}
{{- end -}}

{{/* The URL another workload reaches a peer at: (list $ "retrieval"). */}}
{{- define "llmops.url" -}}
{{- $root := index . 0 -}}
{{- $peer := index . 1 -}}
{{- if and (eq $peer "mlflow") (not $root.Values.services.mlflow.enabled) -}}
{{- required "mlflow.externalUrl is required when services.mlflow.enabled is false" $root.Values.mlflow.externalUrl -}}
{{- else -}}
{{- $svc := index $root.Values.services $peer -}}
{{- if not $svc.enabled -}}
{{- fail (printf "a service calls %s, which is not enabled: enable it or remove it from that service's calls" $peer) -}}
{{- end -}}
{{- printf "http://%s:%v" (include "llmops.component" (list $root $peer)) $svc.port -}}
{{- end -}}
{{- end -}}

{{/* The Secret every credential comes from. */}}
{{- define "llmops.secretName" -}}
{{- required "secrets.existingSecret is required: the chart never creates credentials (see docs/deploy.md)" .Values.secrets.existingSecret -}}
{{- end -}}

{{/* More than one replica may run: PDB and topology spread apply. (list $ $svc) */}}
{{- define "llmops.multiReplica" -}}
{{- $svc := index . 1 -}}
{{- if or (gt (int $svc.replicas) 1) (and $svc.autoscaling.enabled (gt (int $svc.autoscaling.maxReplicas) 1)) (and $svc.keda.enabled (gt (int $svc.keda.maxReplicas) 1)) -}}true{{- end -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: the whole stop sequence plus 10 s. */}}
{{- define "llmops.terminationGrace" -}}
{{- $s := .Values.shutdown -}}
{{- add (int $s.preStopSeconds) (int $s.delaySeconds) (int $s.gracefulSeconds) 10 -}}
{{- end -}}

{{/* The prompt alias rag serves and prompt-sync moves: prompt.alias, else the environment. */}}
{{- define "llmops.promptAlias" -}}
{{- .Values.prompt.alias | default (ternary .Values.environment "production" (has .Values.environment (list "staging" "production"))) -}}
{{- end -}}
