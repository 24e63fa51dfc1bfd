#!/usr/bin/env python3
"""Checks that the deployment configs load in the real service binaries.

Every service rejects unknown config keys at start, so a typo in docker-compose.yml's
environment or in a k8s/base/config/*.toml would only show when the container starts. This runs
each binary with `--print-config` (which loads and validates the config, then exits) on:
  - the environment docker-compose gives it (from `docker-compose config` output, path of the
    executor's mounted file mapped back into the repo), and
  - the TOML file the Kubernetes base mounts (GHOST_CONFIG=k8s/base/config/<svc>.toml).
Usage: check-env.py RENDERED_COMPOSE_YAML BIN_DIR
"""
import subprocess
import sys
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


def main() -> int:
    rendered, bin_dir = Path(sys.argv[1]), Path(sys.argv[2])
    doc = yaml.safe_load(rendered.read_text(encoding="utf-8"))
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
        ok &= run(binary, env, f"{name} with the docker-compose.yml environment")
        ok &= run(binary, {"GHOST_CONFIG": str(ROOT / "k8s/base/config" / f"{name}.toml")},
                  f"{name} with k8s/base/config/{name}.toml")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
