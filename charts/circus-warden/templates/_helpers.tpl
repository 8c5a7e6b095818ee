{{/*
_helpers.tpl -- named templates of the circus-warden chart: names, labels, the image, the
paths both containers share, the rendered circus.ini and config.yaml, and the token plumbing.
*/}}

{{- define "circus-warden.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "circus-warden.fullname" -}}
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

{{- define "circus-warden.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "circus-warden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "circus-warden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "circus-warden.labels" -}}
helm.sh/chart: {{ include "circus-warden.chart" . }}
{{ include "circus-warden.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: circus-warden
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "circus-warden.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "circus-warden.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "circus-warden.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Paths shared by both containers. The pod boot test rewrites exactly these prefixes. */}}
{{- define "circus-warden.runDir" -}}/run/circus{{- end }}
{{- define "circus-warden.controlEndpoint" -}}ipc:///run/circus/control.sock{{- end }}
{{- define "circus-warden.pubsubEndpoint" -}}ipc:///run/circus/pubsub.sock{{- end }}
{{- /* Process output: circusd writes <dir>/<watcher>/{stdout,stderr}.log, the warden reads them. */}}
{{- define "circus-warden.outputDir" -}}/var/log/circus-warden{{- end }}

{{- define "circus-warden.metricsSeparate" -}}
{{- if ne (int .Values.metrics.port) (int .Values.warden.containerPort) }}true{{- end }}
{{- end }}

{{- define "circus-warden.metricsPortName" -}}
{{- if include "circus-warden.metricsSeparate" . }}metrics{{- else }}http{{- end }}
{{- end }}

{{/*
circus.ini: ipc sockets only (a TCP endpoint is reachable by the managed processes through
loopback, which would bypass the warden), umask 007 so the sockets and output files are open
to circusd's group (the warden's, 10001) and closed to everyone else, the run-as user
included, multicast discovery off (empty multicast_endpoint), no circusd-stats (statsd off
and no stats_endpoint line: naming one turns circusd-stats on).
*/}}
{{- define "circus-warden.circusIni" -}}
# circus.ini -- circusd's configuration in the circus-warden pod (rendered by the chart).
[circus]
endpoint = {{ include "circus-warden.controlEndpoint" . }}
pubsub_endpoint = {{ include "circus-warden.pubsubEndpoint" . }}
umask = 007
multicast_endpoint =
statsd = False
check_delay = {{ .Values.circusd.checkDelay }}
loglevel = {{ .Values.circusd.loglevel }}
logoutput = -
{{- range .Values.circusd.watchers }}

[watcher:{{ .name }}]
cmd = {{ .cmd }}
{{- with .args }}
args = {{ . }}
{{- end }}
numprocesses = {{ default 1 .numprocesses }}
uid = {{ default "circus-run" .user }}
{{- with .workingDir }}
working_dir = {{ . }}
{{- end }}
shell = False
copy_env = False
{{- if .env }}

[env:{{ .name }}]
{{- range $k, $v := .env }}
{{ $k }} = {{ $v }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Host names the warden accepts: the Service's DNS names, loopback, then extras. */}}
{{- define "circus-warden.allowedHosts" -}}
{{- $svc := include "circus-warden.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $hosts := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) "localhost" "127.0.0.1" "::1" }}
{{- range .Values.config.server.allowed_hosts }}
{{- $hosts = append $hosts . }}
{{- end }}
{{- toJson (uniq $hosts) }}
{{- end }}

{{/* config.yaml: values' config + extraConfig, then the chart-owned keys on top (endpoints,
transport, binds, allowed_hosts, policy.path, output.dir). */}}
{{- define "circus-warden.wardenConfig" -}}
{{- if hasKey (default dict .Values.extraConfig.server) "tokens" }}
{{- fail "extraConfig.server.tokens: tokens would land in a ConfigMap; use auth.tokens or auth.existingSecret" }}
{{- end }}
{{- $cfg := mergeOverwrite (deepCopy .Values.config) (deepCopy .Values.extraConfig) }}
{{- $circus := mergeOverwrite (default dict $cfg.circus) (dict "endpoint" (include "circus-warden.controlEndpoint" .) "pubsub_endpoint" (include "circus-warden.pubsubEndpoint" .)) }}
{{- $server := mergeOverwrite (default dict $cfg.server) (dict "transport" "http" "bind" (printf "0.0.0.0:%d" (int .Values.warden.containerPort)) "allowed_hosts" (include "circus-warden.allowedHosts" . | fromJsonArray)) }}
{{- if include "circus-warden.metricsSeparate" . }}
{{- $_ := set $server "metrics_bind" (printf "0.0.0.0:%d" (int .Values.metrics.port)) }}
{{- end }}
{{- $policy := mergeOverwrite (default dict $cfg.policy) (dict "path" (printf "%s/default.yaml" (include "circus-warden.policyDir" .))) }}
{{- $output := mergeOverwrite (default dict $cfg.output) (dict "dir" (include "circus-warden.outputDir" .)) }}
{{- $_ := set $cfg "circus" $circus }}
{{- $_ = set $cfg "server" $server }}
{{- $_ = set $cfg "policy" $policy }}
{{- $_ = set $cfg "output" $output -}}
# config.yaml -- circus-warden's configuration in the pod (rendered by the chart; tokens come
# from the CIRCUS_WARDEN_SERVER__TOKENS environment variable, built from the tokens Secret).
{{ toYaml $cfg }}
{{- end }}

{{- define "circus-warden.policyDir" -}}/etc/circus-warden/policies{{- end }}

{{/* The policy: values' document, with the circus.ini watchers added to watchers.protected. */}}
{{- define "circus-warden.policyDocument" -}}
{{- $doc := deepCopy .Values.policy.document }}
{{- if .Values.circusd.watchers }}
{{- $watchers := default dict $doc.watchers }}
{{- $protected := default list $watchers.protected }}
{{- range .Values.circusd.watchers }}
{{- $protected = append $protected .name }}
{{- end }}
{{- $_ := set $watchers "protected" (uniq $protected) }}
{{- $_ = set $doc "watchers" $watchers }}
{{- end -}}
# default.yaml -- the policy circus-warden enforces (rendered by the chart from policy.document;
# the circus.ini watchers are added to watchers.protected). Deny by default.
{{ toYaml $doc }}
{{- end }}

{{/* Token plumbing: which Secret, which keys. Empty list: no authentication. */}}
{{- define "circus-warden.tokenSecretName" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else }}
{{- printf "%s-tokens" (include "circus-warden.fullname" .) }}
{{- end }}
{{- end }}

{{- define "circus-warden.tokenIdentities" -}}
{{- $ids := list }}
{{- if .Values.auth.existingSecret }}
{{- if not .Values.auth.existingSecretKeys }}
{{- fail "auth.existingSecret needs auth.existingSecretKeys: the identities (keys) to read from it" }}
{{- end }}
{{- $ids = .Values.auth.existingSecretKeys }}
{{- else if .Values.auth.tokens }}
{{- range .Values.auth.tokens }}
{{- $ids = append $ids .identity }}
{{- end }}
{{- else if .Values.auth.generate }}
{{- $ids = list "default" }}
{{- end }}
{{- toJson $ids }}
{{- end }}

{{/* The chart makes the Secret unless an existing one is named and as long as tokens exist. */}}
{{- define "circus-warden.makesSecret" -}}
{{- if and (not .Values.auth.existingSecret) (include "circus-warden.tokenIdentities" . | fromJsonArray) }}true{{- end }}
{{- end }}

{{/* A generated token survives upgrades: reuse the one in the cluster when there is one. */}}
{{- define "circus-warden.generatedToken" -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "circus-warden.tokenSecretName" .) }}
{{- if and $existing $existing.data (hasKey $existing.data "default") }}
{{- index $existing.data "default" | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}

{{/*
The warden reads tokens only from its config (server.tokens) or CIRCUS_WARDEN_SERVER__TOKENS,
a figment value: `[{identity="ci",token="..."}]`. Each token enters the container as its own
secretKeyRef variable and Kubernetes substitutes `$(CW_TOKEN_<i>)` inside the list, so the
Secret holds plain tokens, one key per identity.
*/}}
{{- define "circus-warden.tokenEnv" -}}
{{- $ids := include "circus-warden.tokenIdentities" . | fromJsonArray }}
{{- if $ids }}
{{- $secret := include "circus-warden.tokenSecretName" . }}
{{- $items := list }}
{{- range $i, $id := $ids }}
- name: CW_TOKEN_{{ $i }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $id }}
{{- $items = append $items (printf "{identity=%s,token=\"$(CW_TOKEN_%d)\"}" ($id | quote) $i) }}
{{- end }}
- name: CIRCUS_WARDEN_SERVER__TOKENS
  value: {{ printf "[%s]" (join "," $items) | quote }}
{{- end }}
{{- end }}
