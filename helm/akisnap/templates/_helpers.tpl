{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "akisnap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: the release name, plus the chart name unless it holds it. */}}
{{- define "akisnap.fullname" -}}
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

{{- define "akisnap.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "akisnap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "akisnap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "akisnap.labels" -}}
helm.sh/chart: {{ include "akisnap.chart" . }}
{{ include "akisnap.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: snapshotter
app.kubernetes.io/part-of: akidb
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "akisnap.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "akisnap.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "akisnap.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Where the Kafka TLS Secret is mounted. */}}
{{- define "akisnap.kafkaTlsDir" -}}/etc/akisnap/kafka-tls{{- end -}}

{{- define "akisnap.saslEnabled" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol -}}true{{- end -}}
{{- end -}}

{{- define "akisnap.tlsEnabled" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") -}}true{{- end -}}
{{- end -}}

{{/* Replicas never exceed the request topic's partitions: extra group members sit idle. */}}
{{- define "akisnap.maxReplicas" -}}
{{- $partitions := int .Values.kafka.requestTopicPartitions -}}
{{- min (int .max) $partitions -}}
{{- end -}}

{{/* Fails the render with a clear message on values the daemon would reject. */}}
{{- define "akisnap.validate" -}}
{{- $v := .Values -}}
{{- $protocols := list "PLAINTEXT" "SSL" "SASL_PLAINTEXT" "SASL_SSL" -}}
{{- if not (has $v.kafka.securityProtocol $protocols) -}}
{{- fail (printf "kafka.securityProtocol must be one of %s, not %q" (join ", " $protocols) $v.kafka.securityProtocol) -}}
{{- end -}}
{{- if include "akisnap.saslEnabled" . -}}
{{- $mechanisms := list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512" -}}
{{- if not (has $v.kafka.sasl.mechanism $mechanisms) -}}
{{- fail (printf "kafka.sasl.mechanism must be one of %s with securityProtocol %s" (join ", " $mechanisms) $v.kafka.securityProtocol) -}}
{{- end -}}
{{- if not $v.kafka.sasl.existingSecret -}}
{{- fail "kafka.sasl.existingSecret (a Secret holding the SASL password) is required with a SASL_* securityProtocol" -}}
{{- end -}}
{{- end -}}
{{- if not (has $v.s3.addressingStyle (list "path" "virtual" "auto")) -}}
{{- fail (printf "s3.addressingStyle must be path, virtual or auto, not %q" $v.s3.addressingStyle) -}}
{{- end -}}
{{- if not (has $v.s3.sse (list "" "AES256" "aws:kms")) -}}
{{- fail (printf "s3.sse must be empty, AES256 or aws:kms, not %q" $v.s3.sse) -}}
{{- end -}}
{{- if not (has $v.config.logFormat (list "json" "console")) -}}
{{- fail (printf "config.logFormat must be json or console, not %q" $v.config.logFormat) -}}
{{- end -}}
{{- if and $v.autoscaling.hpa.enabled $v.autoscaling.keda.enabled -}}
{{- fail "enable at most one of autoscaling.hpa and autoscaling.keda" -}}
{{- end -}}
{{- if lt (int $v.kafka.requestTopicPartitions) 1 -}}
{{- fail "kafka.requestTopicPartitions must be at least 1" -}}
{{- end -}}
{{- end -}}
