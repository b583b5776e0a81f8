{{/* Names and labels. */}}
{{- define "kiln.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kiln.fullname" -}}
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

{{- define "kiln.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kiln.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kiln.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kiln.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: worker
app.kubernetes.io/part-of: kiln
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kiln.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kiln.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference: repository, then @digest or :tag (default appVersion). */}}
{{- define "kiln.imageRef" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the AMQP URL, and its key. */}}
{{- define "kiln.amqpSecretName" -}}
{{- if .Values.amqp.existingSecret -}}
{{- .Values.amqp.existingSecret -}}
{{- else if .Values.amqp.url -}}
{{- printf "%s-amqp" (include "kiln.fullname" .) -}}
{{- else -}}
{{- fail "kiln: set amqp.url (the chart creates a Secret) or amqp.existingSecret (a Secret you manage with the key amqp.secretKey)" -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the management API URL for KEDA. */}}
{{- define "kiln.kedaSecretName" -}}
{{- $keda := .Values.autoscaling.keda -}}
{{- if $keda.existingSecret -}}
{{- $keda.existingSecret -}}
{{- else if $keda.managementUrl -}}
{{- printf "%s-keda" (include "kiln.fullname" .) -}}
{{- else -}}
{{- fail "kiln: autoscaling.mode=keda needs autoscaling.keda.managementUrl or autoscaling.keda.existingSecret (the RabbitMQ management API URL with credentials)" -}}
{{- end -}}
{{- end -}}

{{/* Fixed paths inside the pod. */}}
{{- define "kiln.pluginsDir" -}}
{{- if eq .Values.plugins.source "builtin" -}}/opt/kiln/plugins{{- else -}}/var/lib/kiln/plugins{{- end -}}
{{- end -}}
{{- define "kiln.amqpUrlFile" -}}/run/secrets/kiln/amqp-url{{- end -}}

{{/* The port of config.http.listen ("0.0.0.0:9090" -> 9090). */}}
{{- define "kiln.httpPort" -}}
{{- $listen := .Values.config.http.listen | default "0.0.0.0:9090" | toString -}}
{{- regexReplaceAll "^.*:" $listen "" | int -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds: the worker's drain bound, which is
amqp.shutdown_timeout_ms plus 5 s (two bounded 2 s broker steps and the
exit; see docs/WORKER.md), rounded up to whole seconds, plus
terminationGraceExtraSeconds.
*/}}
{{- define "kiln.terminationGracePeriodSeconds" -}}
{{- $amqp := .Values.config.amqp | default dict -}}
{{- $ms := $amqp.shutdown_timeout_ms | default 30000 | int64 -}}
{{- $seconds := div (add $ms 999) 1000 -}}
{{- add $seconds 5 (.Values.terminationGraceExtraSeconds | int64) -}}
{{- end -}}

{{/* Where the pod reads its config (the ConfigMap, mounted at /etc/kiln). */}}
{{- define "kiln.configFile" -}}/etc/kiln/kiln.json{{- end -}}

{{/*
The effective config file, as JSON: the values' config with the chart's
paths on top. Kiln picks the format from the extension (.json). Helm keeps
whole numbers whole in JSON (its toToml would write 30000.0, which Kiln's
integer keys reject). amqp.url_file is not in it: KILN__AMQP__URL_FILE in
the pod's environment points at the mounted Secret, so the rendered file
can be checked anywhere with `kiln config check --config-file`.
*/}}
{{- define "kiln.config" -}}
{{- $managed := dict
  "plugins_dir" (include "kiln.pluginsDir" .)
  "sandbox" (dict "cache" (dict "dir" "/var/cache/kiln" "baked_dir" "/opt/kiln/cache"))
-}}
{{- with .Values.plugins.oci }}
{{- $registry := dict "plugins" . "refresh_ms" $.Values.plugins.ociRefreshMs }}
{{- if $.Values.plugins.ociAuthSecret }}
{{- $_ := set $registry "auth_file" (include "kiln.registryAuthFile" $) }}
{{- end }}
{{- $_ := set $managed "registry" $registry }}
{{- end }}
{{- mergeOverwrite (deepCopy (.Values.config | default dict)) $managed | toPrettyJson -}}
{{- end -}}

{{/* Where the plugins.ociAuthSecret Secret's docker config.json is mounted. */}}
{{- define "kiln.registryAuthFile" -}}
/var/run/secrets/kiln/registry/config.json
{{- end -}}

{{/* Keys of .Values.config the chart owns, refused with a message that says why. */}}
{{- define "kiln.validateConfig" -}}
{{- $config := .Values.config | default dict -}}
{{- $amqp := $config.amqp | default dict -}}
{{- $sandbox := $config.sandbox | default dict -}}
{{- if hasKey $amqp "url" -}}
{{- fail "kiln: config.amqp.url would put the broker password in a ConfigMap; use amqp.url (stored in a Secret) or amqp.existingSecret" -}}
{{- end -}}
{{- if hasKey $amqp "url_file" -}}
{{- fail "kiln: config.amqp.url_file is set by the chart (KILN__AMQP__URL_FILE points at the mounted Secret)" -}}
{{- end -}}
{{- if and .Values.plugins.oci (hasKey ($config.registry | default dict) "plugins") -}}
{{- fail "kiln: config.registry.plugins is set by the chart from plugins.oci; set one of them" -}}
{{- end -}}
{{- if hasKey $config "plugins_dir" -}}
{{- fail "kiln: config.plugins_dir is set by the chart from plugins.source" -}}
{{- end -}}
{{- if hasKey $sandbox "cache" -}}
{{- fail "kiln: config.sandbox.cache is set by the chart (writable /var/cache/kiln, baked /opt/kiln/cache); size it with cache.sizeLimit" -}}
{{- end -}}
{{- end -}}

{{/*
Labels of the `helm test` Pod: not the worker's selector labels, so the
Service, the PodDisruptionBudget and the NetworkPolicy's pod selector never
pick it up.
*/}}
{{- define "kiln.testLabels" -}}
app.kubernetes.io/name: {{ printf "%s-test" (include "kiln.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
app.kubernetes.io/part-of: kiln
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
