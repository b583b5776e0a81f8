"""Writes the JSON schemas .ci/k8s validates the chart's custom resources
against. See README.md beside this file for where each shape comes from.
Run from anywhere: python3 .ci/schemas/generate.py"""
import json, os
os.chdir(os.path.dirname(os.path.abspath(__file__)))
def obj(props, required=None, extra=False):
    o = {"type": "object", "properties": props, "additionalProperties": extra}
    if required: o["required"] = required
    return o
S = {"type": "string"}
I32 = {"type": "integer", "minimum": -2147483648, "maximum": 2147483647}
BOOL = {"type": "boolean"}
STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
ANYOBJ = {"type": "object"}
def top(api, kind, spec, spec_required=True):
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "apiVersion": {"const": api},
            "kind": {"const": kind},
            "metadata": obj({"name": {"type": "string", "minLength": 1}, "namespace": S,
                             "labels": STRMAP, "annotations": STRMAP}, ["name"], extra=True),
            "spec": spec,
            "status": ANYOBJ,
        },
        "required": ["apiVersion", "kind", "metadata"] + (["spec"] if spec_required else []),
        "additionalProperties": False,
    }

# KEDA ScaledObject keda.sh/v1alpha1
policy = obj({"type": S, "value": I32, "periodSeconds": I32}, ["type", "value", "periodSeconds"])
rules = obj({"policies": {"type": "array", "items": policy}, "selectPolicy": S,
             "stabilizationWindowSeconds": I32})
scaledobject = top("keda.sh/v1alpha1", "ScaledObject", obj({
    "scaleTargetRef": obj({"name": S, "apiVersion": S, "kind": S, "envSourceContainerName": S}, ["name"]),
    "pollingInterval": I32, "cooldownPeriod": I32, "initialCooldownPeriod": I32,
    "idleReplicaCount": I32, "minReplicaCount": I32, "maxReplicaCount": I32,
    "advanced": obj({
        "horizontalPodAutoscalerConfig": obj({"name": S, "behavior": obj({"scaleUp": rules, "scaleDown": rules})}),
        "restoreToOriginalReplicaCount": BOOL,
        "scalingModifiers": obj({"formula": S, "target": S, "activationTarget": S, "metricType": S}),
    }),
    "triggers": {"type": "array", "items": obj({
        "type": S, "name": S, "useCachedMetrics": BOOL,
        "metadata": STRMAP,
        "authenticationRef": obj({"name": S, "kind": S}, ["name"]),
        "metricType": S,
    }, ["type", "metadata"])},
    "fallback": obj({"failureThreshold": I32, "replicas": I32}, ["failureThreshold", "replicas"]),
}, ["scaleTargetRef", "triggers"]))

# KEDA TriggerAuthentication keda.sh/v1alpha1 (the parts without a cloud
# provider are spelled out; the provider blocks are objects).
secret_ref = obj({"parameter": S, "name": S, "key": S}, ["parameter", "name", "key"])
pod_identity = obj({"provider": {"type": "string", "enum": ["azure-workload", "gcp", "aws", "aws-eks", "none"]},
                    "identityId": S, "identityTenantId": S, "identityAuthorityHost": S,
                    "identityOwner": {"type": "string", "enum": ["keda", "workload"]},
                    "roleArn": S, "externalID": S}, ["provider"])
triggerauth = top("keda.sh/v1alpha1", "TriggerAuthentication", obj({
    "secretTargetRef": {"type": "array", "items": secret_ref},
    "configMapTargetRef": {"type": "array", "items": secret_ref},
    "env": {"type": "array", "items": obj({"parameter": S, "name": S, "containerName": S}, ["parameter", "name"])},
    "boundServiceAccountToken": {"type": "array", "items": obj({"parameter": S, "serviceAccountName": S}, ["parameter", "serviceAccountName"])},
    "podIdentity": pod_identity,
    "hashiCorpVault": ANYOBJ, "azureKeyVault": ANYOBJ, "awsSecretManager": ANYOBJ, "gcpSecretManager": ANYOBJ,
}))

# prometheus-operator ServiceMonitor monitoring.coreos.com/v1
duration = {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
label_selector = obj({"matchLabels": STRMAP, "matchExpressions": {"type": "array", "items": obj(
    {"key": S, "operator": S, "values": {"type": "array", "items": S}}, ["key", "operator"])}})
endpoint = obj({
    "port": S, "targetPort": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
    "path": S, "scheme": {"type": "string", "enum": ["http", "https"]},
    "params": {"type": "object", "additionalProperties": {"type": "array", "items": S}},
    "interval": duration, "scrapeTimeout": duration,
    "honorLabels": BOOL, "honorTimestamps": BOOL, "trackTimestampsStaleness": BOOL,
    "followRedirects": BOOL, "enableHttp2": BOOL, "filterRunning": BOOL,
    "proxyUrl": S,
    "authorization": ANYOBJ, "basicAuth": ANYOBJ, "oauth2": ANYOBJ, "tlsConfig": ANYOBJ,
    "bearerTokenFile": S, "bearerTokenSecret": ANYOBJ,
    "relabelings": {"type": "array", "items": ANYOBJ},
    "metricRelabelings": {"type": "array", "items": ANYOBJ},
})
u64 = {"type": "integer", "minimum": 0}
servicemonitor = top("monitoring.coreos.com/v1", "ServiceMonitor", obj({
    "jobLabel": S, "targetLabels": {"type": "array", "items": S}, "podTargetLabels": {"type": "array", "items": S},
    "endpoints": {"type": "array", "items": endpoint},
    "selector": label_selector,
    "namespaceSelector": obj({"any": BOOL, "matchNames": {"type": "array", "items": S}}),
    "sampleLimit": u64, "targetLimit": u64, "labelLimit": u64, "labelNameLengthLimit": u64,
    "labelValueLengthLimit": u64, "keepDroppedTargets": u64,
    "scrapeProtocols": {"type": "array", "items": S},
    "attachMetadata": obj({"node": BOOL}),
    "scrapeClass": {"type": "string", "minLength": 1},
    "bodySizeLimit": S,
}, ["endpoints", "selector"]))

# prometheus-operator PrometheusRule monitoring.coreos.com/v1: a rule has
# exactly one of alert and record (the CRD's OneOf=Record,Alert).
rule = obj({
    "record": S, "alert": S,
    "expr": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
    "for": duration, "keep_firing_for": dict(duration, minLength=1),
    "labels": STRMAP, "annotations": STRMAP,
}, ["expr"])
rule["oneOf"] = [{"required": ["alert"], "not": {"required": ["record"]}},
                 {"required": ["record"], "not": {"required": ["alert"]}}]
prometheusrule = top("monitoring.coreos.com/v1", "PrometheusRule", obj({
    "groups": {"type": "array", "items": obj({
        "name": {"type": "string", "minLength": 1},
        "labels": STRMAP,
        "interval": duration, "query_offset": duration,
        "rules": {"type": "array", "items": rule},
        "partial_response_strategy": {"type": "string", "pattern": "^([Aa][Bb][Oo][Rr][Tt]|[Ww][Aa][Rr][Nn])?$"},  # the CRD: ^(?i)(abort|warn)?$
        "limit": {"type": "integer"},
    }, ["name"])},
}))

for name, schema in [("keda.sh-v1alpha1-scaledobject", scaledobject),
                     ("keda.sh-v1alpha1-triggerauthentication", triggerauth),
                     ("monitoring.coreos.com-v1-servicemonitor", servicemonitor),
                     ("monitoring.coreos.com-v1-prometheusrule", prometheusrule)]:
    with open(name + ".json", "w") as f:
        json.dump(schema, f, indent=2); f.write("\n")
