"""A foreign gRPC client (Python grpcio) for tests/e2e/health.rs: for each service address,
checks grpc.health.v1 and lists the services through server reflection (grpcio-reflection's
descriptor database speaks grpc.reflection.v1alpha), then resolves each listed service to its
methods. Prints one JSON object: {address: {"health": ..., "services": {name: [methods]}}}.

Usage: grpc_peer.py HOST:PORT [HOST:PORT ...]
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def probe(address):
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        services = {}
        for name in database.get_services():
            service = pool.FindServiceByName(name)
            services[name] = sorted(method.name for method in service.methods)
        return {
            "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
            "services": services,
        }


def main():
    print(json.dumps({address: probe(address) for address in sys.argv[1:]}))


if __name__ == "__main__":
    main()
