"""The outside peers of the compose stack in deploy/smoke.sh, speaking their real wire formats.

- An OTLP/gRPC trace receiver (the collector's TraceService from the official
  opentelemetry-proto package, served by grpcio): every span it receives is appended to
  SPANS as one JSON line {"trace_id", "span_id", "name", "service"}.
- A fake Slack Web API (chat.postMessage, chat.update; bot token required) over HTTP: every
  message it accepts is appended to SLACK as one JSON line (the request body plus "method").

Usage: compose_peers.py --host IP --otlp-port N --slack-port N --spans FILE --slack FILE
Runs until SIGTERM/SIGINT. Prints "ready" on stdout once both listen.
"""

import argparse
import json
import signal
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)

LOCK = threading.Lock()


def append(path, record):
    with LOCK, open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, path):
        self.path = path

    def Export(self, request, context):  # noqa: N802 (gRPC method name)
        for resource_spans in request.resource_spans:
            service = ""
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    service = attribute.value.string_value
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    append(
                        self.path,
                        {
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "name": span.name,
                            "service": service,
                        },
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


def slack_handler(path):
    class Slack(BaseHTTPRequestHandler):
        counter = 0

        def log_message(self, *args):
            pass

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json; charset=utf-8")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802 (http.server naming)
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            method = self.path.rsplit("/", 1)[-1]
            if not self.path.startswith("/api/") or method not in (
                "chat.postMessage",
                "chat.update",
            ):
                self.answer(200, {"ok": False, "error": "unknown_method"})
                return
            auth = self.headers.get("authorization", "")
            if not auth.startswith("Bearer xoxb-"):
                self.answer(200, {"ok": False, "error": "not_authed"})
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self.answer(200, {"ok": False, "error": "invalid_json"})
                return
            if not body.get("channel"):
                self.answer(200, {"ok": False, "error": "channel_not_found"})
                return
            with LOCK:
                Slack.counter += 1
                ts = body.get("ts") or f"{int(time.time())}.{Slack.counter:06d}"
            record = dict(body)
            record["method"] = method
            append(path, record)
            self.answer(200, {"ok": True, "channel": body["channel"], "ts": ts})

    return Slack


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--otlp-port", type=int, required=True)
    parser.add_argument("--slack-port", type=int, required=True)
    parser.add_argument("--spans", required=True)
    parser.add_argument("--slack", required=True)
    args = parser.parse_args()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(args.spans), server)
    if server.add_insecure_port(f"{args.host}:{args.otlp_port}") == 0:
        sys.exit(f"cannot listen on {args.host}:{args.otlp_port}")
    server.start()
    http = ThreadingHTTPServer((args.host, args.slack_port), slack_handler(args.slack))
    threading.Thread(target=http.serve_forever, daemon=True).start()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    http.shutdown()
    server.stop(2).wait()


if __name__ == "__main__":
    main()
