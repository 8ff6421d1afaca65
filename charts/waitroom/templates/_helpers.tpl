{{/* Names and labels shared by every component. */}}
{{- define "waitroom.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "waitroom.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "waitroom.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "waitroom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: waitroom
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "ticketing") */}}
{{- define "waitroom.selectorLabels" -}}
app.kubernetes.io/name: {{ include "waitroom.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "waitroom.componentLabels" -}}
{{ include "waitroom.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "waitroom.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "waitroom.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "waitroom.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "waitroom.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "waitroom.fullname" .)) -}}
{{- end -}}

{{/* Environment every service shares: the log, the topics, telemetry. */}}
{{- define "waitroom.commonEnv" -}}
- name: WAITROOM_ENV
  value: {{ .Values.environment | quote }}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ required "kafka.bootstrapServers is required" .Values.kafka.bootstrapServers | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- with .Values.kafka.sasl }}
{{- if .mechanism }}
- name: KAFKA_SASL_MECHANISM
  value: {{ .mechanism | quote }}
- name: KAFKA_SASL_USERNAME
  {{- if .username }}
  value: {{ .username | quote }}
  {{- else }}
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.existingSecret is required with a SASL mechanism" .existingSecret }}
      key: {{ .usernameKey }}
  {{- end }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.existingSecret is required with a SASL mechanism" .existingSecret }}
      key: {{ .passwordKey }}
{{- end }}
{{- end }}
{{- if include "waitroom.kafkaCa" . }}
- name: KAFKA_SSL_CAFILE
  value: {{ include "waitroom.kafkaCaFile" . | quote }}
{{- end }}
- name: WAITROOM_TOPIC_PREFIX
  value: {{ .Values.kafka.topicPrefix | quote }}
- name: WAITROOM_ROOM_PARTITIONS
  value: {{ .Values.kafka.roomPartitions | quote }}
- name: WAITROOM_LOG_LEVEL
  value: {{ .Values.logging.level | quote }}
- name: WAITROOM_LOG_FORMAT
  value: json
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .Values.otel.protocol | quote }}
{{- else }}
- name: OTEL_TRACES_EXPORTER
  value: none
- name: OTEL_METRICS_EXPORTER
  value: none
{{- end }}
{{- end -}}

{{/* "true" when a Kafka CA bundle is mounted (kafka.tls.caSecret or kafka.tls.caConfigMap), else empty. */}}
{{- define "waitroom.kafkaCa" -}}
{{- if or .Values.kafka.tls.caSecret .Values.kafka.tls.caConfigMap }}true{{ end -}}
{{- end -}}

{{- define "waitroom.kafkaCaDir" -}}/etc/waitroom/kafka-ca{{- end -}}

{{/* The file KAFKA_SSL_CAFILE names: the bundle's key is projected to ca.crt. */}}
{{- define "waitroom.kafkaCaFile" -}}{{ include "waitroom.kafkaCaDir" . }}/ca.crt{{- end -}}

{{/* The Kafka CA volume (a list item), when one is set. */}}
{{- define "waitroom.kafkaVolumes" -}}
{{- with .Values.kafka.tls -}}
{{- if or .caSecret .caConfigMap -}}
- name: kafka-ca
  {{- if .caSecret }}
  secret:
    secretName: {{ .caSecret }}
  {{- else }}
  configMap:
    name: {{ .caConfigMap }}
  {{- end }}
    items:
      - key: {{ .caKey | quote }}
        path: ca.crt
    defaultMode: 0444
{{- end }}
{{- end }}
{{- end -}}

{{/* Its read-only mount (a list item), when one is set. */}}
{{- define "waitroom.kafkaVolumeMounts" -}}
{{- if include "waitroom.kafkaCa" . -}}
- name: kafka-ca
  mountPath: {{ include "waitroom.kafkaCaDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* The ports (as a list of ints) of the bootstrap servers, e.g. "a:9092,SASL_SSL://b:9096" -> [9092, 9096]. */}}
{{- define "waitroom.bootstrapPorts" -}}
{{- $ports := list -}}
{{- range splitList "," .Values.kafka.bootstrapServers -}}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" (trim .)) -}}
{{- if $port }}{{ $ports = append $ports (int $port) | uniq }}{{ end -}}
{{- end -}}
{{- toJson $ports -}}
{{- end -}}

{{/* The TCP port of otel.endpoint: explicit, or 443 for https and 80 for http. */}}
{{- define "waitroom.otlpPort" -}}
{{- $url := urlParse .Values.otel.endpoint -}}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $url.host) -}}
{{- $port | default (eq $url.scheme "https" | ternary "443" "80") -}}
{{- end -}}

{{/* Checks across values that the schema cannot express; renders nothing. */}}
{{- define "waitroom.validate" -}}
{{- if eq (.Values.image.tag | default .Chart.AppVersion) "latest" -}}
{{- fail "image.tag must name a version, not latest (a :latest image is pulled again on every start, and follows whatever was pushed last)" -}}
{{- end -}}
{{- $k := .Values.kafka -}}
{{- $saslProtocol := hasPrefix "SASL_" $k.securityProtocol -}}
{{- if and $k.sasl.mechanism (not $saslProtocol) -}}
{{- fail (printf "kafka.sasl.mechanism needs kafka.securityProtocol SASL_PLAINTEXT or SASL_SSL, not %s" $k.securityProtocol) -}}
{{- end -}}
{{- if and $saslProtocol (not $k.sasl.mechanism) -}}
{{- fail (printf "kafka.securityProtocol %s needs kafka.sasl.mechanism" $k.securityProtocol) -}}
{{- end -}}
{{- if and $k.tls.caSecret $k.tls.caConfigMap -}}
{{- fail "set one of kafka.tls.caSecret and kafka.tls.caConfigMap, not both" -}}
{{- end -}}
{{- if and (include "waitroom.kafkaCa" .) (not (hasSuffix "SSL" $k.securityProtocol)) -}}
{{- fail (printf "kafka.tls needs kafka.securityProtocol SSL or SASL_SSL, not %s" $k.securityProtocol) -}}
{{- end -}}
{{- if .Values.networkPolicy.enabled -}}
{{- $allowed := list -}}
{{- range $k.egress.ports }}{{ $allowed = append $allowed (int .) }}{{ end -}}
{{- range (include "waitroom.bootstrapPorts" . | fromJsonArray) -}}
{{- if not (has (int .) $allowed) -}}
{{- fail (printf "kafka.egress.ports %v must include port %d of kafka.bootstrapServers (networkPolicy.enabled)" $allowed (int .)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $t := .Values.ticketing -}}
{{- $ports := list (int $t.port) (int $t.admin.port) (int .Values.healthPort) -}}
{{- if ne (len ($ports | uniq)) 3 -}}
{{- fail (printf "ticketing.port, ticketing.admin.port and healthPort must differ (%v)" $ports) -}}
{{- end -}}
{{- if and $t.autoscaling.enabled (gt (int $t.autoscaling.minReplicas) (int $t.autoscaling.maxReplicas)) -}}
{{- fail "ticketing.autoscaling.minReplicas must not exceed maxReplicas" -}}
{{- end -}}
{{- if and $t.autoscaling.enabled (not (dig "requests" "cpu" "" $t.resources)) -}}
{{- fail "ticketing.autoscaling needs ticketing.resources.requests.cpu (its target is a share of it)" -}}
{{- end -}}
{{- end -}}

{{/* Selector of every pod of the release (the workloads and the topics Job). */}}
{{- define "waitroom.releaseSelector" -}}
app.kubernetes.io/name: {{ include "waitroom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* A component's Deployment: (dict "root" $ "component" "reaper" "values" .Values.reaper "module" "waitroom_reaper" "env" (list ...) "ports" ... ).
Every workload gets the health port (WAITROOM_<COMPONENT>_HEALTH_*) with startup, readiness and liveness probes on it. */}}
{{- define "waitroom.deployment" -}}
{{- $root := .root -}}
{{- $v := .values -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "waitroom.fullname" $root }}-{{ .component }}
  labels:
    {{- include "waitroom.componentLabels" . | nindent 4 }}
spec:
  {{- if not (dig "autoscaling" "enabled" false $v) }}
  replicas: {{ $v.replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "waitroom.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "waitroom.componentLabels" . | nindent 8 }}
      annotations:
        checksum/secrets: {{ include (print $root.Template.BasePath "/shared/secrets.yaml") $root | sha256sum }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $root.Values.healthPort | quote }}
        prometheus.io/path: /metrics
    spec:
      serviceAccountName: {{ include "waitroom.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: 30
      containers:
        - name: {{ .component }}
          image: {{ include "waitroom.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["python", "-m", {{ .module | quote }}]
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          env:
            {{- include "waitroom.commonEnv" $root | nindent 12 }}
            {{- $prefix := printf "WAITROOM_%s_" (upper .component) }}
            - name: {{ $prefix }}HEALTH_HOST
              value: "0.0.0.0"
            - name: {{ $prefix }}HEALTH_PORT
              value: {{ $root.Values.healthPort | quote }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- range $name, $value := $v.env }}
            - name: {{ $name }}
              value: {{ $value | quote }}
            {{- end }}
          ports:
            - name: health
              containerPort: {{ $root.Values.healthPort }}
              protocol: TCP
            {{- with .ports }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- /* Every service's runtime answers these on its health port (docs/architecture.md). */}}
          startupProbe:
            httpGet: {path: /readyz, port: health}
            periodSeconds: 2
            failureThreshold: 150
          readinessProbe:
            httpGet: {path: /readyz, port: health}
            periodSeconds: 5
            failureThreshold: 3
          livenessProbe:
            httpGet: {path: /healthz, port: health}
            periodSeconds: 10
            failureThreshold: 6
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- include "waitroom.kafkaVolumeMounts" $root | nindent 12 }}
            {{- with .volumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir: {}
        {{- include "waitroom.kafkaVolumes" $root | nindent 8 }}
        {{- with .volumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{/* A component's PodDisruptionBudget, when enabled. */}}
{{- define "waitroom.pdb" -}}
{{- if .values.pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "waitroom.fullname" .root }}-{{ .component }}
  labels:
    {{- include "waitroom.componentLabels" . | nindent 4 }}
spec:
  minAvailable: {{ .values.pdb.minAvailable }}
  selector:
    matchLabels:
      {{- include "waitroom.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}
