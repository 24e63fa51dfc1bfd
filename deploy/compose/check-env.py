#!/usr/bin/env python3
"""Checks that the deployment configs load in the real service binaries.

Every service rejects unknown config keys at start, so a typo in docker-compose.yml's
environment or in a k8s/base/config/*.toml would only show when the container starts. This runs
each binary with `--print-config` (which loads and validates the config, then exits) on:
  - the environment docker-compose gives it (from `docker-compose config` output, path of the
    executor's mounted file mapped back into the repo),
  - the TOML file the Kubernetes base mounts (GHOST_CONFIG=k8s/base/config/<svc>.toml) with the
    literal environment of its container and the ghost-env ConfigMap (from a rendered overlay,
    when one is given: e.g. GHOST_<SVC>__SERVER__INTERNAL_TOKEN_FILE);
compose secrets (`/run/secrets/NAME`, `*_FILE`) are given as scratch files holding a generated
value; the gateway must refuse to start with .env.example-style placeholder keys, naming the
variable (as a value and as a file); and it runs compose's one-shot `tls-init` command in the real `ghost` binary into a scratch
directory: it must write the CA, the server certificate (naming every service the executor or a
peer dials), its key (0600) and the service credential (64 hex characters, 0600).
Usage: check-env.py RENDERED_COMPOSE_YAML BIN_DIR [RENDERED_K8S_YAML]
"""
import re
import secrets
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["gateway", "router", "executor", "summarizer", "alerter"]


def run(binary: Path, env: dict[str, str], what: str) -> bool:
    env = {**env, "PATH": "/usr/local/bin:/usr/bin:/bin"}
    result = subprocess.run([str(binary), "--print-config"], env=env, capture_output=True,
                            text=True, timeout=60)
    if result.returncode == 0:
        print(f"check-env: ok {what}")
        return True
    first = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[0]
    print(f"check-env: FAIL {what}: {first}")
    return False


def k8s_env(rendered: Path) -> dict[str, dict[str, str]]:
    """Literal environment of each service's container (ghost-env first, then `env` values)."""
    docs = [d for d in yaml.safe_load_all(rendered.read_text(encoding="utf-8")) if d]
    shared = next((d.get("data") or {} for d in docs
                   if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("ghost-env")), {})
    out = {}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] in SERVICES:
            container = d["spec"]["template"]["spec"]["containers"][0]
            out[d["metadata"]["name"]] = {**shared, **{e["name"]: str(e["value"])
                                                       for e in container.get("env", []) if "value" in e}}
    return out


def tls_init(ghost: Path, compose: dict) -> bool:
    what = "tls-init's command in the ghost binary"
    command = list(compose["services"]["tls-init"]["command"])
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "tls"
        paths = {"/tls": out, "/tls-ca": Path(scratch) / "tls-ca", "/tls-public": Path(scratch) / "tls-public"}
        args = [str(paths[a]) if a in paths else a for a in command]
        result = subprocess.run([str(ghost), *args], capture_output=True, text=True, timeout=60,
                                env={"PATH": "/usr/bin:/bin", "HOME": scratch})
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[0]
            print(f"check-env: FAIL {what}: {first}")
            return False
        problems = []
        for name, private in (("ca.pem", False), ("server.pem", False), ("server-key.pem", True),
                              ("internal-token", True)):
            path = out / name
            if not path.is_file():
                problems.append(f"no {name}")
            elif private and stat.S_IMODE(path.stat().st_mode) & 0o077:
                problems.append(f"{name} is readable by others")
        if not (paths["/tls-ca"] / "ca-key.pem").is_file() or (out / "ca-key.pem").exists():
            problems.append("the CA key is not kept apart in /tls-ca")
        if sorted(p.name for p in paths["/tls-public"].iterdir()) != ["ca.pem"]:
            problems.append("/tls-public does not hold ca.pem alone")
        token = (out / "internal-token").read_text().strip() if (out / "internal-token").is_file() else ""
        if not re.fullmatch(r"[0-9a-f]{64}", token):
            problems.append("internal-token is not 64 hex characters")
        sans = subprocess.run(["openssl", "x509", "-in", str(out / "server.pem"), "-noout", "-ext",
                               "subjectAltName"], capture_output=True, text=True, timeout=30).stdout
        names = set(re.findall(r"DNS:([^,\s]+)", sans))
        if not set(SERVICES) <= names:
            problems.append(f"the server certificate lacks {sorted(set(SERVICES) - names)} (has {sorted(names)})")
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.pem"), str(out / "server.pem")],
                                capture_output=True, text=True, timeout=30)
        if verify.returncode != 0:
            problems.append(f"server.pem does not verify against ca.pem: {verify.stderr.strip() or verify.stdout.strip()}")
    if problems:
        print(f"check-env: FAIL {what}: {'; '.join(problems)}")
        return False
    print(f"check-env: ok {what} (CA, certificate for {', '.join(SERVICES)}, 0600 key and credential)")
    return True


def scratch_secrets(env: dict[str, str], scratch: Path) -> None:
    """Points each secret file variable (compose /run/secrets, the k8s Secret volume) at a
    scratch file holding a generated value; the service credential file is read when a service
    is built, not when its config loads, so it stays."""
    for key, value in list(env.items()):
        if key.endswith("_FILE") and not key.endswith("INTERNAL_TOKEN_FILE") \
                and value.startswith(("/run/secrets/", "/etc/ghost-secrets/")):
            secret = scratch / Path(value).name
            secret.write_text(secrets.token_hex(24) + "\n", encoding="utf-8")
            env[key] = str(secret)


def placeholder_refused(gateway: Path, scratch: Path) -> bool:
    """The gateway binary refuses the example placeholders, naming the variable."""
    ok = True
    placeholder = scratch / "placeholder-key"
    placeholder.write_text("replace-with-a-random-key-of-16-or-more-chars\n", encoding="utf-8")
    for var, value in (("GHOST_GATEWAY__API_KEY", "change-me-please-0123456789"),
                       ("GHOST_GATEWAY__API_KEY_FILE", str(placeholder))):
        result = subprocess.run([str(gateway), "--print-config"], capture_output=True, text=True,
                                timeout=60, env={"PATH": "/usr/bin:/bin", var: value})
        if result.returncode == 0 or var not in result.stderr or "placeholder" not in result.stderr:
            print(f"check-env: FAIL the gateway accepted a placeholder in {var}: {result.stderr.strip()[:200]}")
            ok = False
        else:
            print(f"check-env: ok the gateway refuses a placeholder in {var}")
    return ok


def main() -> int:
    rendered, bin_dir = Path(sys.argv[1]), Path(sys.argv[2])
    scratch_dir = tempfile.TemporaryDirectory()
    scratch = Path(scratch_dir.name)
    doc = yaml.safe_load(rendered.read_text(encoding="utf-8"))
    pods = k8s_env(Path(sys.argv[3])) if len(sys.argv) > 3 else {}
    ok = True
    for name in SERVICES:
        binary = bin_dir / name
        if not binary.exists():
            print(f"check-env: FAIL no binary {binary}")
            ok = False
            continue
        env = {k: "" if v is None else str(v)
               for k, v in (doc["services"][name].get("environment") or {}).items()}
        for volume in doc["services"][name].get("volumes") or []:
            if isinstance(volume, str):  # docker-compose 1.x renders SOURCE:TARGET[:MODE]
                parts = volume.split(":")
                volume = {"source": parts[0], "target": parts[1] if len(parts) > 1 else ""}
            if volume.get("target") == env.get("GHOST_CONFIG"):
                env["GHOST_CONFIG"] = volume["source"]
        scratch_secrets(env, scratch)
        ok &= run(binary, env, f"{name} with the docker-compose.yml environment")
        pod_env = {k: v for k, v in pods.get(name, {}).items() if k.startswith("GHOST_")}
        what = f"{name} with k8s/base/config/{name}.toml"
        if pod_env:
            what += f" and its pod's {', '.join(sorted(k for k in pod_env if k != 'GHOST_CONFIG'))}"
        pod_env["GHOST_CONFIG"] = str(ROOT / "k8s/base/config" / f"{name}.toml")
        scratch_secrets(pod_env, scratch)
        ok &= run(binary, pod_env, what)
    if (bin_dir / "gateway").exists():
        ok &= placeholder_refused(bin_dir / "gateway", scratch)
    ghost = bin_dir / "ghost"
    if not ghost.exists():
        print(f"check-env: FAIL no binary {ghost}")
        ok = False
    else:
        ok &= tls_init(ghost, doc)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
