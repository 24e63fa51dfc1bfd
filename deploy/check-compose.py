#!/usr/bin/env python3
"""Checks the rendered docker-compose.yml (`docker-compose config` output) for the stack's rules:
pinned image tags, every port bound to 127.0.0.1, a healthcheck on every Ghost service, start
order through `condition: service_healthy`, volumes for state, the observability stack behind a
profile, hardened containers. Usage: check-compose.py RENDERED_YAML
"""
import sys

import yaml

GHOST = ["gateway", "router", "executor", "summarizer", "alerter"]
OBSERVABILITY = ["jaeger", "prometheus", "grafana"]
STATE = {"router": "/data", "summarizer": "/data", "alerter": "/data", "executor": "/state"}


def main():
    doc = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
    services = doc["services"]
    errors = []
    for name in GHOST + OBSERVABILITY:
        if name not in services:
            errors.append(f"service {name} missing")
    for name, svc in services.items():
        image = svc.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        if not tag or tag == "latest":
            errors.append(f"{name}: image {image!r} is not pinned to a tag")
        for port in svc.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            if host_ip != "127.0.0.1":
                errors.append(f"{name}: port {port} is not bound to 127.0.0.1")
    for name in GHOST:
        svc = services.get(name, {})
        if (svc.get("healthcheck", {}).get("test") or [])[1:] != ["/usr/local/bin/ghost-service", "--healthcheck"]:
            errors.append(f"{name}: the healthcheck is not `ghost-service --healthcheck`")
        if not (svc.get("read_only") and "ALL" in (svc.get("cap_drop") or [])):
            errors.append(f"{name}: not read-only with all capabilities dropped")
        if svc.get("profiles"):
            errors.append(f"{name}: core services must not sit behind a profile")
        for dep, cond in (svc.get("depends_on") or {}).items():
            if cond.get("condition") != "service_healthy":
                errors.append(f"{name}: depends on {dep} without condition service_healthy")
        if name in STATE:
            targets = [v.split(":")[1] if isinstance(v, str) else v.get("target")
                       for v in svc.get("volumes", [])]
            if STATE[name] not in targets:
                errors.append(f"{name}: no volume at {STATE[name]}")
    for name in ["gateway", "executor"]:
        if "router" not in (services.get(name, {}).get("depends_on") or {}):
            errors.append(f"{name}: must wait for a healthy router")
    for name in OBSERVABILITY:
        if services.get(name, {}).get("profiles") != ["observability"]:
            errors.append(f"{name}: not behind the observability profile")
    for e in errors:
        print(f"ERROR: {e}")
    if not errors:
        print(f"  {len(services)} services: images pinned, ports on 127.0.0.1, healthchecks and "
              "healthy-start order, state volumes, observability behind a profile")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
