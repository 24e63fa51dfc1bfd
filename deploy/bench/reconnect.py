#!/usr/bin/env python3
"""Time for a remote executor to reconnect and take its next lease after the control plane
restarts (issue 19's figure).

Runs `ghost up --no-local-executor --executor-listen 127.0.0.1:PORT` and `ghost executor` over
TLS with its own token (release binaries from --bin-dir), then N times: stops the control plane
(SIGTERM), starts it again on the same ports and data dir, submits a one-file patch the moment
the gateway answers, and measures ready -> patch succeeded (the executor's reconnect, its
Welcome, the lease and the apply). Prints each trial and p50/max. Stdlib only.

    deploy/bench/reconnect.py --bin-dir target/release -n 10
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

KEY = "reconnect-bench-key-0123456789abcdef"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, method="GET", body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {KEY}")
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, None
    except OSError:
        return None, None


def start_up(ghost, work, ports, log):
    env = {"PATH": os.environ.get("PATH", ""), "HOME": work, "RUST_LOG": "warn"}
    for svc, (grpc, http) in ports.items():
        env[f"GHOST_{svc.upper()}__SERVER__GRPC_LISTEN"] = f"127.0.0.1:{grpc}"
        env[f"GHOST_{svc.upper()}__SERVER__HTTP_LISTEN"] = f"127.0.0.1:{http}"
    return subprocess.Popen(
        [ghost, "up", "-f", os.path.join(work, "ghost.toml"), "--api-key", KEY,
         "--no-local-executor", "--executor-listen", f"127.0.0.1:{ports['executor'][0]}"],
        cwd=work, env=env, stdout=log, stderr=log)


def wait_ready(url, deadline_s=30):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        status, _ = call(f"{url}/v1/targets")
        if status == 200:
            return time.monotonic()
        time.sleep(0.002)
    raise SystemExit("the control plane did not come up")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default="target/release")
    ap.add_argument("-n", type=int, default=10)
    args = ap.parse_args()
    ghost = os.path.abspath(os.path.join(args.bin_dir, "ghost"))
    work = tempfile.mkdtemp(prefix="ghost-reconnect-")
    with open(os.path.join(work, "ghost.toml"), "w") as f:
        f.write('[[targets]]\nname = "MAIN"\nroot = "remote-only"\n')
    ports = {svc: (free_port(), free_port()) for svc in
             ["gateway", "router", "executor", "summarizer", "alerter"]}
    url = f"http://127.0.0.1:{ports['gateway'][1]}"
    log = open(os.path.join(work, "up.log"), "ab")
    up = start_up(ghost, work, ports, log)
    wait_ready(url)
    token = subprocess.run(
        [ghost, "--url", url, "--api-key", KEY, "--json", "token", "create",
         "--target", "MAIN", "--name", "bench-box"],
        capture_output=True, text=True, check=True)
    secret = json.loads(token.stdout)["token"]
    token_file = os.path.join(work, "token")
    with open(token_file, "w") as f:
        f.write(secret + "\n")
    os.chmod(token_file, 0o600)
    workspace = os.path.join(work, "workspace")
    os.makedirs(workspace)
    exe_log = open(os.path.join(work, "executor.log"), "ab")
    executor = subprocess.Popen(
        [ghost, "executor", "--router", f"https://127.0.0.1:{ports['executor'][0]}",
         "--ca", os.path.join(work, ".ghost", "tls", "ca.pem"), "--token-file", token_file,
         "--workspace", f"MAIN={workspace}", "--data-dir", os.path.join(work, "exec-state")],
        env={"PATH": os.environ.get("PATH", ""), "HOME": work, "RUST_LOG": "warn"},
        stdout=exe_log, stderr=exe_log)
    trials = []
    try:
        # A first patch, so the executor is known to be connected before the first restart.
        call(f"{url}/v1/patches", "POST",
             {"id": "warm", "target": "MAIN", "edits": [{"op": "write", "path": "w.txt", "contents": "w\n"}]})
        end = time.monotonic() + 60
        while call(f"{url}/v1/patches/warm")[1] is None or call(f"{url}/v1/patches/warm")[1].get("status") != "succeeded":
            if time.monotonic() > end:
                raise SystemExit(f"the warm-up patch did not succeed; see {work}")
            time.sleep(0.01)
        for n in range(args.n):
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=60)
            up = start_up(ghost, work, ports, log)
            ready = wait_ready(url)
            pid = f"after-restart-{n}"
            call(f"{url}/v1/patches", "POST",
                 {"id": pid, "target": "MAIN", "edits": [{"op": "write", "path": f"{pid}.txt", "contents": "x\n"}]})
            end = time.monotonic() + 90
            while True:
                _, state = call(f"{url}/v1/patches/{pid}")
                if state and state.get("status") == "succeeded":
                    took = (time.monotonic() - ready) * 1000
                    break
                if time.monotonic() > end:
                    raise SystemExit(f"{pid} did not succeed; see {work}")
                time.sleep(0.002)
            trials.append(took)
            print(f"trial {n + 1}: control plane ready -> next patch succeeded on the remote executor: {took:.0f} ms")
    finally:
        executor.terminate()
        up.terminate()
        executor.wait(timeout=30)
        up.wait(timeout=30)
    print(f"n={len(trials)} p50={statistics.median(trials):.0f} ms "
          f"min={min(trials):.0f} ms max={max(trials):.0f} ms (state in {work})")


if __name__ == "__main__":
    main()
