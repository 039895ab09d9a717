#!/usr/bin/env python3
"""Streams 100 events to sensors/stream in one publish-only Stream call (no x-topic-pattern: no
events come back) and prints how many the server published."""
import common
import eventstream_pb2 as pb


def main():
    p = common.parser(__doc__)
    p.add_argument("--topic", default="sensors/stream")
    p.add_argument("--n", type=int, default=100, help="number of events to stream")
    args = p.parse_args()

    def events():
        for i in range(args.n):
            yield pb.Event(topic=args.topic, payload=f"reading {i}".encode(), priority=pb.LOW)

    # Without x-topic-pattern metadata the call only publishes; the server ends it with OK and
    # x-published-count once the request iterator is exhausted and every event is sequenced.
    call = common.stub(args).Stream(events(), timeout=10)
    back = sum(1 for _ in call)
    published = dict(call.trailing_metadata()).get("x-published-count")
    print(f"published={published} events_back={back}")
    if published != str(args.n) or back:
        raise SystemExit(1)


if __name__ == "__main__":
    common.run(main)
