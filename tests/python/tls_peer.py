"""A foreign TLS gRPC client (Python grpcio) for crates/router/tests/api/service_credential.rs:
dials ADDRESS over TLS trusting only CA_FILE (for the name `localhost`), checks
grpc.health.v1, then calls the router's Pause without the service credential.
Prints one JSON object: {"health": ..., "pause": <status code name>, "detail": ...}.

Usage: tls_peer.py HOST:PORT CA_FILE
"""

import json
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main():
    address, ca_file = sys.argv[1], sys.argv[2]
    with open(ca_file, "rb") as handle:
        credentials = grpc.ssl_channel_credentials(root_certificates=handle.read())
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        # An empty PauseRequest: the call is refused before its message matters.
        pause = channel.unary_unary("/ghost.router.v1.RouterService/Pause")
        try:
            pause(b"", timeout=10)
            code, detail = "OK", ""
        except grpc.RpcError as error:
            code, detail = error.code().name, error.details()
    print(
        json.dumps(
            {
                "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
                "pause": code,
                "detail": detail,
            }
        )
    )


if __name__ == "__main__":
    main()
