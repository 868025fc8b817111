{{/* Names and labels shared by the templates. */}}
{{- define "llmserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "llmserve.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "llmserve.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "llmserve.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The gateway's LLMSERVE_REDIS: the in-release Redis with its password (expanded by
Kubernetes from REDIS_PASSWORD, defined just before), an external URL from a Secret, or a
plain external URL. */}}
{{- define "llmserve.redisEnv" -}}
{{- if .Values.redis.enabled }}
- name: REDIS_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "llmserve.redisSecret" . }}, key: redis-password}}
- name: LLMSERVE_REDIS
  value: "redis://:$(REDIS_PASSWORD)@{{ include "llmserve.fullname" . }}-redis:6379/0"
{{- else if .Values.redis.urlSecret }}
- name: LLMSERVE_REDIS
  valueFrom: {secretKeyRef: {name: {{ .Values.redis.urlSecret }}, key: redis-url}}
{{- else }}
- name: LLMSERVE_REDIS
  value: {{ required "redis.url (or redis.urlSecret) is required when redis.enabled is false" .Values.redis.url | quote }}
{{- end }}
{{- end -}}

{{- define "llmserve.redisSecret" -}}
{{- .Values.redis.existingSecret | default (printf "%s-redis" (include "llmserve.fullname" .)) -}}
{{- end -}}

{{- define "llmserve.storeUri" -}}
{{- if eq .Values.store.type "s3" -}}
{{ .Values.store.s3.uri }}
{{- else if eq .Values.store.type "local" -}}
/var/lib/llmserve/store
{{- else -}}
{{- fail (printf "store.type must be local or s3, got %q" .Values.store.type) -}}
{{- end -}}
{{- end -}}

{{/* Environment every daemon shares: listener, telemetry, store access. */}}
{{- define "llmserve.commonEnv" -}}
- name: LLMSERVE_HOST
  value: "0.0.0.0"
- name: HOME  # the root filesystem is read-only: caches (torch, triton) go to the /tmp volume
  value: /tmp
- name: LLMSERVE_LOG_FORMAT
  value: {{ .Values.telemetry.logFormat | quote }}
- name: LLMSERVE_LOG_LEVEL
  value: {{ .Values.telemetry.logLevel | quote }}
{{- with .Values.telemetry.otlpEndpoint }}
- name: LLMSERVE_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- range $name, $value := .Values.telemetry.otelEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{- define "llmserve.storeEnv" -}}
- name: LLMSERVE_STORE
  value: {{ include "llmserve.storeUri" . | quote }}
{{- if eq .Values.store.type "s3" }}
{{- with .Values.store.s3.endpointUrl }}
- name: AWS_ENDPOINT_URL_S3
  value: {{ . | quote }}
{{- end }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.store.s3.region | quote }}
{{- with .Values.store.s3.credentialsSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: {{ . }}, key: AWS_ACCESS_KEY_ID}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ . }}, key: AWS_SECRET_ACCESS_KEY}}
{{- end }}
{{- end }}
{{- end -}}

{{- define "llmserve.storeVolume" -}}
{{- if eq .Values.store.type "local" }}
- name: store
  persistentVolumeClaim:
    claimName: {{ .Values.store.local.existingClaim | default (printf "%s-store" (include "llmserve.fullname" .)) }}
{{- end }}
{{- end -}}

{{- define "llmserve.storeMount" -}}
{{- if eq .Values.store.type "local" }}
- name: store
  mountPath: /var/lib/llmserve/store
{{- end }}
{{- end -}}

{{/* gRPC probes on the daemon's port (grpc.health.v1). */}}
{{- define "llmserve.probes" -}}
readinessProbe:
  grpc: {port: {{ .port }}}
  periodSeconds: 5
livenessProbe:
  grpc: {port: {{ .port }}}
  periodSeconds: 20
  failureThreshold: 3
startupProbe:
  grpc: {port: {{ .port }}}
  periodSeconds: 5
  failureThreshold: {{ .startupFailures | default 60 }}
{{- end -}}


{{- define "llmserve.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "llmserve.fullname" .) -}}
{{- end -}}

{{/* Pod metadata: selector labels, the release's and the component's podLabels and
podAnnotations. Call with (dict "root" $ "component" NAME "values" COMPONENT_VALUES). */}}
{{- define "llmserve.podMetadata" -}}
labels:
  {{- include "llmserve.selector" . | nindent 2 }}
  {{- with (merge (dict) (.values.podLabels | default dict) .root.Values.podLabels) }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with (merge (dict) (.values.podAnnotations | default dict) .root.Values.podAnnotations) }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod spec fields every component shares: identity, security, scheduling, grace period
(preStop delay + the daemon's grace period + 10 s). Same arguments as llmserve.podMetadata. */}}
{{- define "llmserve.podSpec" -}}
{{- $root := .root -}}
serviceAccountName: {{ include "llmserve.serviceAccountName" $root }}
automountServiceAccountToken: {{ $root.Values.serviceAccount.automountToken }}
securityContext: {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ add $root.Values.preStopDelaySeconds .values.gracePeriodSeconds 10 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Container fields every daemon shares: image, security, the preStop delay and the daemon's
grace period. Same arguments as llmserve.podMetadata. */}}
{{- define "llmserve.container" -}}
{{- $tag := .values.imageTag | default (.root.Values.image.tag | default .root.Chart.AppVersion) }}
image: {{ .root.Values.image.repository }}:{{ $tag }}
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
args: [{{ .component }}]
securityContext: {{- toYaml .root.Values.containerSecurityContext | nindent 2 }}
resources: {{- toYaml .values.resources | nindent 2 }}
lifecycle:
  preStop:
    exec: {command: [sleep, {{ .root.Values.preStopDelaySeconds | quote }}]}
ports:
  - {name: grpc, containerPort: {{ .values.port }}}
  - {name: metrics, containerPort: {{ .values.metricsPort }}}
{{- end -}}

{{/* Environment a daemon's own settings: listener, metrics, grace period. */}}
{{- define "llmserve.serverEnv" -}}
- {name: LLMSERVE_PORT, value: {{ .port | quote }}}
- {name: LLMSERVE_METRICS_PORT, value: {{ .metricsPort | quote }}}
- {name: LLMSERVE_GRACE_PERIOD_S, value: {{ .gracePeriodSeconds | quote }}}
{{- end -}}
