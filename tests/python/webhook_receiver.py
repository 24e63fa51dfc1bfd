"""A webhook receiver for tests (ghost_testkit::WebhookReceiver), verifying with the real
`standardwebhooks`.

Usage: webhook_receiver.py PORT SECRET OUT_FILE FAIL_UNTIL STATUS

Listens on 127.0.0.1:PORT. Until the unix time FAIL_UNTIL it answers every POST 503 (an
outage) and appends {"refused": true}; afterwards it verifies each POST with
standardwebhooks.Webhook(SECRET).verify(body, headers) and appends one JSON line per request to
OUT_FILE (its webhook-id, verified or the error, and the payload's type, patch and attempt)
before answering STATUS (e.g. 204, or 410 to say the subscription is gone). Prints "ready" once
listening. Lines are appended before the answer, so their order is the order the sender saw
its messages accepted.
"""

import errno
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

PORT = int(sys.argv[1])
SECRET = sys.argv[2]
OUT = sys.argv[3]
FAIL_UNTIL = float(sys.argv[4])
STATUS = int(sys.argv[5])
MAX_BODY = 1024 * 1024
LOCK = threading.Lock()


def append(record):
    with LOCK, open(OUT, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        if length > MAX_BODY:
            self.send_response(413)
            self.end_headers()
            return
        body = self.rfile.read(length)
        if time.time() < FAIL_UNTIL:
            append({"refused": True, "id": self.headers.get("webhook-id")})
            self.send_response(503)
            self.end_headers()
            return
        headers = {name: value for name, value in self.headers.items()}
        record = {"id": self.headers.get("webhook-id"), "refused": False, "at": time.time()}
        try:
            payload = Webhook(SECRET).verify(body, headers)
            record.update(
                verified=True,
                type=payload["type"],
                timestamp=payload["timestamp"],
                patch=payload["data"]["id"],
                attempt=payload["data"]["attempt"],
                content_type=self.headers.get("content-type"),
                payload=payload,
            )
            status = STATUS
        except Exception as err:  # noqa: BLE001 - any failure is the test's finding
            record.update(verified=False, error=repr(err))
            status = 400
        append(record)
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


def listen():
    """Binds PORT, which the test reserved and let go of: a connection of another test may hold
    it for a moment as its ephemeral port, so a busy port is tried again for up to 20 s."""
    deadline = time.time() + 20
    while True:
        try:
            return ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
        except OSError as err:
            if err.errno != errno.EADDRINUSE or time.time() > deadline:
                raise
            time.sleep(0.1)


server = listen()
print("ready", flush=True)
server.serve_forever()
