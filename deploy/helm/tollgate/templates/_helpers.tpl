{{/* Names, labels and the settings several templates share. */}}

{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate.fullname" -}}
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

{{- define "tollgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The services, in the order they are rendered. */}}
{{- define "tollgate.services" -}}
ingest limits reports publisher
{{- end }}

{{/* Name of one service's objects; called with (dict "root" $ "service" "limits"). */}}
{{- define "tollgate.serviceName" -}}
{{- printf "%s-%s" (include "tollgate.fullname" .root | trunc 52 | trimSuffix "-") .service }}
{{- end }}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tollgate.labels" -}}
helm.sh/chart: {{ include "tollgate.chart" . }}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tollgate
{{- end }}

{{/* Labels of one service's objects; called with (dict "root" $ "service" "limits"). */}}
{{- define "tollgate.componentLabels" -}}
{{ include "tollgate.labels" .root }}
app.kubernetes.io/component: {{ .service }}
{{- end }}

{{- define "tollgate.componentSelectorLabels" -}}
{{ include "tollgate.selectorLabels" .root }}
app.kubernetes.io/component: {{ .service }}
{{- end }}

{{- define "tollgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tollgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tollgate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{/* The Secret holding tokens, the license key and (when the chart owns it) DATABASE_URL. */}}
{{- define "tollgate.secretName" -}}
{{- default (include "tollgate.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "tollgate.kafka.fullname" -}}
{{- default (printf "%s-kafka" .Release.Name) .Values.kafka.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate.postgresql.fullname" -}}
{{- default (printf "%s-postgresql" .Release.Name) .Values.postgresql.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate.kafkaBootstrapServers" -}}
{{- if .Values.kafka.enabled }}
{{- printf "%s:9092" (include "tollgate.kafka.fullname" .) }}
{{- else }}
{{- required "externalKafka.bootstrapServers is required when kafka.enabled is false" .Values.externalKafka.bootstrapServers }}
{{- end }}
{{- end }}

{{/*
Where DATABASE_URL comes from: "bundled" (the PostgreSQL subchart), "external" (a Secret
named by externalDatabase.existingSecret), "existing" (secrets.existingSecret) or "chart"
(externalDatabase.url, stored in the chart's Secret).
*/}}
{{- define "tollgate.databaseSource" -}}
{{- if .Values.postgresql.enabled }}bundled
{{- else if .Values.externalDatabase.existingSecret }}external
{{- else if .Values.secrets.existingSecret }}
{{- if .Values.externalDatabase.url }}
{{- fail "externalDatabase.url is not used when secrets.existingSecret is set: put DATABASE_URL in that Secret, or name a Secret in externalDatabase.existingSecret" }}
{{- end }}existing
{{- else if .Values.externalDatabase.url }}chart
{{- else }}
{{- fail "no database: set externalDatabase.url, externalDatabase.existingSecret or secrets.existingSecret (with DATABASE_URL), or enable postgresql" }}
{{- end }}
{{- end }}

{{/*
The DATABASE_URL environment entries. The bundled database's password stays in that chart's
Secret and is spliced in by the kubelet through a dependent variable. Called with
(dict "root" $ "secretName" NAME), where NAME holds DATABASE_URL when the chart owns it.
*/}}
{{- define "tollgate.databaseEnv" -}}
{{- $root := .root }}
{{- $source := include "tollgate.databaseSource" $root }}
{{- if eq $source "bundled" }}
{{- $pg := $root.Values.postgresql }}
- name: TOLLGATE_DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "tollgate.postgresql.fullname" $root }}
      key: password
- name: DATABASE_URL
  value: {{ printf "postgresql://%s:$(TOLLGATE_DATABASE_PASSWORD)@%s:5432/%s" $pg.auth.username (include "tollgate.postgresql.fullname" $root) $pg.auth.database | quote }}
{{- else if eq $source "external" }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.externalDatabase.existingSecret }}
      key: {{ $root.Values.externalDatabase.existingSecretKey }}
{{- else }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: DATABASE_URL
{{- end }}
{{- end }}

{{/* Container security settings, with one service's overrides merged over the shared ones. */}}
{{- define "tollgate.containerSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.securityContext) (default dict .values.securityContext)) }}
{{- end }}

{{- define "tollgate.podSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.podSecurityContext) (default dict .values.podSecurityContext)) }}
{{- end }}

{{/* Environment variables from a name → value map, in a stable order. */}}
{{- define "tollgate.envMap" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/*
Generated secrets are kept across upgrades by reading the installed Secret back (`lookup`).
Where the chart cannot read the cluster (`helm template`, client-side dry runs, GitOps tools
rendering with them), a generated value would change on every render, so rendering fails and
names the values to set instead. Listing Secrets in the release namespace is what tells: Helm
itself needs that permission to keep its releases there. Called with
(dict "root" $ "values" (list "secrets.adminTokens") "what" "API tokens").
*/}}
{{- define "tollgate.requireCluster" -}}
{{- if not (lookup "v1" "Secret" .root.Release.Namespace "") }}
{{- fail (printf "%s would be generated, but this render cannot read the cluster (helm template, a client-side dry run or a GitOps tool), so they would change on every render: set %s, or use an existing Secret (secrets.existingSecret)" .what (join " and " .values)) }}
{{- end }}
{{- end }}

{{/* Names of the migration hook's own objects (Job, ServiceAccount, Secret). */}}
{{- define "tollgate.migrationName" -}}
{{- printf "%s-migrate" (include "tollgate.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
A pod's topology spread: over nodes and over zones, each at its own strength. Called with
(dict "root" $ "service" "limits" "values" .Values.limits).
*/}}
{{- define "tollgate.topologySpread" -}}
{{- $spread := mergeOverwrite (deepCopy .root.Values.topologySpread) (default dict .values.topologySpread) }}
{{- $ctx := dict "root" .root "service" .service }}
{{- range $level := list (dict "key" "kubernetes.io/hostname" "when" $spread.nodes) (dict "key" "topology.kubernetes.io/zone" "when" $spread.zones) }}
{{- if $level.when }}
- maxSkew: {{ $spread.maxSkew }}
  topologyKey: {{ $level.key }}
  whenUnsatisfiable: {{ $level.when }}
  nodeTaintsPolicy: Honor
  labelSelector:
    matchLabels:
      {{- include "tollgate.componentSelectorLabels" $ctx | nindent 6 }}
{{- end }}
{{- end }}
{{- end }}

{{/* The PriorityClass of a service's pods: its own, else the shared one. */}}
{{- define "tollgate.priorityClassName" -}}
{{- default .root.Values.priorityClassName .values.priorityClassName }}
{{- end }}

{{/*
One egress rule of a NetworkPolicy: TCP to `ports`, towards `to` (any destination when empty),
or towards the bundled chart `name` when `bundled`. Called with
(dict "ports" (list 9092) "to" list "bundled" true "name" "kafka" "root" $).
*/}}
{{- define "tollgate.networkPolicy.egress" -}}
- ports:
    {{- range $port := .ports }}
    - port: {{ $port }}
      protocol: TCP
    {{- end }}
  {{- if .bundled }}
  to:
    - podSelector:
        matchLabels:
          app.kubernetes.io/name: {{ .name }}
          app.kubernetes.io/instance: {{ .root.Release.Name }}
  {{- else if .to }}
  to:
    {{- toYaml .to | nindent 4 }}
  {{- end }}
{{- end }}
