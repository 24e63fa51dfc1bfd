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
import statistics
import subprocess
import tempfile
import time

from loopback import call, free_port, wait_for

KEY = "reconnect-bench-key-0123456789abcdef"


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
    wait_for(lambda: call(f"{url}/v1/targets", KEY)[0] == 200, deadline_s,
             "the control plane to come up", interval=0.002)
    return time.monotonic()


def status_of(url, patch_id):
    _, state = call(f"{url}/v1/patches/{patch_id}", KEY)
    return state.get("status") if state else None


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
        call(f"{url}/v1/patches", KEY, "POST",
             {"id": "warm", "target": "MAIN", "edits": [{"op": "write", "path": "w.txt", "contents": "w\n"}]})
        wait_for(lambda: status_of(url, "warm") == "succeeded", 60,
                 f"the warm-up patch to succeed; see {work}", interval=0.01)
        for n in range(args.n):
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=60)
            up = start_up(ghost, work, ports, log)
            ready = wait_ready(url)
            pid = f"after-restart-{n}"
            call(f"{url}/v1/patches", KEY, "POST",
                 {"id": pid, "target": "MAIN", "edits": [{"op": "write", "path": f"{pid}.txt", "contents": "x\n"}]})
            wait_for(lambda: status_of(url, pid) == "succeeded", 90,
                     f"{pid} to succeed; see {work}", interval=0.002)
            took = (time.monotonic() - ready) * 1000
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
