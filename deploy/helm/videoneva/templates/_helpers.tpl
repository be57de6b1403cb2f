{{- define "videoneva.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "videoneva.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "videoneva.labels" -}}
app.kubernetes.io/name: {{ include "videoneva.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "videoneva.selectorLabels" -}}
app.kubernetes.io/name: {{ include "videoneva.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* A volume from an existing claim or a host path; fails naming the values when neither is set. */}}
{{- define "videoneva.volume" -}}
{{- $v := index . 0 -}}{{- $what := index . 1 -}}
{{- if $v.existingClaim }}
persistentVolumeClaim:
  claimName: {{ $v.existingClaim }}
  readOnly: {{ $v.readOnly | default false }}
{{- else if $v.hostPath }}
hostPath:
  path: {{ $v.hostPath }}
  type: Directory
{{- else }}
{{- fail (printf "%s: set %s.existingClaim (a PersistentVolumeClaim) or %s.hostPath" $what $what $what) }}
{{- end }}
{{- end -}}
