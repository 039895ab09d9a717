#!/usr/bin/env python3
"""Publishes events of 16 KiB up to 3.9 MiB (just under the 4 MiB message limit) to large/py and
checks that a subscriber on the same server receives each one intact, in order."""
import hashlib
import sys

import common
import eventstream_pb2 as pb

# From one TLS record (16 KiB) to just under the default 4 MiB message limit.
SIZES_BYTES = [16 << 10, 100 << 10, 200 << 10, 1 << 20, 3 << 20, 3_900 << 10]


def payload(size_bytes):
    """size_bytes of a pattern that is not one byte repeated, so a lost or moved chunk shows."""
    block = bytes(range(251))
    return (block * (size_bytes // len(block) + 1))[:size_bytes]


def main():
    p = common.parser(__doc__)
    p.add_argument("--topic", default="large/py")
    args = p.parse_args()

    # The subscriber and the publisher on separate channels (separate connections), as two
    # applications would be.
    subscription = common.stub(args).Subscribe(
        pb.SubscribeRequest(topic_pattern=args.topic, min_priority=pb.BATCH), timeout=60)
    subscription.initial_metadata()
    publisher = common.stub(args)
    for size in SIZES_BYTES:
        event = pb.Event(topic=args.topic, payload=payload(size), priority=pb.LOW)
        response = publisher.Publish(pb.PublishRequest(event=event), timeout=30)
        if not response.success:
            raise SystemExit(f"publish of {size} bytes: success=false: {response.message}")
    received = 0
    try:
        for size, event in zip(SIZES_BYTES, subscription):
            if event.payload != payload(size):
                got = hashlib.sha256(event.payload).hexdigest()[:16]
                raise SystemExit(f"event of {size} bytes arrived as {len(event.payload)} bytes "
                                 f"(sha256 {got}...), not intact")
            print(f"{size} bytes: published and delivered intact (sequence {event.sequence})",
                  flush=True)
            received = size
    finally:
        subscription.cancel()
    if received != SIZES_BYTES[-1]:
        sys.exit(f"the subscription ended before the {SIZES_BYTES[-1]}-byte event")


if __name__ == "__main__":
    common.run(main)
