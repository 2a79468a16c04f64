{{- define "modserve.fullname" -}}
{{- printf "%s" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "modserve.labels" -}}
app.kubernetes.io/name: modserve
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Custom Ray resource only the head advertises; ingress replicas (and gRPC) need it. */}}
{{- define "modserve.ingressResource" -}}
modserve_ingress
{{- end -}}

{{- define "modserve.selector" -}}
app.kubernetes.io/name: modserve
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "modserve.modelRepo" -}}
{{- if .Values.model.volume.enabled -}}{{ .Values.model.volume.mountPath }}{{- else -}}{{ .Values.model.repoPath }}{{- end -}}
{{- end -}}

{{/* The Serve config, identical in shape to deploy/serve_config.yaml. */}}
{{- define "modserve.serveConfig" -}}
proxy_location: EveryNode
http_options:
  host: 0.0.0.0
  port: {{ .Values.serve.httpPort }}
applications:
  - name: modserve
    route_prefix: /
    import_path: serving.deployments:build_app
    args:
      model_repo: {{ include "modserve.modelRepo" . | quote }}
      model: {{ .Values.model.name | quote }}
      extra_models: {{ join "," .Values.model.extraModels | quote }}
      max_batch_tokens: {{ .Values.serve.maxBatchTokens }}
      max_batch_wait_ms: {{ .Values.serve.maxBatchWaitMs }}
      max_queue_tokens: {{ .Values.serve.maxQueueTokens }}
      request_timeout_s: {{ .Values.serve.requestTimeoutS }}
      dtype: {{ .Values.serve.dtype | quote }}
      backend: {{ .Values.serve.backend | quote }}
      grpc_port: {{ .Values.serve.grpcPort }}
      ray:
        num_gpus_per_replica: {{ .Values.scaling.numGpusPerReplica }}
        num_cpus_per_replica: {{ .Values.scaling.numCpusPerReplica }}
        min_replicas: {{ .Values.scaling.minReplicas }}
        max_replicas: {{ .Values.scaling.maxReplicas }}
        target_ongoing_requests: {{ .Values.scaling.targetOngoingRequests }}
        max_ongoing_requests: {{ .Values.scaling.maxOngoingRequests }}
        max_queued_requests: {{ .Values.scaling.maxQueuedRequests }}
        upscale_delay_s: {{ .Values.scaling.upscaleDelayS }}
        downscale_delay_s: {{ .Values.scaling.downscaleDelayS }}
        ingress_replicas: {{ .Values.scaling.ingressReplicas }}
        {{- if .Values.serve.ingressOnHead }}
        ingress_resource: {{ include "modserve.ingressResource" . }}
        {{- end }}
{{- end -}}

{{- define "modserve.env" -}}
- name: HF_HUB_OFFLINE
  value: "1"
- name: MODSERVE_HOST
  value: "0.0.0.0"
- name: HOME  # the root filesystem may be read-only: caches go to the /tmp emptyDir
  value: /tmp
- name: MODSERVE_LOG_LEVEL
  value: {{ .Values.serve.logLevel | quote }}
{{- if .Values.serve.apiKeysSecret }}
- name: MODSERVE_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.serve.apiKeysSecret }}
      key: api-keys
{{- end }}
{{- end -}}

{{/* The gateway's files, on the head only (where the ingress replicas run). */}}
{{- define "modserve.gatewayEnv" -}}
{{- if .Values.gateway.policy }}
{{- if not .Values.serve.ingressOnHead }}
{{- fail "gateway.policy needs serve.ingressOnHead: true (the key store lives on the head)" }}
{{- end }}
- name: MODSERVE_POLICY_FILE
  value: /etc/modserve/policy.yaml
- name: MODSERVE_KEY_STORE
  value: /var/lib/modserve/keys.db
{{- end }}
{{- if .Values.gateway.auditLog }}
- name: MODSERVE_AUDIT_LOG
  value: {{ .Values.gateway.auditLog | quote }}
{{- end }}
{{- end -}}

{{- define "modserve.gatewayMounts" -}}
{{- if .Values.gateway.policy }}
- name: policy
  mountPath: /etc/modserve
  readOnly: true
{{- end }}
{{- if or .Values.gateway.policy .Values.gateway.auditLog }}
- name: gateway-state
  mountPath: /var/lib/modserve
{{- end }}
{{- end -}}

{{- define "modserve.gatewayVolumes" -}}
{{- if .Values.gateway.policy }}
- name: policy
  configMap:
    name: {{ include "modserve.fullname" . }}-policy
{{- end }}
{{- if or .Values.gateway.policy .Values.gateway.auditLog }}
- name: gateway-state
{{- if .Values.gateway.stateClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.gateway.stateClaim }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}
{{- end -}}

{{- define "modserve.volumeMounts" -}}
volumeMounts:
  - name: tmp  # Ray's session dir, compile caches: writable with a read-only root fs
    mountPath: /tmp
{{- if .Values.model.volume.enabled }}
  - name: models
    mountPath: {{ .Values.model.volume.mountPath }}
    readOnly: {{ .Values.model.volume.readOnly }}
{{- end }}
{{- end -}}

{{- define "modserve.volumes" -}}
volumes:
  - name: tmp
    emptyDir: {}
{{- if .Values.model.volume.enabled }}
  - name: models
    persistentVolumeClaim:
      claimName: {{ .Values.model.volume.claimName }}
      readOnly: {{ .Values.model.volume.readOnly }}
{{- end }}
{{- end -}}

{{- define "modserve.podSecurityContext" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{- define "modserve.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{- define "modserve.probes" -}}
livenessProbe:
  httpGet: {path: /health, port: {{ .Values.serve.httpPort }}}
  initialDelaySeconds: {{ .Values.probes.initialDelaySeconds }}
  periodSeconds: {{ .Values.probes.periodSeconds }}
  failureThreshold: {{ .Values.probes.failureThreshold }}
readinessProbe:
  httpGet: {path: /ready, port: {{ .Values.serve.httpPort }}}
  initialDelaySeconds: {{ .Values.probes.initialDelaySeconds }}
  periodSeconds: {{ .Values.probes.periodSeconds }}
  failureThreshold: {{ .Values.probes.failureThreshold }}
{{- end -}}
