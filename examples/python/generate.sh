#!/usr/bin/env bash
# Generates eventstream_pb2.py and eventstream_pb2_grpc.py from ../../proto (not committed).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m grpc_tools.protoc -I ../../proto --python_out=. --grpc_python_out=. eventstream.proto
