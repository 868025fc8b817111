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

{{- define "llmserve.redisUrl" -}}
{{- if .Values.redis.enabled -}}
redis://{{ include "llmserve.fullname" . }}-redis:6379/0
{{- else -}}
{{- required "redis.url is required when redis.enabled is false" .Values.redis.url -}}
{{- end -}}
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
- name: LLMSERVE_LOG_FORMAT
  value: {{ .Values.telemetry.logFormat | quote }}
- name: LLMSERVE_LOG_LEVEL
  value: {{ .Values.telemetry.logLevel | quote }}
{{- with .Values.telemetry.otlpEndpoint }}
- name: LLMSERVE_OTLP_ENDPOINT
  value: {{ . | quote }}
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
