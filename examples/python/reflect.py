"""Lists the server's services through gRPC reflection (no .proto needed), then checks that
eventstream.EventService and its methods can be described from the server alone."""
import sys

import grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from google.protobuf.descriptor_pool import DescriptorPool

import common


def main():
    args = common.parser(__doc__).parse_args()
    channel = common.channel(args)
    database = ProtoReflectionDescriptorDatabase(channel)
    services = database.get_services()
    for name in services:
        print(name)
    if "eventstream.EventService" not in services:
        sys.exit("eventstream.EventService is not listed")
    service = DescriptorPool(database).FindServiceByName("eventstream.EventService")
    print("methods:", " ".join(m.name for m in service.methods))


if __name__ == "__main__":
    main()
