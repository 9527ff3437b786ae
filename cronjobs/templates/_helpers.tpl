{{/* Labels of everything the chart makes. */}}
{{- define "cellar.labels" -}}
app.kubernetes.io/part-of: cellar
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* One image value for every Pod: (dict "root" $ "name" "cellar-backup"). */}}
{{- define "cellar.image" -}}
{{- $image := .root.Values.image -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $image.registry) .name ($image.tag | default .root.Chart.AppVersion) -}}
{{- end }}

{{/* A name under backups:, archives: or restores: names a resource and (with a prefix) its CronJob or Job. */}}
{{- define "cellar.checkName" -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" .name) -}}
{{- fail (printf "%s.%s: a name is lowercase letters, digits and '-', and starts and ends with a letter or digit" .section .name) -}}
{{- end -}}
{{- if gt (len .name) 37 -}}
{{- fail (printf "%s.%s: use at most 37 characters (the chart names its CronJob or Job cellar-<job>-<name>, and Kubernetes allows a CronJob 52)" .section .name) -}}
{{- end -}}
{{- end }}

{{/* A duration (30s, 15m, 6h, 2d) or a number of seconds, as seconds: (dict "field" "backups.x.activeDeadline" "value" v). */}}
{{- define "cellar.seconds" -}}
{{- $value := .value -}}
{{- if kindIs "string" $value -}}
{{- if not (regexMatch "^[0-9]+[smhd]$" $value) -}}
{{- fail (printf "%s: %q is not a duration; write a number and one unit of s, m, h or d (6h)" .field $value) -}}
{{- end -}}
{{- $number := regexReplaceAll "[smhd]$" $value "" | atoi -}}
{{- $unit := get (dict "s" 1 "m" 60 "h" 3600 "d" 86400) (regexFind "[smhd]$" $value) -}}
{{- mul $number $unit -}}
{{- else -}}
{{- int $value -}}
{{- end -}}
{{- end }}

{{/* Seconds as the shortest duration the CRDs accept (108000 -> 30h). */}}
{{- define "cellar.duration" -}}
{{- $seconds := int . -}}
{{- if eq (mod $seconds 3600) 0 -}}{{ div $seconds 3600 }}h
{{- else if eq (mod $seconds 60) 0 -}}{{ div $seconds 60 }}m
{{- else -}}{{ $seconds }}s
{{- end -}}
{{- end }}

{{/* The CronJob schedule: @hourly, @daily (the default) and @weekly get their minute, hour and weekday from
a stable hash of <namespace>/<name>, so fifty backups do not start in the same minute; five cron fields are
taken as they are. (dict "field" ... "schedule" ... "key" ...) */}}
{{- define "cellar.schedule" -}}
{{- $schedule := .schedule | default "@daily" | trim -}}
{{- $hash := adler32sum .key | atoi -}}
{{- $minute := mod $hash 60 -}}
{{- $hour := mod (div $hash 60) 24 -}}
{{- $weekday := mod (div $hash 1440) 7 -}}
{{- if eq $schedule "@hourly" -}}{{ $minute }} * * * *
{{- else if eq $schedule "@daily" -}}{{ $minute }} {{ $hour }} * * *
{{- else if eq $schedule "@weekly" -}}{{ $minute }} {{ $hour }} * * {{ $weekday }}
{{- else if eq $schedule "@midnight" -}}0 0 * * *
{{- else if eq $schedule "@monthly" -}}0 0 1 * *
{{- else if or (eq $schedule "@yearly") (eq $schedule "@annually") -}}0 0 1 1 *
{{- else if regexMatch "^[0-9*/,?-]+( +[0-9A-Za-z*/,?-]+){4}$" $schedule -}}{{ $schedule }}
{{- else -}}
{{- fail (printf "%s: %q is not a schedule; use @hourly, @daily, @weekly or five cron fields (30 2 * * *); the time zone is defaults.timeZone or timeZone" .field $schedule) -}}
{{- end -}}
{{- end }}

{{/* The longest gap between two runs of a five-field schedule, in seconds: the period staleAfter follows. */}}
{{- define "cellar.periodSeconds" -}}
{{- $fields := regexSplit " +" (trim . | replace "?" "*") -1 -}}
{{- $minute := index $fields 0 -}}
{{- $hour := index $fields 1 -}}
{{- if ne (index $fields 3) "*" -}}31622400
{{- else if ne (index $fields 2) "*" -}}2678400
{{- else if ne (index $fields 4) "*" -}}604800
{{- else if hasPrefix "*/" $hour -}}{{ mul (trimPrefix "*/" $hour | atoi) 3600 }}
{{- else if ne $hour "*" -}}86400
{{- else if hasPrefix "*/" $minute -}}{{ mul (trimPrefix "*/" $minute | atoi) 60 }}
{{- else if eq $minute "*" -}}60
{{- else -}}3600
{{- end -}}
{{- end }}

{{/* A backup's or archive's spec: its own over defaults.storage and defaults.database, key by key, and
storage.prefix defaulted to <namespace>/<name>. A storage block naming another provider than the defaults'
takes nothing from defaults.storage (one provider's fields are no setting of another).
(dict "root" $ "name" name "entry" entry) */}}
{{- define "cellar.mergedSpec" -}}
{{- $root := .root -}}
{{- $spec := deepCopy (.entry.spec | default dict) -}}
{{- $defaults := $root.Values.defaults.storage | default dict -}}
{{- $own := $spec.storage | default dict -}}
{{- if ne ($own.provider | default $defaults.provider | default "S3") ($defaults.provider | default "S3") -}}
{{- $defaults = dict -}}
{{- end -}}
{{- $storage := deepCopy $defaults -}}
{{- range $key, $value := ($spec.storage | default dict) }}{{ $_ := set $storage $key $value }}{{ end -}}
{{- if not (hasKey $storage "prefix") -}}{{ $_ := set $storage "prefix" (printf "%s/%s" $root.Release.Namespace .name) }}{{ end -}}
{{- $_ := set $spec "storage" $storage -}}
{{- $database := deepCopy ($root.Values.defaults.database | default dict) -}}
{{- range $key, $value := ($spec.database | default dict) }}{{ $_ := set $database $key $value }}{{ end -}}
{{- if $database -}}{{ $_ := set $spec "database" $database }}{{ end -}}
{{- toYaml $spec -}}
{{- end }}

{{/* The spec schema of a kind, from the CRD in crds/ (the one description of what the API server accepts). */}}
{{- define "cellar.specSchema" -}}
{{- $crd := .Files.Get (printf "crds/%s.yaml" .plural) | fromYaml -}}
{{- toYaml (index $crd.spec.versions 0).schema.openAPIV3Schema.properties.spec -}}
{{- end }}

{{/* Fails naming the path where `value` lacks a field its CRD `schema` requires, at any depth: what the API
server would refuse halfway through an install, refused before anything is sent. values.schema.json checks
the rest, but not a backup's or archive's spec.database and spec.storage: those are merged over defaults: first
(cellar.mergedSpec), so they are checked here, after the merge. `fromDefaults`: which defaults.* may give a
missing field of this object (dict "path" "backups.orders.spec" "schema" schema "value" spec "fromDefaults" dict) */}}
{{- define "cellar.required" -}}
{{- $value := .value -}}
{{- $properties := .schema.properties | default dict -}}
{{- $fromDefaults := get . "fromDefaults" | default dict -}}
{{- range $field := .schema.required | default list -}}
{{- if or (not (hasKey $value $field)) (kindIs "invalid" (index $value $field)) -}}
{{- $where := get $fromDefaults $field | default (get $ "filledBy") -}}
{{- fail (printf "%s: %s is required%s" $.path $field (ternary (printf " (here, or in %s)" $where) "" (ne $where ""))) -}}
{{- end -}}
{{- end -}}
{{- range $field, $child := $value -}}
{{- $schema := get $properties $field -}}
{{- if and $schema (kindIs "map" $child) -}}
{{- include "cellar.required" (dict "path" (printf "%s.%s" $.path $field) "schema" $schema "value" $child "filledBy" (get $fromDefaults $field)) -}}
{{- else if and $schema (kindIs "slice" $child) -}}
{{- range $index, $item := $child -}}
{{- if and (kindIs "map" $item) $schema.items -}}
{{- include "cellar.required" (dict "path" (printf "%s.%s[%d]" $.path $field $index) "schema" $schema.items "value" $item) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* What the CRD's rules on spec.storage ask of each provider (provider S3 needs bucket and credentials; the
others their own block), checked after the merge over defaults.storage: without it, an entry with no storage
anywhere would render a storage of nothing but its prefix. (dict "path" "backups.orders.spec.storage" "storage" storage) */}}
{{- define "cellar.storageProvider" -}}
{{- $storage := .storage -}}
{{- $provider := $storage.provider | default "S3" -}}
{{- $block := get (dict "AzureBlob" "azureBlob" "GCS" "gcs") $provider -}}
{{- if and (eq $provider "S3") (not (and (hasKey $storage "bucket") (hasKey $storage "credentials"))) -}}
{{- fail (printf "%s: provider S3 needs bucket and credentials (here, or in defaults.storage)" .path) -}}
{{- else if and $block (not (hasKey $storage $block)) -}}
{{- fail (printf "%s: provider %s needs %s (here, or in defaults.storage)" .path $provider $block) -}}
{{- end -}}
{{- end }}

{{/* Names of the Secrets a storage block reads, one a line: S3's keys and CA, Azure's account key or SAS
token, GCS's service account key. */}}
{{- define "cellar.storageSecrets" -}}
{{- with .endpointCA }}{{ .name }}{{ "\n" }}{{ end -}}
{{- $credentials := .credentials | default dict -}}
{{- range $field := list "accessKeyId" "secretAccessKey" "sessionToken" -}}
{{- with get $credentials $field }}{{ .name }}{{ "\n" }}{{ end -}}
{{- end -}}
{{- $azure := (.azureBlob | default dict).credentials | default dict -}}
{{- range $field := list "accountKey" "sasToken" -}}
{{- with get $azure $field }}{{ .name }}{{ "\n" }}{{ end -}}
{{- end -}}
{{- with ((.gcs | default dict).credentials | default dict).serviceAccountKey }}{{ .name }}{{ "\n" }}{{ end -}}
{{- end }}

{{/* What each job's ServiceAccount reads, computed from the rendered specs: "secrets" and "configMaps",
each a list of names. A key is granted only to the job that uses it: the backup reads the age identity and
the restore test's server only when spec.verify.enabled; the restore alone reads restore targets. */}}
{{- define "cellar.readsOf" -}}
{{- $root := .root -}}
{{- $secrets := list -}}
{{- $configMaps := list -}}
{{- if eq .job "backup" -}}
{{- range $name, $entry := $root.Values.backups -}}
{{- $spec := include "cellar.mergedSpec" (dict "root" $root "name" $name "entry" $entry) | fromYaml -}}
{{- $secrets = concat $secrets (include "cellar.storageSecrets" $spec.storage | splitList "\n") -}}
{{- with ($spec.database | default dict).secretRef }}{{ $secrets = append $secrets .name }}{{ end -}}
{{- $encryption := $spec.encryption | default dict -}}
{{- with $encryption.recipientsFrom -}}
{{- with .secretKeyRef }}{{ $secrets = append $secrets .name }}{{ end -}}
{{- with .configMapKeyRef }}{{ $configMaps = append $configMaps .name }}{{ end -}}
{{- end -}}
{{- $verify := $spec.verify | default dict -}}
{{- if $verify.enabled -}}
{{- with $encryption.identitySecretRef }}{{ $secrets = append $secrets .name }}{{ end -}}
{{- with ($verify.target | default dict).secretRef }}{{ $secrets = append $secrets .name }}{{ end -}}
{{- end -}}
{{- end -}}
{{- else if eq .job "archive" -}}
{{- range $name, $entry := $root.Values.archives -}}
{{- $spec := include "cellar.mergedSpec" (dict "root" $root "name" $name "entry" $entry) | fromYaml -}}
{{- $secrets = concat $secrets (include "cellar.storageSecrets" $spec.storage | splitList "\n") -}}
{{- with ($spec.database | default dict).secretRef }}{{ $secrets = append $secrets .name }}{{ end -}}
{{- with ((($spec.iceberg | default dict).catalog | default dict).database | default dict).secretRef }}{{ $secrets = append $secrets .name }}{{ end -}}
{{- $rest := (($spec.iceberg | default dict).catalog | default dict).rest | default dict -}}
{{- $restAuth := $rest.auth | default dict -}}
{{- with $restAuth.bearerToken }}{{ $secrets = append $secrets .name }}{{ end -}}
{{- with $restAuth.oauth2 -}}
{{- with .clientId }}{{ $secrets = append $secrets .name }}{{ end -}}
{{- with .clientSecret }}{{ $secrets = append $secrets .name }}{{ end -}}
{{- end -}}
{{- with $rest.caBundle -}}
{{- with .secretKeyRef }}{{ $secrets = append $secrets .name }}{{ end -}}
{{- with .configMapKeyRef }}{{ $configMaps = append $configMaps .name }}{{ end -}}
{{- end -}}
{{- $encryption := $spec.encryption | default dict -}}
{{- with $encryption.recipientsFrom -}}
{{- with .secretKeyRef }}{{ $secrets = append $secrets .name }}{{ end -}}
{{- with .configMapKeyRef }}{{ $configMaps = append $configMaps .name }}{{ end -}}
{{- end -}}
{{- with $encryption.identitySecretRef }}{{ $secrets = append $secrets .name }}{{ end -}}
{{- end -}}
{{- else -}}
{{- range $name, $entry := $root.Values.restores -}}
{{- $spec := $entry.spec | default dict -}}
{{- with ($spec.target | default dict).secretRef }}{{ $secrets = append $secrets .name }}{{ end -}}
{{- with ($spec.decryption | default dict).identitySecretRef }}{{ $secrets = append $secrets .name }}{{ end -}}
{{- $backupName := (($spec.backup | default dict).name | default "") -}}
{{- $backup := get $root.Values.backups $backupName -}}
{{- if $backup -}}
{{- $backupSpec := include "cellar.mergedSpec" (dict "root" $root "name" $backupName "entry" $backup) | fromYaml -}}
{{- $secrets = concat $secrets (include "cellar.storageSecrets" $backupSpec.storage | splitList "\n") -}}
{{- else if not $root.Values.extraSecrets.restore -}}
{{- fail (printf "restores.%s: spec.backup.name %q is not under backups:, so the chart does not know the Secrets of its storage; add it there, or list those Secrets in extraSecrets.restore" $name $backupName) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $secrets = concat $secrets (get $root.Values.extraSecrets .job | default list) -}}
{{- toYaml (dict "secrets" ($secrets | compact | uniq | sortAlpha) "configMaps" ($configMaps | compact | uniq | sortAlpha)) -}}
{{- end }}

{{/* The Pod template every job shares: (dict "root" $ "job" "backup" "container" "backup" "image" "cellar-backup"
"serviceAccount" "cellar-backup" "resource" name "args" list "resources" dict "labels" dict "env" list "volumes" list "mounts" list) */}}
{{- define "cellar.pod" -}}
{{- $root := .root -}}
metadata:
  labels:
    {{- include "cellar.labels" $root | nindent 4 }}
    app.kubernetes.io/name: cellar-{{ .container }}
    cellar.dev/resource: {{ .resource }}
    {{- with $root.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ .serviceAccount }}
  restartPolicy: Never
  terminationGracePeriodSeconds: 60
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $root.Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true         # no runAsUser: OpenShift's restricted SCC assigns one in group 0
    seccompProfile: {type: RuntimeDefault}
  containers:
    - name: {{ .container }}
      image: {{ include "cellar.image" (dict "root" $root "name" .image) }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args: {{ toJson .args }}
      env:
        - {name: CELLAR_RESOURCE_NAME, value: {{ .resource | quote }}}
        - name: CELLAR_NAMESPACE
          valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        {{- with .env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: [ALL]}
      resources:
        {{- toYaml .resources | nindent 8 }}
      terminationMessagePolicy: FallbackToLogsOnError
      volumeMounts:
        - {name: tmp, mountPath: /tmp}
        {{- with .mounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir: {sizeLimit: 256Mi}
    {{- with .volumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The Job settings every job shares: retries, deadline, and which exits are final. */}}
{{- define "cellar.jobSpec" -}}
backoffLimit: 2                # exit 1 (transient) is retried twice
activeDeadlineSeconds: {{ .deadline }}
podFailurePolicy:
  rules:
    - action: FailJob          # 2 usage, 3 permanent (invalid spec, 403, missing bucket): no retry
      onExitCodes: {containerName: {{ .container }}, operator: In, values: [2, 3]}
    - action: Ignore           # eviction, preemption, node drain: retried without using up backoffLimit
      onPodConditions: [{type: DisruptionTarget}]
{{- end }}
