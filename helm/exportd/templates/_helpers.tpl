{{/*
Names and labels.
*/}}
{{- define "exportd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "exportd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "exportd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "exportd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "exportd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "exportd.labels" -}}
helm.sh/chart: {{ include "exportd.chart" . }}
{{ include "exportd.selectorLabels" . }}
app.kubernetes.io/version: {{ include "exportd.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: exportd
{{- end }}

{{- define "exportd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "exportd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "exportd.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion | toString }}
{{- end }}

{{- define "exportd.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "exportd.imageTag" .) }}
{{- end }}

{{/*
The database: PostgreSQL when a URL or an existing Secret is given, else exportd's default
SQLite file in the data dir.
*/}}
{{- define "exportd.postgres" -}}
{{- if or .Values.database.url .Values.database.existingSecret }}true{{ end }}
{{- end }}

{{/*
What goes into the chart-managed Secret: only the values given inline (an existingSecret wins
over an inline value of the same thing). Renders "true" when the Secret has anything.
*/}}
{{- define "exportd.inlineDatabaseUrl" -}}
{{- if and .Values.database.url (not .Values.database.existingSecret) }}true{{ end }}
{{- end }}
{{- define "exportd.inlineHs256" -}}
{{- if and .Values.jwt.hs256.secret (not .Values.jwt.hs256.existingSecret) }}true{{ end }}
{{- end }}
{{- define "exportd.inlinePublicKeys" -}}
{{- if and .Values.jwt.publicKeys.keys (not .Values.jwt.publicKeys.existingSecret) }}true{{ end }}
{{- end }}
{{- define "exportd.inlineJwks" -}}
{{- if and .Values.jwt.jwks.json (not .Values.jwt.jwks.existingSecret) }}true{{ end }}
{{- end }}
{{- define "exportd.inlineSealing" -}}
{{- if and .Values.sealing.keys (not .Values.sealing.existingSecret) }}true{{ end }}
{{- end }}
{{- define "exportd.hasChartSecret" -}}
{{- if or (include "exportd.inlineDatabaseUrl" .) (include "exportd.inlineHs256" .) (include "exportd.inlinePublicKeys" .) (include "exportd.inlineJwks" .) (include "exportd.inlineSealing" .) }}true{{ end }}
{{- end }}

{{- define "exportd.secretName" -}}
{{- include "exportd.fullname" . }}
{{- end }}

{{/* Which JWT verification material is configured. */}}
{{- define "exportd.hasHs256" -}}
{{- if or .Values.jwt.hs256.secret .Values.jwt.hs256.existingSecret }}true{{ end }}
{{- end }}
{{- define "exportd.hasPublicKeys" -}}
{{- if or .Values.jwt.publicKeys.keys .Values.jwt.publicKeys.existingSecret }}true{{ end }}
{{- end }}
{{- define "exportd.hasJwks" -}}
{{- if or .Values.jwt.jwks.json .Values.jwt.jwks.existingSecret }}true{{ end }}
{{- end }}
{{- define "exportd.hasSealing" -}}
{{- if or .Values.sealing.keys .Values.sealing.existingSecret }}true{{ end }}
{{- end }}

{{- define "exportd.publicKeysDir" -}}/etc/exportd/jwt/public-keys{{- end }}
{{- define "exportd.jwksPath" -}}/etc/exportd/jwt/jwks/jwks.json{{- end }}
{{- define "exportd.configPath" -}}/etc/exportd/config/exportd.toml{{- end }}

{{/* The public key file names (<kid>.pem), sorted. */}}
{{- define "exportd.publicKeyFiles" -}}
{{- $files := list }}
{{- if .Values.jwt.publicKeys.existingSecret }}
{{- $files = .Values.jwt.publicKeys.existingSecretKeys }}
{{- else }}
{{- range $kid, $_ := .Values.jwt.publicKeys.keys }}
{{- $files = append $files (printf "%s.pem" $kid) }}
{{- end }}
{{- end }}
{{- toJson (sortAlpha $files) }}
{{- end }}

{{/* Seconds Kubernetes waits after SIGTERM: see values.yaml terminationGracePeriodSeconds. */}}
{{- define "exportd.terminationGracePeriodSeconds" -}}
{{- $grace := int64 .Values.config.shutdownGraceSeconds }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (mul 2 $grace) 10 }}
{{- else }}
{{- int64 .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
Checks of the values; renders nothing, fails with a message naming the value to fix.
*/}}
{{- define "exportd.validate" -}}
{{- $postgres := include "exportd.postgres" . }}
{{- if and (not $postgres) (gt (int64 .Values.replicaCount) 1) }}
{{- fail (printf "replicaCount is %d, but without PostgreSQL exportd uses SQLite, whose database belongs to one process: set replicaCount to 1, or configure PostgreSQL with database.url or database.existingSecret" (int64 .Values.replicaCount)) }}
{{- end }}
{{- if and .Values.database.url (not .Values.database.existingSecret) }}
{{- if not (or (hasPrefix "postgres://" .Values.database.url) (hasPrefix "postgresql://" .Values.database.url)) }}
{{- fail "database.url must be a postgres:// or postgresql:// URL (leave it empty for the single-replica SQLite mode, whose file the chart keeps on the data volume)" }}
{{- end }}
{{- end }}
{{- if and .Values.database.existingSecret (not .Values.database.existingSecretKey) }}
{{- fail "database.existingSecretKey must name the key of database.existingSecret that holds the URL" }}
{{- end }}
{{- if and .Values.jwt.hs256.secret (not .Values.jwt.hs256.existingSecret) (lt (len .Values.jwt.hs256.secret) 32) }}
{{- fail "jwt.hs256.secret must be at least 32 bytes (exportd refuses shorter ones)" }}
{{- end }}
{{- if and .Values.jwt.publicKeys.existingSecret (not .Values.jwt.publicKeys.existingSecretKeys) }}
{{- fail "jwt.publicKeys.existingSecretKeys must list the keys of jwt.publicKeys.existingSecret to mount, each named <kid>.pem" }}
{{- end }}
{{- range $file := .Values.jwt.publicKeys.existingSecretKeys }}
{{- if not (regexMatch "^[-._a-zA-Z0-9]+$" $file) }}
{{- fail (printf "jwt.publicKeys.existingSecretKeys: %q is not a Secret key name" $file) }}
{{- end }}
{{- end }}
{{- range $kid, $_ := .Values.jwt.publicKeys.keys }}
{{- if not (regexMatch "^[-_a-zA-Z0-9]+$" $kid) }}
{{- fail (printf "jwt.publicKeys.keys: key id %q must be letters, digits, - or _ (it becomes the file name <kid>.pem)" $kid) }}
{{- end }}
{{- end }}
{{- $leeway := int64 .Values.jwt.leewaySeconds }}
{{- if or (lt $leeway 0) (gt $leeway 300) }}
{{- fail "jwt.leewaySeconds must be between 0 and 300" }}
{{- end }}
{{- if and .Values.sealing.keys (not .Values.sealing.existingSecret) }}
{{- range $kid, $key := .Values.sealing.keys }}
{{- if not (regexMatch "^[-_a-zA-Z0-9]+$" $kid) }}
{{- fail (printf "sealing.keys: key id %q must be letters, digits, - or _" $kid) }}
{{- end }}
{{- if ne (len (b64dec (toString $key))) 32 }}
{{- fail (printf "sealing.keys.%s must be the base64 of exactly 32 bytes (head -c 32 /dev/urandom | base64)" $kid) }}
{{- end }}
{{- end }}
{{- if and (gt (len .Values.sealing.keys) 1) (not .Values.sealing.activeKeyId) }}
{{- fail "several sealing.keys are configured: set sealing.activeKeyId to the one that seals new secrets" }}
{{- end }}
{{- if and .Values.sealing.activeKeyId (not (hasKey .Values.sealing.keys .Values.sealing.activeKeyId)) }}
{{- fail (printf "sealing.activeKeyId %q is not among sealing.keys" .Values.sealing.activeKeyId) }}
{{- end }}
{{- end }}
{{- if lt (int64 .Values.config.runLeaseSeconds) 2 }}
{{- fail "config.runLeaseSeconds must be at least 2" }}
{{- end }}
{{- if not (has .Values.config.logFormat (list "text" "json")) }}
{{- fail "config.logFormat must be text or json" }}
{{- end }}
{{- if and (not (kindIs "invalid" .Values.config.workers)) (lt (int64 .Values.config.workers) 0) }}
{{- fail "config.workers must be 0 or more (or null for one per CPU)" }}
{{- end }}
{{- if le (int64 (include "exportd.terminationGracePeriodSeconds" .)) (mul 2 (int64 .Values.config.shutdownGraceSeconds)) }}
{{- fail (printf "terminationGracePeriodSeconds must be larger than 2 × config.shutdownGraceSeconds (%d): exportd waits up to the grace for in-flight RPCs, then up to the grace again for running exports" (mul 2 (int64 .Values.config.shutdownGraceSeconds))) }}
{{- end }}
{{- end }}

{{/*
Environment shared by the server and the migration container, so that both use exactly the
same database settings. Secrets come from Secrets, never from the ConfigMap.
*/}}
{{- define "exportd.env" -}}
- name: EXPORTD_CONFIG
  value: {{ include "exportd.configPath" . | quote }}
{{- if include "exportd.postgres" . }}
- name: EXPORTD_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret | default (include "exportd.secretName" .) }}
      key: {{ if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}database-url{{ end }}
{{- end }}
{{- if include "exportd.hasHs256" . }}
- name: EXPORTD_JWT_HS256_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.jwt.hs256.existingSecret | default (include "exportd.secretName" .) }}
      key: {{ if .Values.jwt.hs256.existingSecret }}{{ .Values.jwt.hs256.existingSecretKey }}{{ else }}jwt-hs256-secret{{ end }}
{{- end }}
{{- if include "exportd.hasSealing" . }}
- name: EXPORTD_SEALING_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.sealing.existingSecret | default (include "exportd.secretName" .) }}
      key: {{ if .Values.sealing.existingSecret }}{{ .Values.sealing.existingSecretKey }}{{ else }}sealing-keys{{ end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volume mounts shared by the server and the migration container. */}}
{{- define "exportd.volumeMounts" -}}
- name: config
  mountPath: /etc/exportd/config
  readOnly: true
- name: data
  mountPath: {{ .Values.persistence.mountPath }}
- name: tmp
  mountPath: /tmp
{{- if include "exportd.hasPublicKeys" . }}
- name: jwt-public-keys
  mountPath: {{ include "exportd.publicKeysDir" . }}
  readOnly: true
{{- end }}
{{- if include "exportd.hasJwks" . }}
- name: jwt-jwks
  mountPath: {{ dir (include "exportd.jwksPath" .) }}
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The TOML config file; keys are exportd's setting names (src/config.rs SETTINGS). */}}
{{- define "exportd.configToml" -}}
data_dir = {{ .Values.persistence.mountPath | toJson }}
{{- if .Values.metrics.enabled }}
metrics_listen = {{ printf "0.0.0.0:%d" (int64 .Values.metrics.port) | toJson }}
{{- end }}
log_format = {{ .Values.config.logFormat | toJson }}
log_filter = {{ .Values.config.logFilter | toJson }}
max_message_bytes = {{ int64 .Values.config.maxMessageBytes }}
{{- if not (kindIs "invalid" .Values.config.workers) }}
workers = {{ int64 .Values.config.workers }}
{{- end }}
run_lease_seconds = {{ int64 .Values.config.runLeaseSeconds }}
shutdown_grace_seconds = {{ int64 .Values.config.shutdownGraceSeconds }}
read_cache_entries = {{ int64 .Values.config.readCacheEntries }}
{{- with .Values.config.exportsRoot }}
exports_root = {{ . | toJson }}
{{- end }}
{{- with .Values.config.allowedRoots }}
allowed_roots = {{ . | toJson }}
{{- end }}
{{- with .Values.config.exportFileMode }}
export_file_mode = {{ . | toJson }}
{{- end }}
jwt_leeway_seconds = {{ int64 .Values.jwt.leewaySeconds }}
{{- with .Values.jwt.issuer }}
jwt_issuer = {{ . | toJson }}
{{- end }}
{{- with .Values.jwt.audience }}
jwt_audience = {{ . | toJson }}
{{- end }}
{{- if include "exportd.hasPublicKeys" . }}
{{- $dir := include "exportd.publicKeysDir" . }}
{{- $paths := list }}
{{- range $file := include "exportd.publicKeyFiles" . | fromJsonArray }}
{{- $paths = append $paths (printf "%s/%s" $dir $file) }}
{{- end }}
jwt_public_key_files = {{ toJson $paths }}
{{- end }}
{{- if include "exportd.hasJwks" . }}
jwt_jwks_file = {{ include "exportd.jwksPath" . | toJson }}
{{- end }}
{{- with .Values.sealing.activeKeyId }}
sealing_key_id = {{ . | toJson }}
{{- end }}
{{- end }}
