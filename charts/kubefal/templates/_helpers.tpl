{{/*
Names, labels and the derived settings every template shares. Derived settings (which
scaler features are on, where the TLS certificate comes from, the gateway's store URL)
are computed here once, so the operator, the gateway and the APIService cannot disagree.
*/}}

{{- define "kubefal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name. Release "kubefal" gives "kubefal", so the default
names match the operator's defaults (kubefal-gateway-queue, kubefal-machines, ...).
Truncated to 40 characters so that the longest suffix ("-gateway-metrics-api") still
fits a DNS-1035 label.
*/}}
{{- define "kubefal.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubefal.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "kubefal.labels" -}}
helm.sh/chart: {{ include "kubefal.chart" . }}
app.kubernetes.io/name: {{ include "kubefal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubefal
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of one component: call with (dict "root" $ "component" "gateway").
The gateway's labels are a contract: the runners' NetworkPolicy admits only pods in the
release namespace carrying all of kubefal.gateway.podLabelList (the operator gets them as
KUBEFAL_GATEWAY_NAMESPACE and KUBEFAL_GATEWAY_POD_LABELS).
*/}}
{{- define "kubefal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubefal.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of one component's objects: the common labels plus the component. */}}
{{- define "kubefal.componentLabels" -}}
{{ include "kubefal.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Image reference of one component: call with (dict "root" $ "image" .Values.x.image). */}}
{{- define "kubefal.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{- define "kubefal.operator.fullname" -}}
{{- printf "%s-operator" (include "kubefal.fullname" .) }}
{{- end }}

{{- define "kubefal.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "kubefal.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubefal.gateway.fullname" -}}
{{- printf "%s-gateway" (include "kubefal.fullname" .) }}
{{- end }}

{{- define "kubefal.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "kubefal.gateway.fullname" .) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The machine catalogue ConfigMap (read by the operator). */}}
{{- define "kubefal.machines.name" -}}
{{- printf "%s-machines" (include "kubefal.fullname" .) }}
{{- end }}

{{/* Services of the gateway: queue API, run API, and the in-cluster admin/scaler one. */}}
{{- define "kubefal.gateway.queueService" -}}
{{- printf "%s-queue" (include "kubefal.gateway.fullname" .) }}
{{- end }}
{{- define "kubefal.gateway.runService" -}}
{{- printf "%s-run" (include "kubefal.gateway.fullname" .) }}
{{- end }}
{{/* The Secret holding the admin port's bearer token (key `token`). */}}
{{- define "kubefal.gateway.adminTokenSecret" -}}
{{- default (printf "%s-admin-token" (include "kubefal.gateway.fullname" .)) .Values.gateway.adminAuth.existingSecret }}
{{- end }}

{{- define "kubefal.gateway.adminService" -}}
{{- printf "%s-admin" (include "kubefal.gateway.fullname" .) }}
{{- end }}
{{- define "kubefal.gateway.metricsApiService" -}}
{{- printf "%s-metrics-api" (include "kubefal.gateway.fullname" .) }}
{{- end }}
{{/* The REST listener's Service: fal's storage, token, KV and files API (FAL_REST_HOST). */}}
{{- define "kubefal.gateway.restService" -}}
{{- printf "%s-rest" (include "kubefal.gateway.fullname" .) }}
{{- end }}

{{/* host[:port] of the REST API as clients reach it (FAL_REST_HOST, KUBEFAL_REST_HOST). */}}
{{- define "kubefal.gateway.restHost" -}}
{{- if .Values.gateway.publicHosts.rest }}
{{- .Values.gateway.publicHosts.rest }}
{{- else }}
{{- include "kubefal.gateway.inClusterRestHost" . }}
{{- end }}
{{- end }}

{{/* host[:port] of the REST Service inside the cluster: FAL_REST_HOST of runner pods. */}}
{{- define "kubefal.gateway.inClusterRestHost" -}}
{{- printf "%s.%s.svc" (include "kubefal.gateway.restService" .) .Release.Namespace }}
{{- if ne (int .Values.gateway.service.port) 443 }}:{{ .Values.gateway.service.port }}{{ end }}
{{- end }}

{{/* "true" when the gateway serves fal's REST API (files, tokens, KV, /data). */}}
{{- define "kubefal.rest.enabled" -}}
{{- if .Values.gateway.rest.enabled }}true{{ end }}
{{- end }}

{{/* The Secret holding the key that signs file URLs and upload/realtime tokens (key `key`). */}}
{{- define "kubefal.gateway.storageSigningSecret" -}}
{{- default (printf "%s-storage-signing" (include "kubefal.gateway.fullname" .)) .Values.gateway.storage.signingKey.existingSecret }}
{{- end }}

{{- define "kubefal.gateway.filesClaimName" -}}
{{- default (printf "%s-files" (include "kubefal.gateway.fullname" .)) .Values.gateway.storage.embedded.persistence.existingClaim }}
{{- end }}

{{/* The gateway's --storage: the embedded store's directory, or s3://bucket[/prefix]?... */}}
{{- define "kubefal.gateway.storageUrl" -}}
{{- $storage := .Values.gateway.storage }}
{{- if eq $storage.type "s3" }}
{{- $query := list }}
{{- with $storage.s3.endpoint }}{{ $query = append $query (printf "endpoint=%s" (urlquery .)) }}{{ end }}
{{- with $storage.s3.region }}{{ $query = append $query (printf "region=%s" (urlquery .)) }}{{ end }}
{{- with $storage.s3.addressing }}{{ $query = append $query (printf "addressing=%s" .) }}{{ end }}
{{- printf "s3://%s" $storage.s3.bucket }}
{{- with trimAll "/" $storage.s3.prefix }}/{{ . }}{{ end }}
{{- with $query }}?{{ join "&" . }}{{ end }}
{{- else }}
{{- $storage.embedded.mountPath }}
{{- end }}
{{- end }}

{{/* "true" when the embedded file store is on a volume only one pod may mount at a time
(the gateway is then replaced with strategy Recreate). */}}
{{- define "kubefal.gateway.filesExclusive" -}}
{{- $embedded := .Values.gateway.storage.embedded }}
{{- if and (include "kubefal.rest.enabled" .) (eq .Values.gateway.storage.type "embedded") $embedded.persistence.enabled (not (has "ReadWriteMany" $embedded.persistence.accessModes)) }}true{{ end }}
{{- end }}

{{/* "true" when runners and the gateway share a /data volume (persistentData.volume set). */}}
{{- define "kubefal.persistentData.enabled" -}}
{{- if .Values.persistentData.volume }}true{{ end }}
{{- end }}

{{/* host[:port] of the run and queue APIs as clients reach them (FAL_RUN_HOST, FAL_QUEUE_RUN_HOST). */}}
{{- define "kubefal.gateway.runHost" -}}
{{- if .Values.gateway.publicHosts.run }}
{{- .Values.gateway.publicHosts.run }}
{{- else }}
{{- printf "%s.%s.svc" (include "kubefal.gateway.runService" .) .Release.Namespace }}
{{- if ne (int .Values.gateway.service.port) 443 }}:{{ .Values.gateway.service.port }}{{ end }}
{{- end }}
{{- end }}
{{- define "kubefal.gateway.queueHost" -}}
{{- if .Values.gateway.publicHosts.queue }}
{{- .Values.gateway.publicHosts.queue }}
{{- else }}
{{- printf "%s.%s.svc" (include "kubefal.gateway.queueService" .) .Release.Namespace }}
{{- if ne (int .Values.gateway.service.port) 443 }}:{{ .Values.gateway.service.port }}{{ end }}
{{- end }}
{{- end }}

{{/* host[:port] of the run and queue Services inside the cluster: FAL_RUN_HOST and
FAL_QUEUE_RUN_HOST of runner pods (public host names may not resolve or route in the cluster). */}}
{{- define "kubefal.gateway.inClusterRunHost" -}}
{{- printf "%s.%s.svc" (include "kubefal.gateway.runService" .) .Release.Namespace }}
{{- if ne (int .Values.gateway.service.port) 443 }}:{{ .Values.gateway.service.port }}{{ end }}
{{- end }}
{{- define "kubefal.gateway.inClusterQueueHost" -}}
{{- printf "%s.%s.svc" (include "kubefal.gateway.queueService" .) .Release.Namespace }}
{{- if ne (int .Values.gateway.service.port) 443 }}:{{ .Values.gateway.service.port }}{{ end }}
{{- end }}

{{- define "kubefal.controlPlane.fullname" -}}
{{- printf "%s-controlplane" (include "kubefal.fullname" .) }}
{{- end }}

{{- define "kubefal.controlPlane.serviceAccountName" -}}
{{- if .Values.controlPlane.serviceAccount.create }}
{{- default (include "kubefal.controlPlane.fullname" .) .Values.controlPlane.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controlPlane.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* host[:port] of the control plane's gRPC API as the fal CLI reaches it (FAL_GRPC_HOST). */}}
{{- define "kubefal.controlPlane.grpcHost" -}}
{{- if .Values.controlPlane.publicHost }}
{{- .Values.controlPlane.publicHost }}
{{- else }}
{{- printf "%s.%s.svc" (include "kubefal.controlPlane.fullname" .) .Release.Namespace }}
{{- if ne (int .Values.controlPlane.service.port) 443 }}:{{ .Values.controlPlane.service.port }}{{ end }}
{{- end }}
{{- end }}

{{/* The labels of the gateway's pods, as k=v,k=v: the runners' NetworkPolicy admits exactly
these pods, and only in the release namespace. */}}
{{- define "kubefal.gateway.podLabelList" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,app.kubernetes.io/component=gateway,app.kubernetes.io/part-of=kubefal" (include "kubefal.name" .) .Release.Name }}
{{- end }}

{{/* "true" when the gateway serves KEDA's external scaler and the operator manages ScaledObjects. */}}
{{- define "kubefal.keda.enabled" -}}
{{- if .Values.keda.enabled }}true{{ end }}
{{- end }}

{{/* "true" when the gateway serves external.metrics.k8s.io and the APIService is registered. */}}
{{- define "kubefal.externalMetrics.enabled" -}}
{{- if .Values.externalMetrics.enabled }}true{{ end }}
{{- end }}

{{/* Where the gateway's TLS certificate comes from: secret | certManager | generated. */}}
{{- define "kubefal.gateway.tls.source" -}}
{{- if .Values.gateway.tls.existingSecret }}secret
{{- else if .Values.gateway.tls.certManager.enabled }}certManager
{{- else }}generated
{{- end }}
{{- end }}

{{- define "kubefal.gateway.tls.secretName" -}}
{{- default (printf "%s-tls" (include "kubefal.gateway.fullname" .)) .Values.gateway.tls.existingSecret }}
{{- end }}

{{/* Every DNS name the gateway's certificate must cover: its Services, then the extra ones. */}}
{{- define "kubefal.gateway.tls.dnsNames" -}}
{{- $names := list }}
{{- $services := list (include "kubefal.gateway.queueService" .) (include "kubefal.gateway.runService" .) (include "kubefal.gateway.metricsApiService" .) }}
{{- if include "kubefal.rest.enabled" . }}{{ $services = append $services (include "kubefal.gateway.restService" .) }}{{ end }}
{{- /* The control plane serves gRPC with the same certificate (mounted from the same Secret). */}}
{{- if .Values.controlPlane.enabled }}{{ $services = append $services (include "kubefal.controlPlane.fullname" .) }}{{ end }}
{{- range $service := $services }}
{{- $names = append $names $service }}
{{- $names = append $names (printf "%s.%s" $service $.Release.Namespace) }}
{{- $names = append $names (printf "%s.%s.svc" $service $.Release.Namespace) }}
{{- $names = append $names (printf "%s.%s.svc.%s" $service $.Release.Namespace $.Values.clusterDomain) }}
{{- end }}
{{- range $host := list .Values.gateway.publicHosts.run .Values.gateway.publicHosts.queue .Values.gateway.publicHosts.rest .Values.controlPlane.publicHost }}
{{- if $host }}
{{- $names = append $names (regexReplaceAll ":[0-9]+$" $host "") }}
{{- end }}
{{- end }}
{{- concat $names .Values.gateway.tls.extraDnsNames | uniq | toJson }}
{{- end }}

{{/* The gateway's queue store URL when it is not read from a Secret. */}}
{{- define "kubefal.gateway.storeUrl" -}}
{{- if eq .Values.gateway.store.type "sqlite" }}
{{- printf "sqlite:///%s/queue.db" (trimSuffix "/" .Values.gateway.store.sqlite.mountPath | trimPrefix "/") }}
{{- else }}
{{- .Values.gateway.store.redis.url }}
{{- end }}
{{- end }}

{{- define "kubefal.gateway.sqliteClaimName" -}}
{{- default (printf "%s-queue" (include "kubefal.gateway.fullname" .)) .Values.gateway.store.sqlite.persistence.existingClaim }}
{{- end }}

{{/*
Combinations values.schema.json cannot express. Each fails rendering with a message that
names the values to change; every template that depends on them includes this check.
*/}}
{{- define "kubefal.validate" -}}
{{- $gateway := .Values.gateway }}
{{- if and (gt (int $gateway.replicas) 1) (eq $gateway.store.type "sqlite") }}
{{- fail (printf "gateway.replicas=%d needs gateway.store.type=redis: the SQLite queue is one file on a ReadWriteOnce volume and allows one gateway replica. Set gateway.store.type=redis and gateway.store.redis.url (or gateway.store.redis.existingSecret), or set gateway.replicas=1." (int $gateway.replicas)) }}
{{- end }}
{{- $ports := list (int $gateway.ports.queue) (int $gateway.ports.run) (int $gateway.ports.admin) }}
{{- if include "kubefal.rest.enabled" . }}{{ $ports = append $ports (int $gateway.ports.rest) }}{{ end }}
{{- if include "kubefal.keda.enabled" . }}{{ $ports = append $ports (int .Values.keda.port) }}{{ end }}
{{- if include "kubefal.externalMetrics.enabled" . }}{{ $ports = append $ports (int .Values.externalMetrics.port) }}{{ end }}
{{- if ne (len $ports) (len (uniq $ports)) }}
{{- fail (printf "The gateway's ports must all differ (gateway.ports.queue, .run, .admin, keda.port, externalMetrics.port): got %v. The queue and run APIs need their own listeners because each has its own Service and host name." $ports) }}
{{- end }}
{{- if and (eq $gateway.store.type "redis") (not $gateway.store.redis.url) (not $gateway.store.redis.existingSecret) }}
{{- fail "gateway.store.type=redis needs gateway.store.redis.url (redis://host:6379/0) or gateway.store.redis.existingSecret (a Secret holding that URL)." }}
{{- end }}
{{- if and $gateway.tls.existingSecret $gateway.tls.certManager.enabled }}
{{- fail "gateway.tls.existingSecret and gateway.tls.certManager.enabled are exclusive: cert-manager writes its own Secret. Set one of them." }}
{{- end }}
{{- if and $gateway.tls.certManager.enabled (not $gateway.tls.certManager.issuerRef.name) }}
{{- fail "gateway.tls.certManager.enabled needs gateway.tls.certManager.issuerRef.name (an Issuer or ClusterIssuer)." }}
{{- end }}
{{- if and (include "kubefal.externalMetrics.enabled" .) (eq (include "kubefal.gateway.tls.source" .) "secret") (not .Values.externalMetrics.caBundle) (not .Values.externalMetrics.insecureSkipTLSVerify) }}
{{- fail "The external metrics APIService (externalMetrics.enabled) needs the CA of gateway.tls.existingSecret: set externalMetrics.caBundle to the base64 PEM CA that signed it." }}
{{- end }}
{{- if include "kubefal.rest.enabled" . }}
{{- $storage := $gateway.storage }}
{{- if and (eq $storage.type "s3") (not $storage.s3.bucket) }}
{{- fail "gateway.storage.type=s3 needs gateway.storage.s3.bucket (and usually .endpoint, .region and .existingSecret with the access keys)." }}
{{- end }}
{{- if and (gt (int $gateway.replicas) 1) (eq $storage.type "embedded") (not (and $storage.embedded.persistence.enabled (has "ReadWriteMany" $storage.embedded.persistence.accessModes))) }}
{{- fail (printf "gateway.replicas=%d needs a file store every replica sees: set gateway.storage.type=s3 (gateway.storage.s3.*), or keep the embedded store on a shared claim (gateway.storage.embedded.persistence.accessModes=[ReadWriteMany]), or turn the REST listener off (gateway.rest.enabled=false)." (int $gateway.replicas)) }}
{{- end }}
{{- end }}
{{- $webhook := .Values.webhook }}
{{- if $webhook.enabled }}
{{- if and $webhook.tls.existingSecret $webhook.tls.certManager.enabled }}
{{- fail "webhook.tls.existingSecret and webhook.tls.certManager.enabled are exclusive: cert-manager writes its own Secret. Set one of them." }}
{{- end }}
{{- if and $webhook.tls.certManager.enabled (not $webhook.tls.certManager.issuerRef.name) }}
{{- fail "webhook.tls.certManager.enabled needs webhook.tls.certManager.issuerRef.name (an Issuer or ClusterIssuer)." }}
{{- end }}
{{- if and $webhook.tls.existingSecret (not $webhook.tls.caBundle) }}
{{- fail "webhook.tls.existingSecret needs webhook.tls.caBundle: the API server verifies the webhook with it. Set it to the base64 PEM CA that signed the Secret's certificate." }}
{{- end }}
{{- if ge (int $webhook.podDisruptionBudget.minAvailable) (int $webhook.replicas) }}
{{- fail (printf "webhook.podDisruptionBudget.minAvailable=%d must be below webhook.replicas=%d, or no node could ever be drained." (int $webhook.podDisruptionBudget.minAvailable) (int $webhook.replicas)) }}
{{- end }}
{{- end }}
{{- if and .Values.externalMetrics.caBundle .Values.externalMetrics.insecureSkipTLSVerify }}
{{- fail "externalMetrics.caBundle and externalMetrics.insecureSkipTLSVerify are exclusive (the API server rejects an APIService with both)." }}
{{- end }}
{{- end }}

{{/*
The generated TLS material (source "generated") as JSON {crt, key, ca}, base64 encoded.
Reuses the Secret of a previous install when its DNS names are unchanged, so an upgrade
does not rotate the CA clients trust; computed once per render and cached, because the
Secret and the APIService's caBundle must carry the same CA.
*/}}
{{- define "kubefal.gateway.tls.generatedMaterial" -}}
{{- if not (hasKey .Values "kubefalGeneratedTlsCache") }}
{{- $secretName := include "kubefal.gateway.tls.secretName" . }}
{{- $dnsNames := include "kubefal.gateway.tls.dnsNames" . | fromJsonArray }}
{{- $ipAddresses := .Values.gateway.tls.extraIpAddresses }}
{{- if .Values.gateway.tls.generated.includeLocalhost }}
{{- $dnsNames = append $dnsNames "localhost" }}
{{- $ipAddresses = append $ipAddresses "127.0.0.1" | uniq }}
{{- end }}
{{- $fingerprint := dict "dnsNames" $dnsNames "ipAddresses" $ipAddresses | toJson | sha256sum | trunc 16 }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName }}
{{- $material := dict }}
{{- if and $existing (eq (dig "metadata" "annotations" "kubefal.io/tls-names-hash" "" $existing) $fingerprint) (hasKey ($existing.data | default dict) "ca.crt") }}
{{- $material = dict "crt" (index $existing.data "tls.crt") "key" (index $existing.data "tls.key") "ca" (index $existing.data "ca.crt") "fingerprint" $fingerprint }}
{{- else }}
{{- $days := int .Values.gateway.tls.generated.validityDays }}
{{- $ca := genCA (printf "%s-ca" (include "kubefal.fullname" .)) $days }}
{{- $cert := genSignedCert (include "kubefal.gateway.queueService" .) $ipAddresses $dnsNames $days $ca }}
{{- $material = dict "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) "ca" ($ca.Cert | b64enc) "fingerprint" $fingerprint }}
{{- end }}
{{- $_ := set .Values "kubefalGeneratedTlsCache" $material }}
{{- end }}
{{- index .Values "kubefalGeneratedTlsCache" | toJson }}
{{- end }}

{{- define "kubefal.webhook.fullname" -}}
{{- printf "%s-webhook" (include "kubefal.fullname" .) }}
{{- end }}

{{- define "kubefal.webhook.serviceAccountName" -}}
{{- if .Values.webhook.serviceAccount.create }}
{{- default (include "kubefal.webhook.fullname" .) .Values.webhook.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.webhook.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The webhook runs the control-plane image (the operator's) unless given its own. */}}
{{- define "kubefal.webhook.image" -}}
{{- $repository := default .Values.operator.image.repository .Values.webhook.image.repository }}
{{- $tag := .Values.webhook.image.tag | default .Values.operator.image.tag | default .Chart.AppVersion }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{/* Where the webhook's certificate comes from: secret | certManager | generated. */}}
{{- define "kubefal.webhook.tls.source" -}}
{{- if .Values.webhook.tls.existingSecret }}secret
{{- else if .Values.webhook.tls.certManager.enabled }}certManager
{{- else }}generated
{{- end }}
{{- end }}

{{- define "kubefal.webhook.tls.secretName" -}}
{{- default (printf "%s-tls" (include "kubefal.webhook.fullname" .)) .Values.webhook.tls.existingSecret }}
{{- end }}

{{/* The names the API server dials: <service>.<namespace>.svc (and the longer forms). */}}
{{- define "kubefal.webhook.tls.dnsNames" -}}
{{- $service := include "kubefal.webhook.fullname" . }}
{{- list $service (printf "%s.%s" $service .Release.Namespace) (printf "%s.%s.svc" $service .Release.Namespace) (printf "%s.%s.svc.%s" $service .Release.Namespace .Values.clusterDomain) | toJson }}
{{- end }}

{{/*
The webhook's generated TLS material (source "generated") as JSON {crt, key, ca}, base64
encoded, with its own CA: the same rules as the gateway's (reused from the previous
install's Secret while its names are unchanged; cached, because the Secret and the
ValidatingWebhookConfiguration's caBundle must carry the same CA).
*/}}
{{- define "kubefal.webhook.tls.generatedMaterial" -}}
{{- if not (hasKey .Values "kubefalGeneratedWebhookTlsCache") }}
{{- $secretName := include "kubefal.webhook.tls.secretName" . }}
{{- $dnsNames := include "kubefal.webhook.tls.dnsNames" . | fromJsonArray }}
{{- $fingerprint := $dnsNames | toJson | sha256sum | trunc 16 }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName }}
{{- $material := dict }}
{{- if and $existing (eq (dig "metadata" "annotations" "kubefal.io/tls-names-hash" "" $existing) $fingerprint) (hasKey ($existing.data | default dict) "ca.crt") }}
{{- $material = dict "crt" (index $existing.data "tls.crt") "key" (index $existing.data "tls.key") "ca" (index $existing.data "ca.crt") "fingerprint" $fingerprint }}
{{- else }}
{{- $days := int .Values.webhook.tls.generatedValidityDays }}
{{- $ca := genCA (printf "%s-webhook-ca" (include "kubefal.fullname" .)) $days }}
{{- $cert := genSignedCert (index $dnsNames 2) nil $dnsNames $days $ca }}
{{- $material = dict "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) "ca" ($ca.Cert | b64enc) "fingerprint" $fingerprint }}
{{- end }}
{{- $_ := set .Values "kubefalGeneratedWebhookTlsCache" $material }}
{{- end }}
{{- index .Values "kubefalGeneratedWebhookTlsCache" | toJson }}
{{- end }}
