#!/usr/bin/env python3
"""Checks the rendered overlays for what the deployment must have, beyond schema validity.

Usage: check-k8s.py DEV_YAML PROD_YAML (output of `kubectl kustomize k8s/overlays/<name>`).
"""
import sys

import yaml

SERVICES = {"gateway", "router", "executor", "summarizer", "alerter"}
STATEFUL = {"router", "executor", "summarizer", "alerter"}


def load(path):
    return [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]


def check(docs, name, errors):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    err = lambda msg: errors.append(f"{name}: {msg}")  # noqa: E731
    for s in SERVICES:
        if s not in by_kind.get("Service", {}):
            err(f"no Service {s}")
    if "gateway" not in by_kind.get("Deployment", {}):
        err("gateway is not a Deployment")
    for s in STATEFUL:
        sts = by_kind.get("StatefulSet", {}).get(s)
        if not sts or not sts["spec"].get("volumeClaimTemplates"):
            err(f"{s} is not a StatefulSet with volumeClaimTemplates")
    hpa = by_kind.get("HorizontalPodAutoscaler", {}).get("gateway")
    if not hpa or hpa["spec"]["scaleTargetRef"]["name"] != "gateway":
        err("no HorizontalPodAutoscaler for the gateway")
    if "gateway" not in by_kind.get("PodDisruptionBudget", {}):
        err("no PodDisruptionBudget for the gateway")
    policies = by_kind.get("NetworkPolicy", {})
    deny = policies.get("default-deny")
    if not deny or deny["spec"]["podSelector"] or set(deny["spec"]["policyTypes"]) != {"Ingress", "Egress"}:
        err("no default-deny NetworkPolicy for ingress and egress")
    if "ConfigMap" not in by_kind:
        err("no ConfigMap")
    for secret in by_kind.get("Secret", {}).values():
        if secret.get("data") or secret.get("stringData"):
            err(f"Secret {secret['metadata']['name']} carries values: secrets must not be committed")
    workloads = list(by_kind.get("Deployment", {}).values()) + list(by_kind.get("StatefulSet", {}).values())
    for w in workloads:
        pod = w["spec"]["template"]["spec"]
        wname = w["metadata"]["name"]
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            err(f"{wname}: pod securityContext lacks runAsNonRoot or RuntimeDefault seccomp")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            if not (sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                    and sc.get("capabilities", {}).get("drop") == ["ALL"] and sc.get("runAsNonRoot") is True):
                err(f"{wname}/{c['name']}: securityContext not hardened")
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if "grpc" not in c.get(probe, {}):
                    err(f"{wname}/{c['name']}: {probe} is not a native gRPC probe")
            res = c.get("resources", {})
            if not res.get("requests") or not res.get("limits"):
                err(f"{wname}/{c['name']}: resources need requests and limits")
            if ":" not in c["image"] and "@" not in c["image"]:
                err(f"{wname}/{c['name']}: image {c['image']} has no tag")
            refs = [e["valueFrom"]["secretKeyRef"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
            if wname in {"gateway", "router", "executor"} and not refs:
                err(f"{wname}: expected its secret from a secretKeyRef")
    return by_kind


def summary(by_kind):
    env = next(iter(v for k, v in by_kind["ConfigMap"].items() if k.startswith("ghost-env")))
    gw = by_kind["Deployment"]["gateway"]["spec"]["template"]["spec"]["containers"][0]
    router = by_kind["StatefulSet"]["router"]["spec"]["template"]["spec"]["containers"][0]
    hpa = by_kind["HorizontalPodAutoscaler"]["gateway"]["spec"]
    return {
        "namespace": by_kind["Namespace"] and next(iter(by_kind["Namespace"])),
        "RUST_LOG": env["data"]["RUST_LOG"],
        "gateway image": gw["image"],
        "gateway replicas": (hpa["minReplicas"], hpa["maxReplicas"]),
        "router resources": router["resources"],
        "router storage": by_kind["StatefulSet"]["router"]["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
    }


def main():
    errors = []
    dev = check(load(sys.argv[1]), "dev", errors)
    prod = check(load(sys.argv[2]), "prod", errors)
    if not errors:
        d, p = summary(dev), summary(prod)
        for key in d:
            if d[key] == p[key]:
                errors.append(f"dev and prod do not differ in {key} ({d[key]})")
            else:
                print(f"  {key}: dev {d[key]}  |  prod {p[key]}")
    for e in errors:
        print(f"ERROR: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
