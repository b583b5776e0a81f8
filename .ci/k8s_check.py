"""Checks behind .ci/k8s (run in its venv: kubernetes-validate, jsonschema,
PyYAML, promql-parser). Each subcommand prints what it checked and exits 1
on a failure.

  objects DIR       every *.yaml in DIR (one `helm template` output per
                    values combination): each object against the Kubernetes
                    schemas (strict: unknown fields fail) for every
                    --kube version, custom resources against .ci/schemas,
                    then Kiln's own rules (the PrometheusRule's and the
                    dashboard's PromQL parsed, their kiln_* metrics checked
                    against docs/OBSERVABILITY.md); writes each config file
                    to DIR/<name>.kiln.json for `kiln config check`.
  dockerfile        every COPY source of the Dockerfile exists and is not
                    excluded by .dockerignore; the build runs CI's commands.
  readme            every leaf key of helm/kiln/values.yaml is in the
                    chart README's values table.
"""

import argparse
import fnmatch
import json
import pathlib
import re
import sys

import jsonschema
import kubernetes_validate
import promql_parser
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / ".ci" / "schemas"
CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh-v1alpha1-scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh-v1alpha1-triggerauthentication.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com-v1-servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com-v1-prometheusrule.json",
}
CONFIG_KEY = "kiln.json"
CONFIG_FILE = "/etc/kiln/" + CONFIG_KEY
DASHBOARD_KEY = "kiln-dashboard.json"


class Report:
    def __init__(self):
        self.errors = []

    def fail(self, where, message):
        self.errors.append(f"{where}: {message}")
        print(f"  FAIL {where}: {message}")

    def check(self, condition, where, message):
        if not condition:
            self.fail(where, message)
        return condition


def load_docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def schema_check(report, name, doc, kube_versions, validators):
    where = f"{name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CUSTOM:
        errors = sorted(validators[key].iter_errors(doc), key=lambda e: list(e.path))
        for e in errors:
            path = ".".join(str(p) for p in e.path)
            report.fail(where, f"CRD schema: {path}: {e.message}")
        return
    for version in kube_versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            report.fail(where, f"Kubernetes {version}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            report.fail(where, f"no schema: {e.message}")


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def exported_metrics():
    """Kiln's metric names (docs/OBSERVABILITY.md's table) and the sample
    names a query may use: a histogram's _bucket, _sum and _count."""
    text = (ROOT / "docs" / "OBSERVABILITY.md").read_text()
    names = set()
    for name, kind in re.findall(r"^\| `(kiln_[a-z_]+)` \| (\w+) \|", text, re.M):
        names.add(name)
        if kind == "histogram":
            names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


def promql_metrics(report, where, expr):
    """The metric names `expr` selects, or None (reported) if it does not parse."""
    try:
        ast = promql_parser.parse(expr)
    except ValueError as e:
        report.fail(where, f"PromQL does not parse: {e}: {expr}")
        return None
    names = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(ast, visit)
    return names


def check_queries(report, where, exprs, metrics):
    """Each expression parses, and every kiln_* metric it reads is exported."""
    for expr in exprs:
        names = promql_metrics(report, where, expr)
        for n in sorted(names or ()):
            report.check(not n.startswith("kiln_") or n in metrics, where,
                         f"{n} is not a metric Kiln exports (docs/OBSERVABILITY.md)")


def grafana_queries(dashboard):
    """Every panel target's expression and every query variable's, with the
    Grafana variables replaced by values PromQL accepts."""
    exprs = [v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
             for v in dashboard.get("templating", {}).get("list", []) if v.get("type") == "query"]
    panels = list(dashboard.get("panels", []))
    for p in list(panels):
        panels.extend(p.get("panels", []))
    exprs += [t["expr"] for p in panels for t in p.get("targets", [])]
    out = []
    for e in exprs:
        # label_values(metric, label) is Grafana's, not PromQL: check its selector.
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", e.strip())
        e = m.group(1) if m else e
        out.append(re.sub(r"\$__\w+", "5m", e).replace("$", ""))
    return out


def check_dashboard(report, where, cm, metrics):
    text = cm.get("data", {}).get(DASHBOARD_KEY)
    if not report.check(text is not None, where, f"no {DASHBOARD_KEY}"):
        return
    try:
        dashboard = json.loads(text)
    except json.JSONDecodeError as e:
        report.fail(where, f"{DASHBOARD_KEY} is not JSON: {e}")
        return
    for key in ("title", "uid", "panels", "schemaVersion", "templating"):
        report.check(key in dashboard, where, f"dashboard without {key}")
    panels = list(dashboard.get("panels", []))
    for p in list(panels):
        panels.extend(p.get("panels", []))
    ids = [p.get("id") for p in panels]
    report.check(len(ids) == len(set(ids)) and None not in ids, where, "panel ids missing or repeated")
    for p in panels:
        report.check(p.get("type") == "row" or p.get("targets"), where, f"panel {p.get('title')} has no query")
        g = p.get("gridPos", {})
        report.check(all(isinstance(g.get(k), int) for k in "xywh") and g["x"] + g["w"] <= 24, where,
                     f"panel {p.get('title')}: gridPos {g}")
    uses = {m for e in grafana_queries(dashboard) for m in (promql_metrics(report, where, e) or ())}
    for wanted in ("kiln_jobs_total", "kiln_job_duration_seconds_bucket", "kiln_jobs_in_flight",
                   "kiln_retries_total", "kiln_dead_lettered_total", "kiln_job_fuel_consumed_bucket",
                   "kiln_plugin_reloads_total", "kiln_capability_denials_total"):
        report.check(wanted in uses, where, f"the dashboard does not show {wanted}")
    check_queries(report, where, grafana_queries(dashboard), metrics)


def check_rules(report, where, rule, metrics):
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            report.check(bool(r.get("alert") or r.get("record")), where, "a rule without alert or record")
            check_queries(report, f"{where}: {r.get('alert') or r.get('record')}", [str(r["expr"])], metrics)
            for key in ("summary", "description"):
                report.check(r.get("alert") is None or key in r.get("annotations", {})
                             or r["alert"] not in ALERTS, where, f"{r.get('alert')} without {key}")


ALERTS = {"KilnWorkerNotReady", "KilnDeadLetterRate", "KilnJobErrorRate", "KilnReconnectStorm",
          "KilnQueueBacklogAge"}


def check_pod_security(report, w, pod):
    psc = pod.get("securityContext", {})
    report.check(pod.get("automountServiceAccountToken") is False, w,
                 "pod automountServiceAccountToken is not false")
    volumes = {v["name"] for v in pod.get("volumes", [])}
    for c in pod.get("initContainers", []) + pod["containers"]:
        cw = f"{w}: container {c['name']}"
        sc = c.get("securityContext", {})
        report.check(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, cw, "runAsNonRoot")
        report.check(sc.get("readOnlyRootFilesystem") is True, cw, "readOnlyRootFilesystem")
        report.check(sc.get("allowPrivilegeEscalation") is False, cw, "allowPrivilegeEscalation")
        report.check("ALL" in sc.get("capabilities", {}).get("drop", []), cw, "capabilities.drop ALL")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
        report.check(seccomp.get("type") == "RuntimeDefault", cw, "seccompProfile RuntimeDefault")
        report.check("resources" in c, cw, "resources")
        for m in c.get("volumeMounts", []):
            report.check(m["name"] in volumes, cw, f"mounts {m['name']}, which is not a pod volume")


def kiln_rules(report, name, docs, tests_expected):
    """Kiln's deployment rules: the things the chart promises."""
    w = name
    config_maps = [c for c in by_kind(docs, "ConfigMap") if CONFIG_KEY in c.get("data", {})]
    deployments = by_kind(docs, "Deployment")
    if not (report.check(len(config_maps) == 1, w, f"expected one ConfigMap with {CONFIG_KEY}")
            and report.check(len(deployments) == 1, w, "expected one Deployment")):
        return None
    text = config_maps[0]["data"][CONFIG_KEY]
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        report.fail(w, f"{CONFIG_KEY} is not JSON: {e}")
        return None
    report.check("url" not in config.get("amqp", {}) and "amqp://" not in text
                 and "amqps://" not in text, w, "the ConfigMap carries a broker URL")

    pod = deployments[0]["spec"]["template"]["spec"]
    check_pod_security(report, w, pod)

    kiln = next(c for c in pod["containers"] if c["name"] == "kiln")
    args = kiln.get("args", [])
    report.check(args[:2] == ["--config-file", CONFIG_FILE], w,
                 f"the worker is not started with --config-file {CONFIG_FILE}")
    port = int(config.get("http", {}).get("listen", "0.0.0.0:9090").rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in kiln.get("ports", [])}
    report.check(ports.get("http") == port, w, f"containerPort http != http.listen port {port}")
    for probe, path in [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")]:
        get = kiln.get(probe, {}).get("httpGet", {})
        report.check(get.get("path") == path and get.get("port") == "http", w,
                     f"{probe} is not GET {path} on port http")

    shutdown_ms = config.get("amqp", {}).get("shutdown_timeout_ms", 30_000)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    report.check(grace > shutdown_ms / 1000 + 5, w,
                 f"terminationGracePeriodSeconds {grace} is not above "
                 f"shutdown_timeout_ms {shutdown_ms} + 5 s")

    env = {e["name"]: e for e in kiln.get("env", [])}
    url_file = env.get("KILN__AMQP__URL_FILE", {}).get("value", "")
    mounts = {m["name"]: m["mountPath"] for m in kiln.get("volumeMounts", [])}
    secret_volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    report.check(any(url_file.startswith(mounts.get(n, "//") + "/") for n in secret_volumes),
                 w, "KILN__AMQP__URL_FILE does not point into a mounted Secret")
    report.check(mounts.get("config") == "/etc/kiln", w, f"{CONFIG_KEY} is not at /etc/kiln")
    # A directory plugins may be granted must be in the pod (extraVolumes).
    for d in config.get("sandbox", {}).get("caps", {}).get("allowed_dirs", []):
        report.check(any(d == m or d.startswith(m.rstrip("/") + "/") for m in mounts.values()), w,
                     f"sandbox.caps.allowed_dirs {d} is not on a mounted volume")
    plugins_dir = config.get("plugins_dir")
    report.check(plugins_dir == "/opt/kiln/plugins" or plugins_dir in mounts.values(), w,
                 f"plugins_dir {plugins_dir} is neither mounted nor the image's")
    cache = config.get("sandbox", {}).get("cache", {})
    report.check(cache.get("dir") in mounts.values(), w, "the writable cache is not a volume")
    report.check(cache.get("baked_dir") == "/opt/kiln/cache", w, "baked_dir is not the image's")

    selector = deployments[0]["spec"]["selector"]["matchLabels"]
    port_number = port
    tests = [p for p in by_kind(docs, "Pod")
             if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    report.check(len(tests) == tests_expected, w, f"expected {tests_expected} helm test Pod(s)")
    for test in tests:
        tw = f"{w}: test Pod"
        check_pod_security(report, tw, test["spec"])
        labels = test["metadata"].get("labels", {})
        report.check(any(labels.get(k) != v for k, v in selector.items()), tw,
                     "carries the worker's selector labels (the Service would route to it)")
        command = " ".join(test["spec"]["containers"][0].get("command", []))
        report.check(re.search(rf":{port_number}/readyz\b", command) is not None, tw,
                     f"does not GET /readyz on port {port_number}: {command}")
        report.check(test["spec"].get("restartPolicy") == "Never", tw, "restartPolicy is not Never")

    metrics = exported_metrics()
    for rule in by_kind(docs, "PrometheusRule"):
        check_rules(report, f"{w}: PrometheusRule", rule, metrics)
        alerts = {r.get("alert") for g in rule["spec"]["groups"] for r in g["rules"]}
        report.check(alerts & ALERTS, w, "the PrometheusRule has none of Kiln's alerts")
    for cm in by_kind(docs, "ConfigMap"):
        if DASHBOARD_KEY in cm.get("data", {}):
            check_dashboard(report, f"{w}: dashboard", cm, metrics)
            own = [k for k in cm["metadata"].get("labels", {})
                   if k != "helm.sh/chart" and not k.startswith("app.kubernetes.io/")]
            report.check(len(own) == 1, w, f"the dashboard ConfigMap's sidecar label: {own}")

    for sa in by_kind(docs, "ServiceAccount"):
        report.check(sa.get("automountServiceAccountToken") is False, w,
                     "ServiceAccount automountServiceAccountToken is not false")
    for np in by_kind(docs, "NetworkPolicy"):
        report.check("Egress" in np["spec"].get("policyTypes", []), w, "NetworkPolicy without Egress")
        for rule in np["spec"].get("egress", []):
            report.check(bool(rule.get("ports")), w, "an egress rule open to every port")
    autoscalers = by_kind(docs, "ScaledObject") + by_kind(docs, "HorizontalPodAutoscaler")
    report.check(len(autoscalers) <= 1, w, "both an HPA and a ScaledObject")
    if autoscalers:
        report.check("replicas" not in deployments[0]["spec"], w,
                     "the Deployment sets replicas under an autoscaler")
    auths = {a["metadata"]["name"]: a for a in by_kind(docs, "TriggerAuthentication")}
    for so in by_kind(docs, "ScaledObject"):
        for t in so["spec"]["triggers"]:
            if t["type"] != "rabbitmq":
                continue
            m = t["metadata"]
            # The amqp protocol counts ready messages only: a busy fleet's
            # prefetched (unacked) jobs would not count, and KEDA would
            # scale in pods that are mid-job.
            report.check(m.get("protocol") == "http", w, "rabbitmq trigger not in http mode")
            report.check(m.get("mode") == "QueueLength", w, "rabbitmq trigger mode is not QueueLength")
            check_trigger_queues(report, w, m, config.get("amqp", {}))
            report.check("host" not in m, w, "credentials in the trigger's metadata")
            auth = auths.get(t.get("authenticationRef", {}).get("name"))
            if report.check(auth is not None, w, "authenticationRef names no TriggerAuthentication"):
                params = {r["parameter"] for r in auth["spec"].get("secretTargetRef", [])}
                report.check("host" in params, w, "TriggerAuthentication gives no host")
    return text


def check_trigger_queues(report, w, metadata, amqp):
    """The trigger watches the jobs queue; with amqp.shards > 1, the sum of
    the shards consumed (a regex) and nothing derived from them."""
    queue = amqp.get("queue", "kiln.jobs")
    shards = int(amqp.get("shards", 1))
    name = metadata.get("queueName", "")
    if shards <= 1:
        report.check(name == queue, w, "rabbitmq trigger watches another queue than amqp.queue")
        report.check(metadata.get("useRegex") in (None, "false"), w,
                     "rabbitmq trigger uses a regex on an unsharded queue")
        return
    report.check(metadata.get("useRegex") == "true", w,
                 "rabbitmq trigger on a sharded queue without useRegex")
    report.check(metadata.get("operation") == "sum", w,
                 "rabbitmq trigger on a sharded queue does not sum the shards")
    try:
        pattern = re.compile(name)
    except re.error as e:
        report.fail(w, f"rabbitmq trigger queueName is not a regex: {e}")
        return
    consumed = amqp.get("shard_ids") or range(shards)
    for i in range(shards):
        shard = f"{queue}.s{i}"
        report.check(bool(pattern.search(shard)) == (i in consumed), w,
                     f"rabbitmq trigger regex {name} {'misses' if i in consumed else 'counts'} {shard}")
    for other in [queue, f"{queue}.results", f"{queue}.s0.dead", f"{queue}.s1.retry.1",
                  f"{queue}.s0x", f"x{queue}.s0", f"{queue}.replies.abc"]:
        report.check(not pattern.search(other), w, f"rabbitmq trigger regex {name} counts {other}")


def cmd_objects(args):
    report = Report()
    validators = {}
    for key, file in CUSTOM.items():
        schema = json.loads((SCHEMAS / file).read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        validators[key] = jsonschema.Draft202012Validator(schema)
    out = pathlib.Path(args.dir)
    files = sorted(out.glob("*.yaml"))
    if not files:
        report.fail(str(out), "no rendered files")
    for path in files:
        name = path.stem
        docs = load_docs(path)
        before = len(report.errors)
        for doc in docs:
            schema_check(report, name, doc, args.kube, validators)
        text = kiln_rules(report, name, docs, 0 if args.skip_tests else 1)
        if text is not None:
            (out / f"{name}.kiln.json").write_text(text)
        kinds = ", ".join(sorted({d["kind"] for d in docs}))
        status = "ok" if len(report.errors) == before else "FAILED"
        print(f"  {name}: {len(docs)} objects ({kinds}): {status}")
    return report


def dockerignored(path, patterns):
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        p = pattern.lstrip("!").rstrip("/")
        parts = pathlib.PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, p) or fnmatch.fnmatch(prefix, p.replace("**/", ""))
               for prefix in prefixes):
            ignored = not negate
    return ignored


def cmd_dockerfile(_args):
    report = Report()
    text = (ROOT / "Dockerfile").read_text()
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    # Join continuation lines, then look at each instruction.
    instructions = re.sub(r"\\\n", " ", text).splitlines()
    copies = 0
    for line in instructions:
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
            continue
        sources = [w for w in words[1:-1] if not w.startswith("--")]
        for src in sources:
            copies += 1
            if src == ".":
                continue
            report.check((ROOT / src).exists(), "Dockerfile", f"COPY source {src} does not exist")
            report.check(not dockerignored(src, patterns), "Dockerfile",
                         f"COPY source {src} is excluded by .dockerignore")
    # The build steps are CI's own commands; anything else would be untested.
    runs = " ".join(line for line in instructions if line.startswith("RUN "))
    for command in ["cargo build --release -p kiln --locked", "cargo xtask plugins",
                    "kiln --config-file docker/kiln.toml --plugins /out/plugins precompile --out /out/cache"]:
        report.check(" ".join(command.split()) in " ".join(runs.split()), "Dockerfile",
                     f"the build does not run `{command}`")
    for needed in ["Cargo.toml", "Cargo.lock", "worker", "plugins/rust", "plugins/xtask", "wit",
                   "integration-tests", "docker/kiln.toml", ".cargo/config.toml"]:
        report.check(not dockerignored(needed, patterns), ".dockerignore",
                     f"{needed} (needed by the build) is excluded")
    report.check(re.search(r'^ENTRYPOINT \["/usr/local/bin/kiln"\]', text, re.M) is not None,
                 "Dockerfile", "ENTRYPOINT is not kiln")
    report.check(re.search(r'^CMD \["worker"\]', text, re.M) is not None, "Dockerfile", "CMD is not worker")
    report.check(re.search(r"^USER 65532:65532", text, re.M) is not None, "Dockerfile", "no USER 65532")
    print(f"  Dockerfile: {copies} COPY sources, build commands and user checked")
    return report


def leaves(value, prefix=""):
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from leaves(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix


def cmd_readme(_args):
    report = Report()
    values = yaml.safe_load((ROOT / "helm/kiln/values.yaml").read_text())
    readme = (ROOT / "helm/kiln/README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, re.M))
    keys = list(leaves(values))
    for key in keys:
        # A key is covered by its own row or by a row for a parent (config.*).
        parts = key.split(".")
        covered = any(".".join(parts[:i]) in documented for i in range(1, len(parts) + 1))
        report.check(covered, "helm/kiln/README.md", f"values key {key} is not in the values table")
    for key in sorted(documented):
        report.check(any(k == key or k.startswith(key + ".") for k in keys), "helm/kiln/README.md",
                     f"the values table documents {key}, which values.yaml does not have")
    print(f"  README: {len(keys)} values keys, {len(documented)} table rows")
    return report


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("objects")
    p.add_argument("dir")
    p.add_argument("--kube", action="append", required=True)
    p.add_argument("--skip-tests", action="store_true", help="rendered with helm template --skip-tests")
    sub.add_parser("dockerfile")
    sub.add_parser("readme")
    args = parser.parse_args()
    report = {"objects": cmd_objects, "dockerfile": cmd_dockerfile, "readme": cmd_readme}[args.command](args)
    if report.errors:
        print(f"{len(report.errors)} failed")
        sys.exit(1)


if __name__ == "__main__":
    main()
