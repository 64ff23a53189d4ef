{{/*
ambient.namespace is the release namespace, which must be istio-system: the binaries' defaults
name it (ztunnel dials istiod-lite.istio-system.svc and checks that name on its certificate;
istiod-lite's root namespace is istio-system), so another one would install a broken mesh.
*/}}
{{- define "ambient.namespace" -}}
{{- if ne .Release.Namespace "istio-system" -}}
{{- fail (printf "the ambient chart installs into istio-system only (got namespace %q): use -n istio-system" .Release.Namespace) -}}
{{- end -}}
{{- .Release.Namespace -}}
{{- end -}}

{{/* ambient.image renders an image reference from {registry, repository, tag}. */}}
{{- define "ambient.image" -}}
{{- with .registry }}{{ trimSuffix "/" . }}/{{ end }}{{ .repository }}:{{ .tag }}
{{- end -}}

{{/* ambient.container renders a container's image, pull policy and resources from a component's values. */}}
{{- define "ambient.container" -}}
image: {{ include "ambient.image" .image | quote }}
{{- with .image.pullPolicy }}
imagePullPolicy: {{ . }}
{{- end }}
resources:
  {{- toYaml .resources | nindent 2 }}
{{- end -}}
