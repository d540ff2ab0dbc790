{{/* Labels Helm adds to every object; the objects' own labels are those of manifests/. */}}
{{- define "kybernate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* image REPOSITORY TAG */}}
{{- define "kybernate.image" -}}
{{ .repository }}:{{ .tag }}
{{- end }}

{{/* The scheduler's KubeSchedulerConfiguration: the value or the shipped file. */}}
{{- define "kybernate.schedulerConfig" -}}
{{- if .Values.scheduler.config }}{{ .Values.scheduler.config }}{{ else }}{{ .Files.Get "files/scheduler-config.yaml" }}{{ end }}
{{- end }}

{{/* The scheduler's ControllerConfiguration: the value or the shipped file. */}}
{{- define "kybernate.controllersConfig" -}}
{{- if .Values.scheduler.controllersConfig }}{{ .Values.scheduler.controllersConfig }}{{ else }}{{ .Files.Get "files/scheduler-controllers.yaml" }}{{ end }}
{{- end }}
