#!/usr/bin/env python3
"""Publishes one HIGH-priority event to sensors/t1 and prints the server's response."""
import json

import common
import eventstream_pb2 as pb


def main():
    p = common.parser(__doc__)
    p.add_argument("--topic", default="sensors/t1")
    args = p.parse_args()

    event = pb.Event(
        topic=args.topic,
        payload=json.dumps({"celsius": 21.5}, separators=(",", ":")).encode(),
        priority=pb.HIGH,
        metadata={"source": "python", "unit": "celsius"},
        # id and timestamp_ns are left empty/0: the server fills them in.
    )
    response = common.stub(args).Publish(pb.PublishRequest(event=event), timeout=10)
    print(f"success={response.success} message={response.message!r} latency_ns={response.latency_ns}")
    if not response.success:
        raise SystemExit(1)


if __name__ == "__main__":
    common.run(main)
