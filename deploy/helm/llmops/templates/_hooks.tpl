{{/* Hook annotations of what must exist before the services of a release: (list $ weight). */}}
{{- define "llmops.hookAnnotations" -}}
{{- $root := index . 0 -}}
{{- $weight := index . 1 -}}
{{- $hook := $root.Values.migrations.hook -}}
{{- if has $hook (list "helm" "both") }}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-weight: {{ $weight | quote }}
helm.sh/hook-delete-policy: before-hook-creation
{{- end }}
{{- if has $hook (list "argocd" "both") }}
argocd.argoproj.io/hook: PreSync
argocd.argoproj.io/sync-wave: {{ $weight | quote }}
argocd.argoproj.io/hook-delete-policy: BeforeHookCreation
{{- end }}
{{- end -}}
