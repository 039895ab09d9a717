"""Shared by the example scripts: command-line options and the channel to the server."""
import argparse
import sys

import grpc

import eventstream_pb2_grpc


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--server", default="127.0.0.1:9200", help="host:port of the gRPC door")
    p.add_argument("--ca", help="CA certificate (PEM) that signed the server's certificate; enables TLS")
    p.add_argument("--cert", help="client certificate (PEM) for mTLS")
    p.add_argument("--key", help="client private key (PEM) for mTLS")
    return p


def _read(path):
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def stub(args):
    """An EventService stub: plaintext (h2c) unless --ca/--cert/--key is given."""
    return eventstream_pb2_grpc.EventServiceStub(channel(args))


def channel(args):
    """The channel to the server: plaintext (h2c) unless --ca/--cert/--key is given."""
    if args.ca or args.cert or args.key:
        if bool(args.cert) != bool(args.key):
            raise SystemExit("--cert and --key go together")
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(args.ca),
            private_key=_read(args.key),
            certificate_chain=_read(args.cert),
        )
        return grpc.secure_channel(args.server, creds)
    return grpc.insecure_channel(args.server)


def run(main):
    """Runs main(), turning a failed RPC into a one-line error and exit status 1."""
    try:
        main()
    except grpc.RpcError as e:
        sys.exit(f"error: {e.code().name}: {e.details()}")
