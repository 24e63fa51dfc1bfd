#!/usr/bin/env python3
"""Router failover time on PostgreSQL (issue 21's figure): kill -9 of the router replica holding
a target's lease, until the next lease of that patch from the other replica.

Starts, from release binaries (--bin-dir), loopback only:
  - a throwaway PostgreSQL (Debian's initdb + pg_ctl in a temp dir, a free port, fsync on;
    as root they run as the postgres user), stopped by pg_ctl (its own PID if that fails);
  - the summarizer on it, and two routers A and B on it (one database, active-active);
  - executor A dialling router A and executor B dialling router B, each with its own workspace
    for the one target MAIN (the executors' workspace lock is per folder), commands allowed:
    `sleep`;
  - a gateway per router (reads go through the survivor's).
Then N times: submit a patch writing one file and running `sleep HOLD`; as soon as its file is
in a workspace, that workspace's executor holds the lease through its router: kill -9 that
router, and time kill -> the patch's next `leased` event (attempt + 1, stamped by the other
replica in its commit). Then start the killed router again on the same ports, wait for the
patch to end, and go on. Prints each trial and min/p50/max. Stdlib only; every process it
started is stopped by PID.

The figure is the lease's expiry: a replica's leases are renewed by its executors' heartbeats
through it, so after the kill the lease lasts until lease_timeout after its last renewal, and
the other replica's sweep (every sweep_interval) requeues and leases it again. Expected:
lease_timeout - heartbeat_interval .. lease_timeout + sweep_interval.

    deploy/bench/failover.py --bin-dir target/release -n 5                  # router defaults
    deploy/bench/failover.py -n 5 --lease-timeout 2s --heartbeat 200ms --sweep 2s
"""
import argparse
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from loopback import call, free_port, wait_for

KEY = "failover-bench-key-0123456789abcdef"


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


def write_toml(path, config):
    with open(path, "w") as f:
        for key, value in config.items():
            f.write(f"{key} = {toml_value(value)}\n")


class Postgres:
    """A throwaway PostgreSQL server, fsync on."""

    def __init__(self, parent):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(p.split("/")[4]))
        if not bins:
            raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = os.path.dirname(bins[-1])
        self.dir = tempfile.mkdtemp(prefix="ghost-failover-pg-", dir=parent)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "postgres:", self.dir], check=True)
        self.run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
                 "--locale=C")
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=on "
                   "-c max_connections=200")
        self.run("pg_ctl", "start", "-D", self.data, "-l", os.path.join(self.dir, "log"),
                 "-w", "-t", "60", "-o", options)
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, program, *args):
        command = [os.path.join(self.bin, program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, cwd=self.dir, stdout=subprocess.DEVNULL)

    def stop(self):
        try:
            self.run("pg_ctl", "stop", "-D", self.data, "-m", "fast", "-w", "-t", "30")
        except (subprocess.CalledProcessError, OSError):
            try:
                with open(os.path.join(self.data, "postmaster.pid")) as f:
                    os.kill(int(f.readline()), signal.SIGKILL)  # its own PID only
            except (OSError, ValueError):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


class Service:
    def __init__(self, bin_dir, work, name, binary, config):
        self.name, self.binary = name, binary
        self.program = os.path.join(bin_dir, binary)
        self.config_path = os.path.join(work, f"{name}.toml")
        self.http = config["server"]["http_listen"]
        write_toml(self.config_path, config)
        self.log = open(os.path.join(work, f"{name}.log"), "ab")
        self.proc = None

    def start(self):
        env = {"PATH": os.environ.get("PATH", ""), "RUST_LOG": "warn"}
        self.proc = subprocess.Popen([self.program, "--config", self.config_path], env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://{self.http}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.01)
        raise SystemExit(f"{self.name} not ready after 30 s")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def server():
    return {"grpc_listen": f"127.0.0.1:{free_port()}", "http_listen": f"127.0.0.1:{free_port()}",
            "drain_grace": "0s", "drain_timeout": "5s"}


def events(gateway, patch_id):
    status, body = call(f"{gateway}/v1/patches/{patch_id}/events", KEY)
    if status != 200 or not isinstance(body, list):
        return []
    return body


def build(args, work, pg):
    summ = {"server": server(), "data_dir": os.path.join(work, "summarizer"),
            "store": {"url": pg.url}}
    routers, executors, gateways = {}, {}, {}
    services = [Service(args.bin_dir, work, "summarizer", "summarizer", summ)]
    summ_url = f"http://{summ['server']['grpc_listen']}"
    for name in ("a", "b"):
        rc = {"server": server(), "data_dir": os.path.join(work, f"router-{name}"),
              "store": {"url": pg.url}, "summarizer_url": summ_url,
              "heartbeat_interval": args.heartbeat, "lease_timeout": args.lease_timeout,
              "sweep_interval": args.sweep}
        routers[name] = Service(args.bin_dir, work, f"router-{name}", "router", rc)
        router_url = f"http://{rc['server']['grpc_listen']}"
        root = os.path.join(work, f"workspace-{name}")
        os.makedirs(root)
        ec = {"server": server(), "router_url": router_url, "executor_id": f"executor-{name}",
              "state_dir": os.path.join(work, f"executor-{name}"),
              "workspaces": [{"target": "MAIN", "root": root}], "reconnect_backoff": "200ms",
              "targets": {"MAIN": {"commands": {"allowlist": ["sleep"]}}}}
        executors[name] = Service(args.bin_dir, work, f"executor-{name}", "executor", ec)
        executors[name].root = root
        gc = {"server": server(), "router_url": router_url, "summarizer_url": summ_url,
              "api_key": KEY, "targets": [{"name": "MAIN"}]}
        gateways[name] = Service(args.bin_dir, work, f"gateway-{name}", "gateway", gc)
    return services, routers, executors, gateways


def trial(n, args, routers, executors, gateways):
    patch_id = f"failover-{os.getpid()}-{n}"
    body = {"id": patch_id, "target": "MAIN", "description": "failover bench",
            "edits": [{"op": "write", "path": f"f/{patch_id}.txt", "contents": "x\n"}],
            "commands": [f"sleep {args.hold}"]}
    status, _ = call(f"http://{gateways['a'].http}/v1/patches", KEY, "POST", body)
    if status != 202:
        raise SystemExit(f"submit answered {status}")
    first = f"http://{gateways['a'].http}"

    def first_lease():
        leased = [e for e in events(first, patch_id) if e["status"] == "leased"]
        return leased[-1] if leased else None

    lease = wait_for(first_lease, 30, f"the first lease of {patch_id}")
    holder = lease.get("actor", "").removeprefix("executor:executor-")[:1]
    if holder not in routers:
        raise SystemExit(f"cannot tell the holder of {patch_id} from {lease}")
    other = "b" if holder == "a" else "a"
    survivor = f"http://{gateways[other].http}"
    before = [e for e in events(survivor, patch_id) if e["status"] == "leased"]
    killed = time.time()
    routers[holder].kill9()

    def next_lease():
        leased = [e for e in events(survivor, patch_id) if e["status"] == "leased"]
        return leased[len(before)] if len(leased) > len(before) else None

    lease = wait_for(next_lease, args.lease_s + 60,
                     lambda: f"the next lease of {patch_id} (its events through the other "
                             f"replica: {events(survivor, patch_id)})")
    at = (lease.get("at_unix_us") or lease["at_unix_ms"] * 1000) / 1e6
    failover_ms = (at - killed) * 1000
    print(f"trial {n + 1}: killed router-{holder}; next lease (attempt {lease.get('attempt')}, "
          f"{lease.get('actor', '?')}) after {failover_ms:.0f} ms", flush=True)
    routers[holder].start()
    wait_for(lambda: any(e["status"] in ("succeeded", "failed", "lost", "rejected", "cancelled",
                                         "timed_out")
                         for e in events(survivor, patch_id)),
             args.lease_s + args.hold + 60, f"{patch_id} to end")
    time.sleep(1)  # the killed replica's executor dials it again (reconnect_backoff 200 ms)
    return failover_ms


def seconds(raw):
    for unit, scale in (("ms", 1e-3), ("s", 1), ("m", 60)):
        if raw.endswith(unit) and raw[: -len(unit)].replace(".", "").isdigit():
            return float(raw[: -len(unit)]) * scale
    return float(raw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default="target/release")
    ap.add_argument("-n", type=int, default=5, help="kills (bounded)")
    ap.add_argument("--lease-timeout", default="30s", help="router lease_timeout (default 30s)")
    ap.add_argument("--heartbeat", default="5s", help="router heartbeat_interval (default 5s)")
    ap.add_argument("--sweep", default="2s", help="router sweep_interval (default 2s)")
    ap.add_argument("--hold", type=float, default=3.0, help="seconds each patch's command runs")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    args = ap.parse_args()
    args.bin_dir = os.path.abspath(args.bin_dir)
    args.lease_s = seconds(args.lease_timeout)
    work = tempfile.mkdtemp(prefix="ghost-failover-")
    pg = Postgres(tempfile.gettempdir())
    started = []
    try:
        services, routers, executors, gateways = build(args, work, pg)
        for service in [*services, *routers.values(), *executors.values(), *gateways.values()]:
            service.start()
            started.append(service)
        time.sleep(1)
        print(f"failover.py: 2 routers on one PostgreSQL, lease_timeout {args.lease_timeout}, "
              f"heartbeat_interval {args.heartbeat}, sweep_interval {args.sweep}; "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
        times = [trial(n, args, routers, executors, gateways) for n in range(max(1, args.n))]
        print(f"failover over {len(times)} kills: min {min(times):.0f} ms, "
              f"p50 {statistics.median(times):.0f} ms, max {max(times):.0f} ms")
    finally:
        for service in reversed(started):
            service.stop()
        pg.stop()
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
