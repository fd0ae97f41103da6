#!/usr/bin/env python3
"""Checks what schemas cannot: the shape of a rendered overlay (`kubectl kustomize`, on stdin).

Usage: kubectl kustomize k8s/overlays/prod | check-k8s-shape.py prod
Needs PyYAML (in the venv of scripts/check-deploy.sh, with yamllint). Prints one line per
problem and exits 1 if there is any. What it asserts (docs/deployment.md, "Kubernetes"):
- every image has a tag, never `latest`; outside dev also a registry (the overlay's `images:`);
- the trackers wait for the database (P2P_DB_WAIT_SECS > 0) and serve /metrics on a port of
  their own, which the Ingress never routes to, and which the probes and ServiceMonitor use;
- the relay is a StatefulSet with a headless Service, a ClusterIP Service per pod (the
  Ingress's /relay backend) and a LoadBalancer Service per pod carrying the UDP rendezvous with
  the client's source address kept (externalTrafficPolicy Local);
- each relay pod publishes a URL naming itself (P2P_RELAY_URL after POD_NAME); each API
  replica's P2P_RATE_LIMIT_REPLICAS is the Deployment's replica count;
- UDP is on no plain ClusterIP Service; the relay pods do not trust X-Forwarded-For;
- every Secret the pods use is either rendered (generated) or one of the documented external ones.
"""
import re
import sys

import yaml

EXTERNAL_SECRETS = {"p2p-tracker", "p2p-peer", "p2p-tracker-db", "p2p-db-app"}
POD_NAME = "statefulset.kubernetes.io/pod-name"

overlay = sys.argv[1]
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
problems = []


def of_kind(kind):
    return [d for d in docs if d["kind"] == kind]


def name(d):
    return d["metadata"]["name"]


def check(ok, message):
    if not ok:
        problems.append(message)


def selects(service, labels):
    sel = service["spec"].get("selector") or {}
    return bool(sel) and all(labels.get(k) == v for k, v in sel.items())


workloads = of_kind("Deployment") + of_kind("StatefulSet")
services = of_kind("Service")
config = {name(c): c.get("data", {}) for c in of_kind("ConfigMap")}
rendered_secrets = {name(s) for s in of_kind("Secret")}

trackers = []
for w in workloads:
    pod = w["spec"]["template"]
    for c in pod["spec"]["containers"]:
        image = c["image"]
        last = image.rsplit("/", 1)[-1]
        check(":" in last or "@" in last, f"{name(w)}: image {image} has no tag")
        check(not last.endswith(":latest"), f"{name(w)}: image {image} is :latest")
        if overlay != "dev":
            check("/" in image and "." in image.split("/")[0],
                  f"{name(w)}: image {image} names no registry (set the overlay's images:)")
            # One tag per build (nix/images.nix), so IfNotPresent never keeps an old image.
            check("@sha256:" in image or re.fullmatch(r"[0-9.]+-[0-9a-f]{7,}", last.split(":")[-1]),
                  f"{name(w)}: image {image} is not tagged <version>-<git revision> or by digest")
        env = {e["name"]: e for e in c.get("env", [])}
        for e in env.values():
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                check(ref["name"] in rendered_secrets or ref["name"] in EXTERNAL_SECRETS,
                      f"{name(w)}: secret {ref['name']} is neither generated nor documented")
        if last.startswith("p2p-tracker"):
            trackers.append((w, pod, c, env))

check(trackers, "no tracker workload")
for w, pod, c, env in trackers:
    settings = {}
    for source in c.get("envFrom", []):
        settings.update(config.get(source.get("configMapRef", {}).get("name"), {}))
    settings.update({k: e.get("value") for k, e in env.items() if "value" in e})
    ports = {p["name"]: p for p in c.get("ports", [])}
    check(int(settings.get("P2P_DB_WAIT_SECS", "0")) > 0,
          f"{name(w)}: P2P_DB_WAIT_SECS is not set: a fresh install crash-loops")
    metrics = settings.get("P2P_METRICS_ADDR", "")
    check(metrics.rsplit(":", 1)[-1] == str(ports.get("metrics", {}).get("containerPort")),
          f"{name(w)}: P2P_METRICS_ADDR {metrics!r} is not the container port `metrics`")
    check(metrics.rsplit(":", 1)[-1] != settings.get("P2P_ADDR", ":8080").rsplit(":", 1)[-1],
          f"{name(w)}: /metrics shares the main port")
    for probe in ("livenessProbe", "startupProbe"):
        port = (c.get(probe) or {}).get("httpGet", {}).get("port")
        check(port == "metrics", f"{name(w)}: {probe} is not on the metrics port")
    if w["kind"] == "StatefulSet":
        check(settings.get("P2P_TRUST_PROXY", "false") != "true",
              f"{name(w)}: the relay trusts X-Forwarded-For, but peers reach it directly")
        # Each relay pod publishes its own address to the fleet: the URL names the pod, and
        # Kubernetes expands $(POD_NAME) only when it is defined earlier in the list.
        names = [e["name"] for e in c.get("env", [])]
        url = settings.get("P2P_RELAY_URL") or ""
        check("$(POD_NAME)" in url, f"{name(w)}: P2P_RELAY_URL {url!r} does not name the pod")
        check("POD_NAME" in names and "P2P_RELAY_URL" in names
              and names.index("POD_NAME") < names.index("P2P_RELAY_URL"),
              f"{name(w)}: POD_NAME is not defined before P2P_RELAY_URL")
    else:
        # Behind one balancer: each API replica enforces its share of the rate limit.
        check(settings.get("P2P_RATE_LIMIT_REPLICAS") == str(w["spec"].get("replicas", 1)),
              f"{name(w)}: P2P_RATE_LIMIT_REPLICAS {settings.get('P2P_RATE_LIMIT_REPLICAS')!r} "
              f"is not the replica count {w['spec'].get('replicas', 1)}")

# The Ingress reaches only `http` ports, never the metrics port.
for ing in of_kind("Ingress"):
    for rule in ing["spec"].get("rules", []):
        for path in rule.get("http", {}).get("paths", []):
            check(not path["path"].startswith("/metrics"), f"Ingress routes {path['path']}")
            backend = path["backend"]["service"]
            svc = [s for s in services if name(s) == backend["name"]]
            check(svc, f"Ingress backend {backend['name']} is no Service")
            for s in svc:
                port = [p for p in s["spec"]["ports"]
                        if p.get("name") == backend["port"].get("name")
                        or p.get("port") == backend["port"].get("number")]
                check(port and port[0].get("targetPort") != "metrics" and port[0]["port"] != 9090,
                      f"Ingress backend {backend['name']} reaches the metrics port")

# UDP only on headless or LoadBalancer Services.
for s in services:
    spec = s["spec"]
    udp = [p for p in spec["ports"] if p.get("protocol") == "UDP"]
    if udp and spec.get("clusterIP") != "None":
        check(spec.get("type") == "LoadBalancer",
              f"Service {name(s)}: UDP on a {spec.get('type', 'ClusterIP')} Service is unreachable from outside")
        check(spec.get("externalTrafficPolicy") == "Local",
              f"Service {name(s)}: UDP rendezvous without externalTrafficPolicy Local loses the client address")

# The relay: a StatefulSet, a headless Service, and per-pod Services.
relays = [w for w, *_ in trackers if w["kind"] == "StatefulSet"]
check(relays, "the relay is not a StatefulSet")
for r in relays:
    headless = [s for s in services if name(s) == r["spec"]["serviceName"]]
    check(headless and headless[0]["spec"].get("clusterIP") == "None",
          f"{name(r)}: serviceName {r['spec']['serviceName']} is not a headless Service")
    labels = r["spec"]["template"]["metadata"].get("labels", {})
    for i in range(r["spec"].get("replicas", 1)):
        pod_labels = {**labels, POD_NAME: f"{name(r)}-{i}"}
        per_pod = [s for s in services if POD_NAME in (s["spec"].get("selector") or {})
                   and selects(s, pod_labels)]
        check(any(p.get("protocol", "TCP") == "TCP" for s in per_pod for p in s["spec"]["ports"]),
              f"{name(r)}-{i}: no per-pod Service for TCP")
        check(any(s["spec"].get("type") == "LoadBalancer" and p.get("protocol") == "UDP"
                  for s in per_pod for p in s["spec"]["ports"]),
              f"{name(r)}-{i}: no LoadBalancer Service for the UDP rendezvous")

# The ServiceMonitor scrapes the metrics port of Services that have one.
for sm in [d for d in docs if d["kind"] == "ServiceMonitor"]:
    for ep in sm["spec"]["endpoints"]:
        check(ep.get("port") == "metrics", f"ServiceMonitor scrapes port {ep.get('port')}")
    match = sm["spec"]["selector"].get("matchLabels", {})
    scraped = [s for s in services
               if all(s["metadata"].get("labels", {}).get(k) == v for k, v in match.items())
               and any(p.get("name") == "metrics" for p in s["spec"]["ports"])]
    check(len(scraped) >= 2, "ServiceMonitor finds no metrics port on the API and relay Services")

for p in problems:
    print(f"k8s shape ({overlay}): {p}")
print(f"k8s shape ({overlay}): {'ok' if not problems else f'{len(problems)} problems'}")
sys.exit(1 if problems else 0)
