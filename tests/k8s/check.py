"""Checks what the Kubernetes schemas cannot, on manifests rendered by `kubectl kustomize`
(for scripts/check-k8s):

    check.py <rendered.yaml> <README.md>

- every container has liveness and readiness probes on ports it declares, CPU and memory
  requests and a memory limit;
- every SloughGPT Deployment has Prometheus scrape annotations naming its admin port;
- every ConfigMap, Secret, PersistentVolumeClaim and key a pod refers to is in the
  render (or is one of its StatefulSet's volume claim templates);
- every Service selects some pod and targets ports that pod declares;
- every HorizontalPodAutoscaler scales a Deployment of the render that requests CPU;
- every pod metric an autoscaler follows is served by a prometheus-adapter rule of the
  render (`prometheus-adapter-rules`) that sums one series per pod, and that series is
  one the Grafana dashboards chart (scripts/check-dashboards proves those on a live
  Prometheus fed by the real services);
- every SLOUGH_* setting the manifests give is documented in the README.

Runs with the virtual environment's python (PyYAML comes with kubernetes-validate).
"""

import glob
import os
import re
import sys

import yaml


def main(rendered, readme):
    objects = [o for o in yaml.safe_load_all(open(rendered)) if o]
    by_kind = {}
    for o in objects:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    problems = []
    workloads = {**by_kind.get("Deployment", {}), **by_kind.get("StatefulSet", {})}
    # The table's names, `SLOUGH_<SERVICE>__ADMIN_LISTEN` standing for each service's.
    names = re.findall(r"`(SLOUGH_[A-Z_<>]+|NATS_URL)`", open(readme).read())
    patterns = [re.compile(re.escape(n).replace(re.escape("<SERVICE>"), "[A-Z]+")) for n in names]

    def is_documented(variable):
        return any(p.fullmatch(variable) for p in patterns)


    for name, workload in workloads.items():
        where = f"{workload['kind']} {name}"
        pod = workload["spec"]["template"]
        spec = pod["spec"]
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume and volume["configMap"]["name"] not in by_kind.get("ConfigMap", {}):
                problems.append(f"{where}: volume {volume['name']} names a ConfigMap the render lacks")
            if "persistentVolumeClaim" in volume and volume["persistentVolumeClaim"]["claimName"] not in by_kind.get("PersistentVolumeClaim", {}):
                problems.append(f"{where}: volume {volume['name']} names a claim the render lacks")
        for container in spec.get("initContainers", []) + spec["containers"]:
            what = f"{where} container {container['name']}"
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes and mount["name"] not in claims:
                    problems.append(f"{what}: mounts {mount['name']}, which is no volume of its pod")
            for source in container.get("envFrom", []):
                for kind, ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if ref in source and source[ref]["name"] not in by_kind.get(kind, {}):
                        problems.append(f"{what}: envFrom names a {kind} the render lacks")
            for variable in container.get("env", []):
                key_ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if key_ref:
                    secret = by_kind.get("Secret", {}).get(key_ref["name"])
                    data = {**(secret or {}).get("data", {}), **(secret or {}).get("stringData", {})}
                    if key_ref["key"] not in data:
                        problems.append(f"{what}: {variable['name']} reads {key_ref['name']}/{key_ref['key']}, which the render lacks")
                if variable["name"].startswith("SLOUGH_") and not is_documented(variable["name"]) and variable["name"] != "SLOUGH_ADVERTISE_HOST":
                    problems.append(f"{what}: {variable['name']} is not in the README's configuration table")
            if container in spec.get("initContainers", []):
                continue
            ports = {p.get("name") for p in container.get("ports", [])} | {p["containerPort"] for p in container.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                handler = container.get(probe)
                if not handler:
                    problems.append(f"{what}: no {probe}")
                    continue
                for kind in ("httpGet", "tcpSocket"):
                    if kind in handler and handler[kind]["port"] not in ports:
                        problems.append(f"{what}: {probe} on port {handler[kind]['port']}, which it does not declare")
            resources = container.get("resources", {})
            if not {"cpu", "memory"} <= set(resources.get("requests", {})) or "memory" not in resources.get("limits", {}):
                problems.append(f"{what}: needs CPU and memory requests and a memory limit, has {resources}")
        labels = pod["metadata"].get("labels", {})
        if labels.get("app.kubernetes.io/component") == "service":
            annotations = pod["metadata"].get("annotations", {})
            admin = [p["containerPort"] for p in spec["containers"][0].get("ports", []) if p.get("name") == "admin"]
            if annotations.get("prometheus.io/scrape") != "true" or [int(annotations.get("prometheus.io/port", 0))] != admin:
                problems.append(f"{where}: scrape annotations {annotations} do not name its admin port {admin}")

    for name, config in by_kind.get("ConfigMap", {}).items():
        for variable in config.get("data", {}):
            if variable.startswith("SLOUGH_") and not is_documented(variable):
                problems.append(f"ConfigMap {name}: {variable} is not in the README's configuration table")

    for name, service in by_kind.get("Service", {}).items():
        if service["spec"].get("type") == "ExternalName":
            continue
        selector = service["spec"].get("selector", {})
        pods = [w["spec"]["template"] for w in workloads.values()
                if selector and selector.items() <= w["spec"]["template"]["metadata"].get("labels", {}).items()]
        if not pods:
            problems.append(f"Service {name}: selects no pod ({selector})")
            continue
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            declared = {p.get("name") for pod in pods for c in pod["spec"]["containers"] for p in c.get("ports", [])} | \
                {p["containerPort"] for pod in pods for c in pod["spec"]["containers"] for p in c.get("ports", [])}
            if target not in declared:
                problems.append(f"Service {name}: targets port {target}, which its pods do not declare")

    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        target = hpa["spec"]["scaleTargetRef"]
        deployment = by_kind.get(target["kind"], {}).get(target["name"])
        if not deployment:
            problems.append(f"HorizontalPodAutoscaler {name}: scales {target['kind']} {target['name']}, which the render lacks")
        elif not all("cpu" in c.get("resources", {}).get("requests", {}) for c in deployment["spec"]["template"]["spec"]["containers"]):
            problems.append(f"HorizontalPodAutoscaler {name}: {target['name']} requests no CPU to measure use against")

    problems += adapter_problems(by_kind, os.path.dirname(os.path.abspath(readme)))

    if problems:
        print(f"check-k8s: {rendered}:\n  " + "\n  ".join(problems), file=sys.stderr)
        sys.exit(1)
    print(f"check-k8s: {rendered}: {len(objects)} objects refer to each other consistently", file=sys.stderr)


def adapter_problems(by_kind, root):
    """What is wrong with the pod metrics the autoscalers follow and their adapter rules."""
    problems = []
    wanted = {
        (name, metric["pods"]["metric"]["name"])
        for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items()
        for metric in hpa["spec"].get("metrics", [])
        if metric["type"] == "Pods"
    }
    if not wanted:
        return problems
    rules_map = by_kind.get("ConfigMap", {}).get("prometheus-adapter-rules")
    if not rules_map:
        return [f"HorizontalPodAutoscaler {hpa}: follows pod metrics, but the render has no prometheus-adapter-rules ConfigMap" for hpa, _ in sorted(wanted)]
    charted = "".join(open(path).read() for path in glob.glob(os.path.join(root, "grafana/dashboards/*.json")))
    served = {}
    for rule in yaml.safe_load(rules_map["data"]["config.yaml"])["rules"]:
        series = re.match(r"'?([a-z_:]+)\{", rule["seriesQuery"])
        name = rule["name"]["as"]
        overrides = rule.get("resources", {}).get("overrides", {})
        if not series:
            problems.append(f"prometheus-adapter rule {name}: its seriesQuery names no series")
            continue
        if {overrides.get(k, {}).get("resource") for k in ("namespace", "pod")} != {"namespace", "pod"}:
            problems.append(f"prometheus-adapter rule {name}: does not map the namespace and pod labels to their resources")
        if not all(part in rule["metricsQuery"] for part in ("<<.Series>>", "<<.LabelMatchers>>", "by (<<.GroupBy>>)")):
            problems.append(f"prometheus-adapter rule {name}: its metricsQuery does not sum the series per pod")
        if series.group(1) not in charted:
            problems.append(f"prometheus-adapter rule {name}: {series.group(1)} is on no Grafana dashboard, so nothing proves the services export it")
        served[name] = series.group(1)
    for hpa, metric in sorted(wanted):
        if metric not in served:
            problems.append(f"HorizontalPodAutoscaler {hpa}: follows pod metric {metric}, which no prometheus-adapter rule serves")
    return problems


if __name__ == "__main__":
    main(*sys.argv[1:])
