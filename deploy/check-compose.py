#!/usr/bin/env python3
"""Checks the rendered docker-compose.yml (`docker-compose config` output) for the stack's rules:
pinned image tags, every port bound to 127.0.0.1, a healthcheck on every Ghost service, start
order through `condition: service_healthy`, volumes for state, the observability stack behind a
profile, hardened containers; and the TLS setup with no manual step: the one-shot `tls-init`
(`ghost tls init` into the `tls` volume, a certificate naming every service) runs before every
Ghost service, every one of them reads the service credential from /tls/internal-token, the
router's executor port 50443 serves TLS with the tls-init pair, the executor dials it as
https:// trusting /tls/ca.pem, and no port is published beyond the public HTTP ports (gateway,
alerter) and that executor port; every service serves /healthz, /readyz and /metrics on its
operations port 9464 (never published), which deploy/prometheus/prometheus.yml scrapes. Limits and lifecycle: every Ghost service runs with `init: true`, a
`pids_limit` and a `mem_limit`; the executor's stop_grace_period covers a patch's default
deadline (it drains: finishes running patches, takes no new one). Secrets: the API key and
the executor token reach the services only as compose secrets (`*_FILE` under /run/secrets),
never as environment values; the gateway has `alerter_url`; Grafana takes its admin password
from a secret and has no anonymous viewers. With the `postgres` profile's override
(deploy/compose/postgres.yml, issue 21), when the render has a `postgres` service: it sits
behind that profile, runs the locally built image hardened (read-only, no capabilities, init,
limits), has a `pg_isready` healthcheck, keeps its data in a volume and publishes no port; the
router, summarizer and alerter wait for it healthy and read the store URL from the compose
secret ghost_postgres_url (GHOST_<SVC>__STORE__URL_FILE), and no postgres:// URL is in any
environment. Usage: check-compose.py RENDERED_YAML
"""
import re
import sys
from pathlib import Path

import yaml

GHOST = ["gateway", "router", "executor", "summarizer", "alerter"]
OBSERVABILITY = ["jaeger", "prometheus", "grafana"]
STATE = {"router": "/data", "summarizer": "/data", "alerter": "/data", "executor": "/state"}
TLS_INIT = "tls-init"
TOKEN_FILE = "/tls/internal-token"
EXECUTOR_PORT = 50443
# Container ports published on the host: the public doors (the gateway's HTTP, the alerter's
# Slack endpoints), plus the router's executor port (TLS) for executors on this host. Anything
# else would open an internal listener; the operations port never is.
PUBLISHED = {"gateway": {8080}, "router": {EXECUTOR_PORT}, "executor": set(),
             "summarizer": set(), "alerter": {8084}}
# /healthz, /readyz and /metrics of every service (server.ops_listen), scraped by Prometheus on
# the compose network.
OPS = 9464
PROMETHEUS_YML = Path(__file__).resolve().parent / "prometheus" / "prometheus.yml"


def check_ops(services, errors):
    """Every service serves its operations routes on OPS, which Prometheus scrapes."""
    for name in GHOST:
        env = (services.get(name) or {}).get("environment") or {}
        key = f"GHOST_{name.upper()}__SERVER__OPS_LISTEN"
        if env.get(key) != f"0.0.0.0:{OPS}":
            errors.append(f"{name}: {key} is {env.get(key)!r}, not 0.0.0.0:{OPS}")
    config = yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8"))
    job = next((j for j in config.get("scrape_configs", []) if j.get("job_name") == "ghost"), {})
    targets = {t for sc in job.get("static_configs", []) for t in sc.get("targets", [])}
    expected = {f"{name}:{OPS}" for name in GHOST}
    if targets != expected:
        errors.append(f"{PROMETHEUS_YML.name}: job ghost scrapes {sorted(targets)}, expected {sorted(expected)}")


def volumes(svc):
    """{target: (source, read_only)} of a rendered service (1.x strings or v2 dicts)."""
    out = {}
    for v in svc.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            out[parts[1]] = (parts[0], len(parts) > 2 and "ro" in parts[2].split(","))
        else:
            out[v.get("target")] = (v.get("source"), bool(v.get("read_only")))
    return out


def container_ports(svc):
    ports = set()
    for port in svc.get("ports", []):
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            ports.add(int(str(port).split(":")[-1].split("/")[0]))
    return ports


def check_tls(services, errors):
    init = services.get(TLS_INIT)
    if not init:
        errors.append(f"service {TLS_INIT} missing (ghost tls init into the tls volume)")
        return
    if not init.get("image", "").startswith("ghost-runner/ghost:"):
        errors.append(f"{TLS_INIT}: image {init.get('image')!r} is not ghost-runner/ghost")
    command = init.get("command") or []
    if command[:4] != ["tls", "init", "--dir", "/tls"]:
        errors.append(f"{TLS_INIT}: command {command} is not `tls init --dir /tls ...`")
    names = {command[i + 1] for i, arg in enumerate(command[:-1]) if arg == "--name"}
    if not set(GHOST) <= names:
        errors.append(f"{TLS_INIT}: the certificate misses the names {sorted(set(GHOST) - names)}")
    if volumes(init).get("/tls") != ("tls", False):
        errors.append(f"{TLS_INIT}: the tls volume is not mounted writable at /tls")
    if str(init.get("restart", "no")) != "no":
        errors.append(f"{TLS_INIT}: a one-shot must not restart (restart: {init.get('restart')})")
    if str(init.get("user", "")) != "65532:65532":
        errors.append(f"{TLS_INIT}: must run as 65532:65532 (the services read its files as that user)")
    if init.get("profiles"):
        errors.append(f"{TLS_INIT}: must not sit behind a profile")
    init_volumes = volumes(init)
    if init_volumes.get("/tls-ca") != ("tls-ca", False) or init_volumes.get("/tls-public") != ("tls-public", False):
        errors.append(f"{TLS_INIT}: tls-ca and tls-public are not mounted writable at /tls-ca and /tls-public")
    if "--ca-key-dir" not in command or "--export-ca" not in command:
        errors.append(f"{TLS_INIT}: the CA key must go to its own volume (--ca-key-dir) and ca.pem be exported (--export-ca)")
    for name, svc in services.items():
        if name != TLS_INIT and any(source == "tls-ca" for source, _ in volumes(svc).values()):
            errors.append(f"{name}: mounts tls-ca (the CA key): only {TLS_INIT} may")
    for name in GHOST:
        svc = services.get(name, {})
        env = svc.get("environment") or {}
        key = f"GHOST_{name.upper()}__SERVER__INTERNAL_TOKEN_FILE"
        if name == "executor":
            # It runs untrusted commands: no credential, no keys, the CA certificate alone.
            if key in env:
                errors.append(f"executor: {key} is set: the executor must not hold the service credential")
            if volumes(svc).get("/tls") != ("tls-public", True):
                errors.append("executor: must mount tls-public (ca.pem alone) read-only at /tls, not the tls volume")
        else:
            if env.get(key) != TOKEN_FILE:
                errors.append(f"{name}: {key} is {env.get(key)!r}, not {TOKEN_FILE}")
            if volumes(svc).get("/tls") != ("tls", True):
                errors.append(f"{name}: the tls volume is not mounted read-only at /tls")
        cond = ((svc.get("depends_on") or {}).get(TLS_INIT) or {}).get("condition")
        if cond != "service_completed_successfully":
            errors.append(f"{name}: does not wait for {TLS_INIT} (condition service_completed_successfully)")
        published = container_ports(svc)
        if published != PUBLISHED[name]:
            errors.append(f"{name}: publishes container ports {sorted(published)}, expected {sorted(PUBLISHED[name])}")
    router = (services.get("router") or {}).get("environment") or {}
    expect = {
        "GHOST_ROUTER__EXECUTOR_LISTEN": f"0.0.0.0:{EXECUTOR_PORT}",
        "GHOST_ROUTER__SERVER__TLS__CERT": "/tls/server.pem",
        "GHOST_ROUTER__SERVER__TLS__KEY": "/tls/server-key.pem",
    }
    for key, value in expect.items():
        if router.get(key) != value:
            errors.append(f"router: {key} is {router.get(key)!r}, expected {value}")
    executor = (services.get("executor") or {}).get("environment") or {}
    if executor.get("GHOST_EXECUTOR__ROUTER_URL") != f"https://router:{EXECUTOR_PORT}":
        errors.append(f"executor: GHOST_EXECUTOR__ROUTER_URL is {executor.get('GHOST_EXECUTOR__ROUTER_URL')!r}, "
                      f"expected https://router:{EXECUTOR_PORT} (the TLS executor port)")
    if executor.get("GHOST_EXECUTOR__ROUTER_CA") != "/tls/ca.pem":
        errors.append("executor: GHOST_EXECUTOR__ROUTER_CA is not /tls/ca.pem (the tls-init CA)")


# Secret env vars -> the compose secret their *_FILE variant must name.
SECRETS = {"gateway": {"GHOST_GATEWAY__API_KEY": "ghost_api_key"},
           "router": {"GHOST_ROUTER__EXECUTOR_TOKEN": "ghost_executor_token"},
           "executor": {"GHOST_EXECUTOR__TOKEN": "ghost_executor_token"}}
# executor default_timeout (a patch's deadline without timeout_s) plus the drain.
EXECUTOR_GRACE_S = 600 + 25


def seconds(text):
    total = 0
    for amount, unit in re.findall(r"(\d+)(h|ms|m|s|us)", str(text)):
        total += int(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 0.000001}[unit]
    return total


def secret_names(svc):
    return {s if isinstance(s, str) else s.get("source") for s in svc.get("secrets") or []}


def check_limits_and_secrets(doc, errors):
    services = doc["services"]
    for name in GHOST:
        svc = services.get(name, {})
        if svc.get("init") is not True:
            errors.append(f"{name}: no `init: true` (a PID 1 that reaps children)")
        if not isinstance(svc.get("pids_limit"), int) or svc["pids_limit"] <= 0:
            errors.append(f"{name}: no pids_limit")
        if not svc.get("mem_limit"):
            errors.append(f"{name}: no mem_limit")
        env = svc.get("environment") or {}
        for key, value in env.items():
            if re.search(r"(API_KEY|TOKEN|SECRET|PASSWORD)$", key) and value not in (None, ""):
                if not key.startswith("GHOST_ALERTER__SLACK__"):
                    errors.append(f"{name}: {key} is a secret in the environment (docker inspect shows it): use {key}_FILE and a compose secret")
        for key, secret in SECRETS.get(name, {}).items():
            if env.get(f"{key}_FILE") != f"/run/secrets/{secret}" or secret not in secret_names(svc):
                errors.append(f"{name}: {key}_FILE must be /run/secrets/{secret} with the compose secret {secret}")
    for secret, spec in (doc.get("secrets") or {}).items():
        if not (spec or {}).get("file"):
            errors.append(f"secret {secret}: not from a file")
    grace = seconds(services.get("executor", {}).get("stop_grace_period", "10s"))
    if grace < EXECUTOR_GRACE_S:
        errors.append(f"executor: stop_grace_period {grace}s does not cover a patch's deadline and the drain ({EXECUTOR_GRACE_S}s)")
    if (services.get("gateway", {}).get("environment") or {}).get("GHOST_GATEWAY__ALERTER_URL") != "http://alerter:50054":
        errors.append("gateway: GHOST_GATEWAY__ALERTER_URL is not http://alerter:50054 (the alerts page answers 503 without it)")
    grafana = services.get("grafana", {})
    genv = grafana.get("environment") or {}
    if str(genv.get("GF_AUTH_ANONYMOUS_ENABLED", "")).lower() != "false":
        errors.append("grafana: anonymous access is not disabled")
    if genv.get("GF_SECURITY_ADMIN_PASSWORD") is not None or \
            genv.get("GF_SECURITY_ADMIN_PASSWORD__FILE") != "/run/secrets/grafana_admin_password" or \
            "grafana_admin_password" not in secret_names(grafana):
        errors.append("grafana: the admin password must come from the secret grafana_admin_password (GF_SECURITY_ADMIN_PASSWORD__FILE)")


STORED = ["router", "summarizer", "alerter"]
POSTGRES_SECRET = "ghost_postgres_url"
POSTGRES_DATA = "/var/lib/postgresql/data"


def check_postgres(services, doc, errors):
    """The `postgres` profile: its service and the three services pointed at it."""
    pg = services["postgres"]
    if pg.get("profiles") != ["postgres"]:
        errors.append("postgres: not behind the postgres profile")
    if not pg.get("build") or not str(pg.get("image", "")).startswith("ghost-runner/postgres:"):
        errors.append("postgres: not the locally built ghost-runner/postgres image")
    if (pg.get("healthcheck", {}).get("test") or [None])[1:2] != ["pg_isready"]:
        errors.append("postgres: the healthcheck is not pg_isready")
    if not (pg.get("read_only") and "ALL" in (pg.get("cap_drop") or []) and pg.get("init")
            and pg.get("pids_limit") and pg.get("mem_limit")):
        errors.append("postgres: not read-only, capabilities dropped, init, pids and memory limits")
    if pg.get("ports"):
        errors.append(f"postgres: publishes {pg['ports']}: the services reach it on the compose network")
    if POSTGRES_DATA not in volumes(pg):
        errors.append(f"postgres: no volume at {POSTGRES_DATA}")
    file = ((doc.get("secrets") or {}).get(POSTGRES_SECRET) or {}).get("file")
    if not file:
        errors.append(f"secret {POSTGRES_SECRET} is not a file")
    for name in ["postgres"] + STORED:
        svc = services.get(name, {})
        if POSTGRES_SECRET not in secret_names(svc):
            errors.append(f"{name}: does not mount the secret {POSTGRES_SECRET}")
        for key, value in (svc.get("environment") or {}).items():
            if "postgres://" in str(value) or "postgresql://" in str(value):
                errors.append(f"{name}: {key} holds a PostgreSQL URL in the environment: use the secret")
    for name in STORED:
        svc = services.get(name, {})
        key = f"GHOST_{name.upper()}__STORE__URL_FILE"
        if (svc.get("environment") or {}).get(key) != f"/run/secrets/{POSTGRES_SECRET}":
            errors.append(f"{name}: {key} does not name /run/secrets/{POSTGRES_SECRET}")
        if ((svc.get("depends_on") or {}).get("postgres") or {}).get("condition") != "service_healthy":
            errors.append(f"{name}: does not wait for a healthy postgres")


def main():
    doc = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
    services = doc["services"]
    errors = []
    for name in GHOST + OBSERVABILITY + [TLS_INIT]:
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
            if dep != TLS_INIT and cond.get("condition") != "service_healthy":
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
    check_tls(services, errors)
    check_ops(services, errors)
    check_limits_and_secrets(doc, errors)
    if "postgres" in services:
        check_postgres(services, doc, errors)
    for e in errors:
        print(f"ERROR: {e}")
    if not errors:
        print(f"  {len(services)} services: images pinned, ports on 127.0.0.1, healthchecks and "
              "healthy-start order, state volumes, observability behind a profile")
        print(f"  {TLS_INIT} first; all {len(GHOST)} read {TOKEN_FILE}; router TLS executor port "
              f"{EXECUTOR_PORT} the only published port beyond the public HTTP ports; operations "
              f"port {OPS} unpublished and scraped by Prometheus")
        print("  init, pids and memory limits; secrets as files; executor grace covers a patch; "
              "gateway -> alerter; Grafana behind a password")
        if "postgres" in services:
            print(f"  postgres profile: pg_isready, data volume, no port; {', '.join(STORED)} read "
                  f"the store URL from the secret {POSTGRES_SECRET}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
