#!/usr/bin/env python3
"""Publishes 100 events to sensors/batch in one PublishBatch (all-or-nothing) and prints the response."""
import common
import eventstream_pb2 as pb


def main():
    p = common.parser(__doc__)
    p.add_argument("--topic", default="sensors/batch")
    p.add_argument("--n", type=int, default=100, help="number of events in the batch")
    args = p.parse_args()

    events = [
        pb.Event(topic=args.topic, payload=f"reading {i}".encode(), priority=pb.MEDIUM,
                 metadata={"source": "python", "index": str(i)})
        for i in range(args.n)
    ]
    response = common.stub(args).PublishBatch(pb.PublishBatchRequest(events=events), timeout=10)
    print(f"success={response.success} message={response.message!r} latency_ns={response.latency_ns}")
    if not response.success:
        raise SystemExit(1)


if __name__ == "__main__":
    common.run(main)
