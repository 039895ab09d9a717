#!/usr/bin/env python3
"""Subscribes to sensors/* (min priority LOW) and prints each event as `topic sequence priority payload`."""
import sys

import common
import eventstream_pb2 as pb


def main():
    p = common.parser(__doc__)
    p.add_argument("--pattern", default="sensors/*", help="`*` matches one segment, a final `**` one or more")
    p.add_argument("--min-priority", default="LOW", choices=pb.Priority.keys())
    p.add_argument("--count", type=int, default=0, help="exit after this many events (0: run until stopped)")
    args = p.parse_args()

    request = pb.SubscribeRequest(topic_pattern=args.pattern,
                                  min_priority=pb.Priority.Value(args.min_priority))
    stream = common.stub(args).Subscribe(request)
    received = 0
    try:
        # The response headers arrive once the server has accepted the call; check.sh waits
        # for this stderr line before it publishes (a server that holds its headers back until
        # the first event makes this wait until then, and check.sh falls back to a timeout).
        stream.initial_metadata()
        print(f"subscribed to {args.pattern}", file=sys.stderr, flush=True)
        for event in stream:
            payload = event.payload.decode("utf-8", errors="replace")
            print(event.topic, event.sequence, pb.Priority.Name(event.priority), payload, flush=True)
            received += 1
            if args.count and received >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stream.cancel()
    if args.count and received < args.count:
        sys.exit(f"stream ended after {received} of {args.count} events")


if __name__ == "__main__":
    common.run(main)
