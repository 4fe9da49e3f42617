{{/*
One workload, whatever the service: (list $ "<name>" $svc). Renders its ServiceAccount, its
settings ConfigMap, its Service(s), the Deployment or StatefulSet, and, as its values ask, a
PersistentVolumeClaim, an HPA or a KEDA ScaledObject, and a PodDisruptionBudget.
*/}}

{{/* The settings of a service that are not secret, as environment variables. */}}
{{- define "llmops.workloadEnv" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $svc := index . 2 -}}
{{- $p := include "llmops.prefix" $name -}}
{{- $env := dict -}}
{{- if eq $name "mlflow" -}}
{{- $_ := set $env "MLFLOW_ARTIFACTS_DESTINATION" $root.Values.mlflow.artifactsDestination -}}
{{- $host := include "llmops.component" (list $root "mlflow") -}}
{{- $_ := set $env "MLFLOW_ALLOWED_HOSTS" (printf "%s,%s:%v,%s.%s.svc,%s.%s.svc:%v,localhost:%v" $host $host $svc.port $host $root.Release.Namespace $host $root.Release.Namespace $svc.port $svc.port) -}}
{{- else -}}
{{- $_ := set $env "ENV" $root.Values.environment -}}
{{- $_ := set $env "LLMOPS_SHUTDOWN_DELAY_S" (toString $root.Values.shutdown.delaySeconds) -}}
{{- $_ := set $env "LLMOPS_GRACEFUL_SHUTDOWN_S" (toString $root.Values.shutdown.gracefulSeconds) -}}
{{- end -}}
{{- range $peer, $setting := $svc.calls -}}
{{- if $setting -}}
{{- $_ := set $env (printf "%s%s" $p $setting) (include "llmops.url" (list $root $peer)) -}}
{{- end -}}
{{- end -}}
{{- if eq $name "retrieval" -}}
{{- $q := $root.Values.qdrant -}}
{{- $_ := set $env "RETRIEVAL_QDRANT_URL" (required "qdrant.url is required: the services refuse embedded Qdrant outside ENV=dev" $q.url) -}}
{{- $_ := set $env "RETRIEVAL_SHARD_NUMBER" (toString $q.collection.shardNumber) -}}
{{- $_ := set $env "RETRIEVAL_REPLICATION_FACTOR" (toString $q.collection.replicationFactor) -}}
{{- $_ := set $env "RETRIEVAL_WRITE_CONSISTENCY_FACTOR" (toString $q.collection.writeConsistencyFactor) -}}
{{- end -}}
{{- if eq $name "rag" -}}
{{- $_ := set $env "RAG_PROMPT_NAME" $root.Values.prompt.name -}}
{{- $_ := set $env "RAG_PROMPT_ALIAS" (include "llmops.promptAlias" $root) -}}
{{- end -}}
{{- if eq $name "llm-proxy" -}}
{{- $_ := set $env "LLM_PROXY_CONFIG_PATH" "/etc/llmops/routing/llm-proxy.yaml" -}}
{{- end -}}
{{- range $k, $v := $svc.env -}}
{{- $_ := set $env (printf "%s%s" $p $k) (toString $v) -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* The container's own env: its port (beside containerPort), and `<PREFIX><SETTING>_FILE`
for each setting read from the Secret (paths only; in a ConfigMap, names like these make the
scanners take it for one holding secrets). */}}
{{- define "llmops.podEnv" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $svc := index . 2 -}}
{{- $p := include "llmops.prefix" $name -}}
{{- $env := dict (printf "%sPORT" (ternary "MLFLOW_" $p (eq $name "mlflow"))) (toString $svc.port) -}}
{{- range $setting, $key := $svc.secretEnv -}}
{{- $_ := set $env (printf "%s%s_FILE" $p $setting) (printf "%s/%s" $root.Values.secrets.mountPath $key) -}}
{{- end -}}
{{- if and (eq $name "retrieval") $root.Values.qdrant.apiKeySecretKey -}}
{{- $_ := set $env "RETRIEVAL_QDRANT_API_KEY_FILE" (printf "%s/%s" $root.Values.secrets.mountPath $root.Values.qdrant.apiKeySecretKey) -}}
{{- end -}}
{{- range $k := keys $env | sortAlpha }}
- name: {{ $k }}
  value: {{ index $env $k | quote }}
{{- end }}
{{- if eq $name "mlflow" }}
# MLflow reads no _FILE settings: its backend store URI is the one credential given as an
# environment variable (the scanners' skip of it: deploy/helm/scan-skips.yaml).
- name: MLFLOW_BACKEND_STORE_URI
  valueFrom:
    secretKeyRef:
      name: {{ include "llmops.secretName" $root }}
      key: {{ $root.Values.mlflow.backendStoreSecretKey }}
{{- end }}
{{- end -}}

{{/* The Secret keys a workload mounts (each once). */}}
{{- define "llmops.secretKeys" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $svc := index . 2 -}}
{{- $keys := list -}}
{{- range $setting, $key := $svc.secretEnv -}}{{- $keys = append $keys $key -}}{{- end -}}
{{- range $svc.secretFiles -}}{{- $keys = append $keys . -}}{{- end -}}
{{- if and (eq $name "retrieval") $root.Values.qdrant.apiKeySecretKey -}}
{{- $keys = append $keys $root.Values.qdrant.apiKeySecretKey -}}
{{- end -}}
{{- toJson (sortAlpha (uniq $keys)) -}}
{{- end -}}

{{- define "llmops.probe" -}}
{{- $p := index . 0 -}}
httpGet:
  path: {{ $p.path }}
  port: http
periodSeconds: {{ $p.periodSeconds }}
failureThreshold: {{ $p.failureThreshold }}
timeoutSeconds: {{ default 3 $p.timeoutSeconds }}
{{- end -}}

{{- define "llmops.workload" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $svc := index . 2 -}}
{{- $full := include "llmops.component" (list $root $name) -}}
{{- $env := include "llmops.workloadEnv" (list $root $name $svc) -}}
{{- $keys := include "llmops.secretKeys" (list $root $name $svc) | fromJsonArray -}}
{{- $sts := eq $svc.kind "StatefulSet" -}}
{{- $multi := include "llmops.multiReplica" (list $root $svc) -}}
{{- if and $svc.autoscaling.enabled $svc.keda.enabled -}}
{{- fail (printf "services.%s: autoscaling and keda are both enabled; KEDA makes its own HPA, enable one" $name) -}}
{{- end -}}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "llmops.labels" (list $root $name) | nindent 4 }}
automountServiceAccountToken: false
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $full }}-env
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "llmops.labels" (list $root $name) | nindent 4 }}
data:
  {{- $env | nindent 2 }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "llmops.labels" (list $root $name) | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "llmops.selectorLabels" (list $root $name) | nindent 4 }}
  ports:
    - name: http
      port: {{ $svc.port }}
      targetPort: http
      protocol: TCP
{{- if $sts }}
---
# The StatefulSet's governing Service: stable names for its pods (and their claims).
apiVersion: v1
kind: Service
metadata:
  name: {{ $full }}-headless
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "llmops.labels" (list $root $name) | nindent 4 }}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector:
    {{- include "llmops.selectorLabels" (list $root $name) | nindent 4 }}
  ports:
    - name: http
      port: {{ $svc.port }}
      targetPort: http
      protocol: TCP
{{- end }}
{{- if and (not $sts) $svc.persistence.enabled }}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ $full }}-data
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "llmops.labels" (list $root $name) | nindent 4 }}
  annotations:
    helm.sh/resource-policy: keep
spec:
  accessModes: [ReadWriteOnce]
  {{- with $svc.persistence.storageClass }}
  storageClassName: {{ . }}
  {{- end }}
  resources:
    requests:
      storage: {{ $svc.persistence.size }}
{{- end }}
---
apiVersion: apps/v1
kind: {{ $svc.kind }}
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "llmops.labels" (list $root $name) | nindent 4 }}
spec:
  {{- if not (or $svc.autoscaling.enabled $svc.keda.enabled) }}
  replicas: {{ $svc.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "llmops.selectorLabels" (list $root $name) | nindent 6 }}
  {{- if $sts }}
  serviceName: {{ $full }}-headless
  podManagementPolicy: Parallel
  updateStrategy:
    type: RollingUpdate
  # A claim outlives its pod: what a pod spooled is drained when its ordinal runs again.
  persistentVolumeClaimRetentionPolicy:
    whenDeleted: Retain
    whenScaled: Retain
  {{- else if $svc.persistence.enabled }}
  strategy:
    type: Recreate
  {{- else }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  {{- end }}
  template:
    metadata:
      labels:
        {{- include "llmops.labels" (list $root $name) | nindent 8 }}
      annotations:
        # Settings are read at start: a change rolls the pods. The routing file is not here:
        # the proxy reloads it without a restart.
        checksum/env: {{ $env | sha256sum }}
        {{- with $svc.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ $full }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ include "llmops.terminationGrace" $root }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      {{- with $svc.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if and $multi $svc.topologySpread.enabled }}
      topologySpreadConstraints:
        {{- range list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
        - maxSkew: 1
          topologyKey: {{ . }}
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "llmops.selectorLabels" (list $root $name) | nindent 14 }}
        {{- end }}
      {{- end }}
      containers:
        - name: {{ $name }}
          image: {{ include "llmops.image" (list $root $svc.image) }}
          imagePullPolicy: {{ (index $root.Values.images $svc.image).pullPolicy }}
          command:
            {{- toYaml $svc.command | nindent 12 }}
          envFrom:
            - configMapRef:
                name: {{ $full }}-env
          env:
            {{- include "llmops.podEnv" (list $root $name $svc) | trim | nindent 12 }}
          ports:
            - name: http
              containerPort: {{ $svc.port }}
              protocol: TCP
          startupProbe:
            {{- include "llmops.probe" (list $svc.probes.startup) | nindent 12 }}
          readinessProbe:
            {{- include "llmops.probe" (list $svc.probes.readiness) | nindent 12 }}
          livenessProbe:
            {{- include "llmops.probe" (list $svc.probes.liveness) | nindent 12 }}
          lifecycle:
            preStop:
              sleep:
                seconds: {{ $root.Values.shutdown.preStopSeconds }}
          resources:
            {{- toYaml $svc.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: data
              mountPath: /data
            {{- if $keys }}
            - name: secrets
              mountPath: {{ $root.Values.secrets.mountPath }}
              readOnly: true
            {{- end }}
            {{- if eq $name "llm-proxy" }}
            - name: routing
              mountPath: /etc/llmops/routing
              readOnly: true
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $root.Values.tmpSizeLimit }}
        {{- if not $sts }}
        - name: data
          {{- if $svc.persistence.enabled }}
          persistentVolumeClaim:
            claimName: {{ $full }}-data
          {{- else }}
          emptyDir:
            sizeLimit: {{ $svc.persistence.size }}
          {{- end }}
        {{- end }}
        {{- if $keys }}
        - name: secrets
          projected:
            defaultMode: 288  # 0440: the pod's group (fsGroup) reads, nobody writes
            sources:
              - secret:
                  name: {{ include "llmops.secretName" $root }}
                  items:
                    {{- range $keys }}
                    - key: {{ . }}
                      path: {{ . }}
                    {{- end }}
        {{- end }}
        {{- if eq $name "llm-proxy" }}
        - name: routing
          configMap:
            name: {{ $full }}-routing
        {{- end }}
  {{- if $sts }}
  volumeClaimTemplates:
    - metadata:
        name: data
        labels:
          {{- include "llmops.selectorLabels" (list $root $name) | nindent 10 }}
      spec:
        accessModes: [ReadWriteOnce]
        {{- with $svc.persistence.storageClass }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests:
            storage: {{ $svc.persistence.size }}
  {{- end }}
{{- if $svc.autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "llmops.labels" (list $root $name) | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: {{ $svc.kind }}
    name: {{ $full }}
  minReplicas: {{ $svc.autoscaling.minReplicas }}
  maxReplicas: {{ $svc.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $svc.autoscaling.targetCPUUtilizationPercentage }}
    {{- with $svc.autoscaling.podsMetric }}
    {{- if .name }}
    {{- if not $root.Values.prometheusAdapter.enabled }}
    {{- fail (printf "services.%s.autoscaling.podsMetric needs prometheusAdapter.enabled: the chart renders the adapter rule that serves it" $name) }}
    {{- end }}
    - type: Pods
      pods:
        metric:
          name: {{ .name }}
        target:
          type: AverageValue
          averageValue: {{ .averageValue | quote }}
    {{- end }}
    {{- end }}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 300
{{- end }}
{{- if $svc.keda.enabled }}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "llmops.labels" (list $root $name) | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: {{ $svc.kind }}
    name: {{ $full }}
  minReplicaCount: {{ $svc.keda.minReplicas }}
  maxReplicaCount: {{ $svc.keda.maxReplicas }}
  triggers:
    - type: prometheus
      metadata:
        serverAddress: {{ $root.Values.keda.serverAddress }}
        query: {{ $svc.keda.query | replace "{{ .service }}" $full | replace "{{ .namespace }}" $root.Release.Namespace | quote }}
        threshold: {{ $svc.keda.threshold | quote }}
{{- end }}
{{- if and $multi $svc.pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "llmops.labels" (list $root $name) | nindent 4 }}
spec:
  maxUnavailable: {{ $svc.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "llmops.selectorLabels" (list $root $name) | nindent 6 }}
{{- end }}
{{- end -}}
