"""What the bench scripts share to talk to services they started on 127.0.0.1: a free port,
the public API's JSON call with a bearer key, and a bounded wait. Stdlib only; imported by
failover.py and reconnect.py (run from any folder: a script's own folder is on sys.path)."""
import json
import socket
import time
import urllib.error
import urllib.request


def free_port():
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, key, method="GET", body=None):
    """(HTTP status, decoded JSON body) of one call with `key`; (status, None) on an HTTP
    error, (None, None) when nothing answered."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, None
    except OSError:
        return None, None


def wait_for(predicate, seconds, what, interval=0.005):
    """The first truthy value of `predicate()`, polled every `interval` s for at most
    `seconds`; else exits naming `what` (a string, or a function giving one at that time)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what() if callable(what) else what}")
