#!/usr/bin/env python3
"""Checks the rendered overlays for what the deployment must have, beyond schema validity:
workloads hardened, probes, resources, no committed secret values, and for executors outside
the cluster:
  - every service but the executor (which runs untrusted commands and needs none) reads the
    service credential from a file: the key `internal-token` of the
    Secret ghost-secrets mounted read-only (mode 0400, group-readable through the pod's fsGroup)
    and named by GHOST_<SVC>__SERVER__INTERNAL_TOKEN_FILE;
  - the router's executor port: executor_listen on 50443 in its TOML, TLS with the pair of the
    kubernetes.io/tls Secret router-executor-tls mounted where server.tls.cert/key point, a
    container port and a Service port `executors`, probes still on the plaintext 50051;
  - the Ingresses: the gateway's HTTPS (TLS at the controller, cert-manager annotation) and the
    executor port with TLS passthrough to router:executors;
  - the operations port: every service's TOML sets ops_listen to 0.0.0.0:9464, its container
    port `ops`, the probes are httpGet on `ops` (/healthz, readiness /readyz); the router,
    executor and summarizer have no other HTTP port;
  - the NetworkPolicies, evaluated: every connection they admit (in and out) is an arrow of the
    design, a scrape of `ops` from the monitoring namespace, DNS, span export, Slack, a public
    door, or the router's 50443 from anywhere; and every design arrow and every scrape is
    admitted.
Usage: check-k8s.py DEV_YAML PROD_YAML (output of `kubectl kustomize k8s/overlays/<name>`).
       check-k8s.py --ha HA_YAML: the ha overlay (issue 21): router, summarizer and alerter as
    Deployments of 2 replicas with no volume for their state, their store URL the file `url` of
    the Secret ghost-postgres (or ghost-postgres-app's `uri` with the cloudnative-pg component)
    named by GHOST_<SVC>__STORE__URL_FILE, a PodDisruptionBudget (minAvailable 1) and a
    preferred anti-affinity by hostname each, their pod spec otherwise the base StatefulSet's,
    egress to 5432 admitted, and every check above that does not concern StatefulSets.
"""
import copy
import json
import posixpath
import re
import sys
import tomllib

import yaml

SERVICES = {"gateway", "router", "executor", "summarizer", "alerter"}
STATEFUL = {"router", "executor", "summarizer", "alerter"}
GRPC = {"gateway": 50050, "router": 50051, "executor": 50052, "summarizer": 50053, "alerter": 50054}
# The public HTTP doors; the other services have no public HTTP routes.
HTTP = {"gateway": 8080, "alerter": 8084}
# /healthz, /readyz and /metrics of every service (server.ops_listen), container port `ops`.
OPS = 9464
EXECUTOR_PORT = 50443
# The arrows of the design diagram: who calls whose gRPC port.
ARROWS = {("gateway", "router"), ("gateway", "summarizer"), ("router", "summarizer"),
          ("router", "alerter"), ("executor", "router"), ("summarizer", "alerter"),
          ("alerter", "router"), ("alerter", "summarizer"), ("alerter", "gateway"),
          ("alerter", "executor"), ("gateway", "alerter")}
# Secrets that reach a service as a file of the ghost-secrets volume (`*_FILE`), not the env.
SECRET_FILES = {"gateway": ("GHOST_GATEWAY__API_KEY", "gateway-api-key"),
                "router": ("GHOST_ROUTER__EXECUTOR_TOKEN", "executor-token")}
# executor default_timeout (a patch's deadline) + drain_grace + drain_timeout, in seconds.
EXECUTOR_GRACE_S = 600 + 5 + 20
ANY = "anywhere"


def expected_ingress():
    """(app, protocol, port, source) that may be admitted; REQUIRED is the part that must be."""
    allowed = {(dst, "TCP", GRPC[dst], src) for src, dst in ARROWS}
    required = set(allowed)
    for app in SERVICES:
        allowed.add((app, "TCP", OPS, "ns:monitoring"))
        required.add((app, "TCP", OPS, "ns:monitoring"))
    # The public doors behind the Ingress controller (one policy for both pods and both ports),
    # from anywhere or narrowed to the controller's namespace in an overlay.
    for app in ("gateway", "alerter"):
        for port in (HTTP["gateway"], HTTP["alerter"]):
            allowed |= {(app, "TCP", port, ANY)}
    allowed.add(("router", "TCP", EXECUTOR_PORT, ANY))
    required.add(("router", "TCP", EXECUTOR_PORT, ANY))
    return allowed, required


# The services with a PostgreSQL store in the ha overlay, and its port.
STORED = ("router", "summarizer", "alerter")
POSTGRES_PORT = 5432


def expected_egress(ha=False):
    allowed = {(src, "TCP", GRPC[dst], dst) for src, dst in ARROWS}
    required = set(allowed)
    if ha:
        for app in STORED:
            allowed.add((app, "TCP", POSTGRES_PORT, ANY))
            required.add((app, "TCP", POSTGRES_PORT, ANY))
    for app in SERVICES:
        allowed |= {(app, "UDP", 53, "ns:kube-system"), (app, "TCP", 53, "ns:kube-system"),
                    (app, "TCP", 4317, "ns:observability")}
    allowed.add(("alerter", "TCP", 443, "internet"))
    return allowed, required


def selected_apps(selector):
    """The Ghost apps a podSelector picks (labels as the base sets them)."""
    if not selector:
        return set(SERVICES)
    apps = set(SERVICES)
    for key, value in (selector.get("matchLabels") or {}).items():
        if key == "app.kubernetes.io/name":
            apps &= {value}
        elif not (key == "app.kubernetes.io/part-of" and value == "ghost-runner"):
            apps = set()
    for expr in selector.get("matchExpressions") or []:
        if expr["key"] == "app.kubernetes.io/name" and expr["operator"] == "In":
            apps &= set(expr["values"])
        else:
            apps = set()
    return apps


def peers(rule_peers, public):
    """Names of what a rule's from/to admits: apps, ns:<name>, `internet`, or anywhere."""
    if not rule_peers:
        return {ANY}
    out = set()
    for peer in rule_peers:
        if "ipBlock" in peer:
            out.add("internet" if peer["ipBlock"].get("except") else ANY)
        elif "namespaceSelector" in peer:
            labels = peer["namespaceSelector"].get("matchLabels") or {}
            name = labels.get("kubernetes.io/metadata.name")
            # A controller's namespace narrows a public door: it counts as that door.
            out.add(ANY if public and name not in ("monitoring", "kube-system", "observability")
                    else f"ns:{name}" if name else ANY)
        else:
            out |= selected_apps(peer.get("podSelector"))
    return out


def admitted(policies, direction):
    key, peer_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    edges = set()
    for policy in policies.values():
        spec = policy["spec"]
        if direction not in spec.get("policyTypes", []):
            continue
        for app in selected_apps(spec.get("podSelector")):
            for rule in spec.get(key) or []:
                ports = [(p.get("protocol", "TCP"), p.get("port")) for p in rule.get("ports") or []]
                if not ports:
                    ports = [("ANY", "ANY")]
                for peer in peers(rule.get(peer_key), public=True):
                    for protocol, port in ports:
                        edges.add((app, protocol, port, peer))
    return edges


def check_network(policies, err, report, ha=False):
    for direction, (allowed, required) in (("Ingress", expected_ingress()), ("Egress", expected_egress(ha))):
        edges = admitted(policies, direction)
        report.append(f"{direction.lower()}: {len(edges)} connections admitted, "
                      f"{len(required & edges)}/{len(required)} design arrows; from anywhere: "
                      + ", ".join(sorted(f"{e[0]}:{e[2]}" for e in edges if e[3] == ANY)) if direction == "Ingress"
                      else f"{direction.lower()}: {len(edges)} connections admitted, "
                      f"{len(required & edges)}/{len(required)} design arrows")
        for edge in sorted(edges - allowed, key=str):
            err(f"NetworkPolicy admits {direction.lower()} {edge} (app, protocol, port, "
                f"{'from' if direction == 'Ingress' else 'to'}): not an arrow of the design")
        for edge in sorted(required - edges, key=str):
            err(f"NetworkPolicy does not admit the design's {direction.lower()} {edge}")


def secret_volume(pod, secret):
    return next((v for v in pod.get("volumes", []) if (v.get("secret") or {}).get("secretName") == secret), None)


def mount_of(container, volume):
    return next((m for m in container.get("volumeMounts", []) if m["name"] == volume["name"]), None)


def check_internal_token(w, err):
    name = w["metadata"]["name"]
    pod = w["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volume = secret_volume(pod, "ghost-secrets")
    items = {i["key"]: i["path"] for i in ((volume or {}).get("secret") or {}).get("items") or []}
    if not volume or "internal-token" not in items:
        err(f"{name}: the key internal-token of ghost-secrets is not mounted as a file")
        return
    if volume["secret"].get("defaultMode") != 0o400:
        err(f"{name}: the internal-token volume's defaultMode is not 0400")
    if (pod.get("securityContext") or {}).get("fsGroup") != 65532:
        err(f"{name}: no fsGroup 65532: the service (uid 65532) cannot read the 0400 secret file")
    mount = mount_of(container, volume)
    if not mount or not mount.get("readOnly"):
        err(f"{name}: the internal-token volume is not mounted read-only")
        return
    path = posixpath.join(mount["mountPath"], items["internal-token"])
    var = f"GHOST_{name.upper()}__SERVER__INTERNAL_TOKEN_FILE"
    value = next((e.get("value") for e in container.get("env", []) if e["name"] == var), None)
    if value != path:
        err(f"{name}: {var} is {value!r}, not the mounted file {path}")


def check_router(by_kind, err):
    config = next((v for k, v in by_kind.get("ConfigMap", {}).items() if k.startswith("ghost-config")), None)
    router_toml = tomllib.loads((config or {}).get("data", {}).get("router.toml", ""))
    if router_toml.get("executor_listen") != f"0.0.0.0:{EXECUTOR_PORT}":
        err(f"router.toml: executor_listen is {router_toml.get('executor_listen')!r}, not 0.0.0.0:{EXECUTOR_PORT}")
    tls = router_toml.get("server", {}).get("tls", {})
    if tls.get("grpc") is not False or tls.get("http") is not False:
        err("router.toml: server.tls.grpc/http must be false (the alerter dials gRPC health in "
            "plaintext; the probes and Prometheus read the ops port in plaintext)")
    sts = by_kind.get("StatefulSet", {}).get("router") or by_kind.get("Deployment", {}).get("router")
    if not sts:
        return
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volume = secret_volume(pod, "router-executor-tls")
    mount = volume and mount_of(container, volume)
    if not mount:
        err("router: the Secret router-executor-tls is not mounted")
    else:
        for field, file in (("cert", "tls.crt"), ("key", "tls.key")):
            want = posixpath.join(mount["mountPath"], file)
            if tls.get(field) != want:
                err(f"router.toml: server.tls.{field} is {tls.get(field)!r}, not {want} (router-executor-tls)")
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if ports.get("executors") != EXECUTOR_PORT:
        err(f"router: no container port executors={EXECUTOR_PORT}")
    service = by_kind.get("Service", {}).get("router", {})
    sports = {p.get("name"): p for p in service.get("spec", {}).get("ports", [])}
    if (sports.get("executors") or {}).get("port") != EXECUTOR_PORT:
        err(f"Service router: no port executors={EXECUTOR_PORT}")


def check_ops(by_kind, err):
    """The operations port of every service: its TOML, its container port, its probes."""
    config = next((v for k, v in by_kind.get("ConfigMap", {}).items() if k.startswith("ghost-config")), None)
    data = (config or {}).get("data", {})
    workloads = {**by_kind.get("Deployment", {}), **by_kind.get("StatefulSet", {})}
    for app in sorted(SERVICES):
        server = tomllib.loads(data.get(f"{app}.toml", "")).get("server", {})
        if server.get("ops_listen") != f"0.0.0.0:{OPS}":
            err(f"{app}.toml: server.ops_listen is {server.get('ops_listen')!r}, not 0.0.0.0:{OPS}")
        if app in HTTP and server.get("http_listen") != f"0.0.0.0:{HTTP[app]}":
            err(f"{app}.toml: server.http_listen is {server.get('http_listen')!r}, not 0.0.0.0:{HTTP[app]}")
        w = workloads.get(app)
        if not w:
            continue
        container = w["spec"]["template"]["spec"]["containers"][0]
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        if ports.get("ops") != OPS:
            err(f"{app}: no container port ops={OPS}")
        expected = {"grpc", "ops"} | ({"http"} if app in HTTP else set()) | ({"executors"} if app == "router" else set())
        if set(ports) != expected:
            err(f"{app}: container ports {sorted(ports)}, expected {sorted(expected)}")
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = container.get(probe, {}).get("httpGet", {})
            if get.get("port") != "ops" or get.get("path") != path:
                err(f"{app}: {probe} is not httpGet {path} on port ops")
        annotations = w["spec"]["template"]["metadata"].get("annotations") or {}
        if annotations.get("prometheus.io/port") not in (None, str(OPS)):
            err(f"{app}: prometheus.io/port is {annotations.get('prometheus.io/port')}, not the ops port {OPS}")
        service = by_kind.get("Service", {}).get(app, {})
        for sport in service.get("spec", {}).get("ports", []):
            if sport.get("name") in ("http", "ops") and app not in HTTP:
                err(f"Service {app}: exposes its {sport['name']} port (no public HTTP routes; ops is for Prometheus only)")


def backends(ingress):
    return {(r.get("host"), p["backend"]["service"]["name"], tuple(p["backend"]["service"]["port"].items())[0][1])
            for r in ingress["spec"].get("rules", []) for p in r.get("http", {}).get("paths", [])}


def check_ingress(by_kind, err):
    ingresses = by_kind.get("Ingress", {})
    gateway = [i for i in ingresses.values() if any(b[1] == "gateway" for b in backends(i))]
    if not gateway:
        err("no Ingress for the gateway")
    for ing in gateway:
        ann = ing["metadata"].get("annotations") or {}
        if not ing["spec"].get("tls"):
            err(f"Ingress {ing['metadata']['name']}: the gateway is not served over HTTPS (no tls)")
        if not ann.get("cert-manager.io/cluster-issuer") and not ann.get("cert-manager.io/issuer"):
            err(f"Ingress {ing['metadata']['name']}: no cert-manager issuer annotation")
    executors = [i for i in ingresses.values()
                 if any(b[1] == "router" and b[2] in ("executors", EXECUTOR_PORT) for b in backends(i))]
    if not executors:
        err("no Ingress for the router's executor port")
    for ing in executors:
        ann = ing["metadata"].get("annotations") or {}
        if ann.get("nginx.ingress.kubernetes.io/ssl-passthrough") != "true":
            err(f"Ingress {ing['metadata']['name']}: the executor port needs TLS passthrough")
    for ing in ingresses.values():
        for _, service, port in backends(ing):
            if (service, port) not in {("gateway", "http"), ("alerter", "http"), ("router", "executors")}:
                err(f"Ingress {ing['metadata']['name']}: exposes {service}:{port}, not a public door")


def load(path):
    return [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]


def check(docs, name, errors, ha=False):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    err = lambda msg: errors.append(f"{name}: {msg}")  # noqa: E731
    for s in SERVICES:
        if s not in by_kind.get("Service", {}):
            err(f"no Service {s}")
    if "gateway" not in by_kind.get("Deployment", {}):
        err("gateway is not a Deployment")
    for s in STATEFUL - (set(STORED) if ha else set()):
        sts = by_kind.get("StatefulSet", {}).get(s)
        if not sts or not sts["spec"].get("volumeClaimTemplates"):
            err(f"{s} is not a StatefulSet with volumeClaimTemplates")
    report = []
    check_network(policies := by_kind.get("NetworkPolicy", {}), err, report, ha)
    if name in ("prod", "ha"):
        for line in report:
            print(f"  network {line}")
    check_router(by_kind, err)
    check_ops(by_kind, err)
    check_ingress(by_kind, err)
    hpa = by_kind.get("HorizontalPodAutoscaler", {}).get("gateway")
    if not hpa or hpa["spec"]["scaleTargetRef"]["name"] != "gateway":
        err("no HorizontalPodAutoscaler for the gateway")
    if "gateway" not in by_kind.get("PodDisruptionBudget", {}):
        err("no PodDisruptionBudget for the gateway")
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
                if "httpGet" not in c.get(probe, {}):
                    err(f"{wname}/{c['name']}: {probe} is not an httpGet probe on the ops port")
            res = c.get("resources", {})
            if not res.get("requests") or not res.get("limits"):
                err(f"{wname}/{c['name']}: resources need requests and limits")
            if ":" not in c["image"] and "@" not in c["image"]:
                err(f"{wname}/{c['name']}: image {c['image']} has no tag")
            refs = [e["valueFrom"]["secretKeyRef"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
            if wname == "executor" and not refs:
                # Its commands get a cleared environment; a file would be readable by them.
                err(f"{wname}: expected its token from a secretKeyRef")
            if wname in SECRET_FILES:
                var, key = SECRET_FILES[wname]
                values = {e["name"]: e.get("value") for e in c.get("env", [])}
                if var in values:
                    err(f"{wname}: {var} is in the environment: read it from the Secret volume ({var}_FILE)")
                vol = secret_volume(w["spec"]["template"]["spec"], "ghost-secrets") or {}
                items = {i.get("key"): i.get("path") for i in (vol.get("secret", {}).get("items") or [])}
                mount = next((m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] == vol.get("name")), None)
                if items.get(key) != key or not mount or values.get(f"{var}_FILE") != f"{mount}/{key}":
                    err(f"{wname}: {var}_FILE must name {key} of the mounted ghost-secrets volume")
        if wname == "executor":
            grace = w["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
            if grace < EXECUTOR_GRACE_S:
                err(f"executor: terminationGracePeriodSeconds {grace} does not cover a patch's deadline and the drain ({EXECUTOR_GRACE_S})")
        if wname == "executor":
            # It runs untrusted commands: no service credential may be mounted or named there.
            pod = w["spec"]["template"]["spec"]
            env = [e["name"] for c in pod["containers"] for e in c.get("env", [])]
            if secret_volume(pod, "ghost-secrets") or "GHOST_EXECUTOR__SERVER__INTERNAL_TOKEN_FILE" in env:
                err("executor: holds the service credential (it runs untrusted commands; it needs none)")
        elif wname in SERVICES:
            check_internal_token(w, err)
    return by_kind


def base_pod(app):
    """The pod spec of the base's StatefulSet `app` (k8s/base/<app>.yaml)."""
    path = posixpath.join(posixpath.dirname(posixpath.abspath(__file__)), "..", "k8s", "base", f"{app}.yaml")
    sts = next(d for d in load(path) if d["kind"] == "StatefulSet")
    return sts["spec"]["template"]["spec"]


def check_stored_deployment(by_kind, app, err):
    """One of the ha overlay's Deployments against what it must be."""
    dep = by_kind.get("Deployment", {}).get(app)
    if not dep:
        err(f"{app} is not a Deployment")
        return
    if app in by_kind.get("StatefulSet", {}):
        err(f"{app}: the base's StatefulSet is still there beside the Deployment")
    if dep["spec"].get("replicas", 1) < 2:
        err(f"{app}: {dep['spec'].get('replicas', 1)} replica(s), expected 2 or more")
    pod = copy.deepcopy(dep["spec"]["template"]["spec"])
    container = pod["containers"][0]
    if any("persistentVolumeClaim" in v for v in pod.get("volumes", [])):
        err(f"{app}: mounts a PersistentVolumeClaim (its state is in PostgreSQL)")
    # The store URL: a file of a mounted Secret, named by GHOST_<SVC>__STORE__URL_FILE.
    var = f"GHOST_{app.upper()}__STORE__URL_FILE"
    value = next((e.get("value") for e in container.get("env", []) if e["name"] == var), None)
    volume = next((v for v in pod.get("volumes", []) if v.get("name") == "postgres-url"), None)
    secret = (volume or {}).get("secret") or {}
    items = {i["key"]: i["path"] for i in secret.get("items") or []}
    mount = volume and mount_of(container, volume)
    wanted = {("ghost-postgres", "url"), ("ghost-postgres-app", "uri")}
    key = next((k for n, k in wanted if secret.get("secretName") == n and k in items), None)
    if not key or secret.get("defaultMode") != 0o400 or not mount or not mount.get("readOnly"):
        err(f"{app}: no read-only 0400 volume postgres-url of the Secret ghost-postgres (key url) "
            "or ghost-postgres-app (key uri)")
    elif value != posixpath.join(mount["mountPath"], items[key]):
        err(f"{app}: {var} is {value!r}, not the mounted store URL file")
    if any("STORE__URL" in e["name"] and not e["name"].endswith("_FILE") for e in container.get("env", [])):
        err(f"{app}: the store URL is in the environment: read it from the Secret volume")
    terms = (((pod.get("affinity") or {}).get("podAntiAffinity") or {})
             .get("preferredDuringSchedulingIgnoredDuringExecution") or [])
    if not any(t["podAffinityTerm"].get("topologyKey") == "kubernetes.io/hostname"
               and (t["podAffinityTerm"].get("labelSelector") or {}).get("matchLabels") == {"app.kubernetes.io/name": app}
               for t in terms):
        err(f"{app}: no preferred pod anti-affinity by kubernetes.io/hostname on its own pods")
    pdb = next((p for p in by_kind.get("PodDisruptionBudget", {}).values()
                if p["spec"]["selector"].get("matchLabels") == {"app.kubernetes.io/name": app}), None)
    if not pdb or pdb["spec"].get("minAvailable") != 1:
        err(f"{app}: no PodDisruptionBudget with minAvailable 1")
    # Otherwise the base's pod: the overlay's copy must not drift from it.
    pod.pop("affinity", None)
    container["env"] = [e for e in container.get("env", []) if e["name"] != var]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "postgres-url"]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] not in ("postgres-url", "data")]
    base = copy.deepcopy(base_pod(app))
    for c in (container, base["containers"][0]):
        c.pop("image", None)
    # kustomize names the generated ConfigMaps with a hash suffix.
    unhashed = re.sub(r'"(ghost-(?:config|env))-[a-z0-9]{10}"', r'"\1"', json.dumps(pod, sort_keys=True))
    if json.loads(unhashed) != base:
        err(f"{app}: its pod spec differs from k8s/base/{app}.yaml's StatefulSet beyond the store "
            "URL, the anti-affinity and the data volume: keep k8s/overlays/ha in step")


def check_ha(docs, errors):
    by_kind = check(docs, "ha", errors, ha=True)
    err = lambda msg: errors.append(f"ha: {msg}")  # noqa: E731
    for app in STORED:
        check_stored_deployment(by_kind, app, err)
    executor = by_kind.get("StatefulSet", {}).get("executor")
    if not executor or executor["spec"].get("replicas", 1) != 1:
        err("the executor is not the base's single-replica StatefulSet")
    kinds = sorted({d["kind"] for d in docs})
    print(f"  ha: {len(docs)} objects ({', '.join(kinds)}); "
          + ", ".join(f"{a} x{by_kind['Deployment'][a]['spec']['replicas']}" for a in STORED
                      if a in by_kind.get("Deployment", {})))


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


def check_gateway_config(docs, name, errors):
    """The gateway's TOML in the ghost-config ConfigMap: alerter_url (the alerts page); in prod
    an https public_url (Secure cookie) and scoped client keys beside the Secret's admin key."""
    import tomllib
    cm = next((d for d in docs if d and d.get("kind") == "ConfigMap"
               and d["metadata"]["name"].startswith("ghost-config")), None)
    if not cm or "gateway.toml" not in (cm.get("data") or {}):
        errors.append(f"{name}: no gateway.toml in the ghost-config ConfigMap")
        return
    config = tomllib.loads(cm["data"]["gateway.toml"])
    if config.get("alerter_url") != "http://alerter:50054":
        errors.append(f"{name}: gateway alerter_url is {config.get('alerter_url')!r}, not http://alerter:50054")
    if name == "prod":
        if not str(config.get("public_url", "")).startswith("https://"):
            errors.append("prod: gateway public_url is not https:// (no Secure session cookie)")
        keys = config.get("api_keys") or []
        if not keys or any("admin" in k.get("scopes", []) for k in keys):
            errors.append("prod: gateway needs scoped api_keys (no admin scope) for its clients")


def main():
    errors = []
    if sys.argv[1] == "--ha":
        check_ha(load(sys.argv[2]), errors)
        for e in errors:
            print(f"ERROR: {e}")
        return 1 if errors else 0
    dev_docs, prod_docs = load(sys.argv[1]), load(sys.argv[2])
    check_gateway_config(dev_docs, "dev", errors)
    check_gateway_config(prod_docs, "prod", errors)
    dev = check(dev_docs, "dev", errors)
    prod = check(prod_docs, "prod", errors)
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
