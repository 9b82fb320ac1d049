#!/usr/bin/env python3
"""Kafka-client produce throughput against a running cluster (librdkafka through confluent-kafka).

Creates a fresh topic (AdminClient), waits until every partition has a leader, then produces
RECORDS values of RECORD_SIZE bytes (no key, spread round-robin over the partitions) with
acks=all and, by default, enable.idempotence=true, and prints one JSON object: acknowledged
records/s, MB/s and the ack latency percentiles librdkafka measured per record (produce() call
to its acknowledgement). Every record must be acknowledged without error, else exit 1.

  python3 tests/bench/kafka_produce.py --bootstrap 127.0.0.1:9092 --topic k3 --partitions 3 --records 100000
"""

import argparse
import json
import os
import sys
import time

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--partitions", type=int, default=3, help="create the topic with this many partitions (0: it exists)")
    ap.add_argument("--replication-factor", type=int, default=3)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--record-size", type=int, default=1024)
    ap.add_argument("--no-idempotence", action="store_true", help="enable.idempotence=false (5 in flight per connection)")
    ap.add_argument("--in-flight", type=int, default=5, help="max.in.flight.requests.per.connection (idempotence caps it at 5)")
    ap.add_argument("--linger-ms", type=float, default=5.0, help="linger.ms (librdkafka's default is 5)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other librdkafka setting")
    args = ap.parse_args()

    if args.partitions > 0:
        admin = AdminClient({"bootstrap.servers": args.bootstrap})
        futures = admin.create_topics([NewTopic(args.topic, args.partitions, args.replication_factor)])
        futures[args.topic].result(timeout=30)
        deadline = time.monotonic() + 30
        while True:
            md = admin.list_topics(topic=args.topic, timeout=10).topics.get(args.topic)
            if md and md.error is None and len(md.partitions) == args.partitions and all(
                p.leader >= 0 for p in md.partitions.values()
            ):
                partitions = len(md.partitions)
                break
            if time.monotonic() > deadline:
                print(f"topic {args.topic}: no leader for every partition", file=sys.stderr)
                return 1
            time.sleep(0.2)
    else:
        md = AdminClient({"bootstrap.servers": args.bootstrap}).list_topics(topic=args.topic, timeout=10)
        partitions = len(md.topics[args.topic].partitions)

    latencies = []
    errors = []

    def delivered(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            latencies.append(msg.latency())

    config = {
        "bootstrap.servers": args.bootstrap,
        "acks": "all",
        "enable.idempotence": not args.no_idempotence,
        "max.in.flight.requests.per.connection": args.in_flight,
        "linger.ms": args.linger_ms,
        "on_delivery": delivered,
    }
    for kv in args.set:
        k, _, v = kv.partition("=")
        config[k] = v
    producer = Producer(config)
    value = os.urandom(args.record_size)
    started = time.monotonic()
    for i in range(args.records):
        while True:
            try:
                producer.produce(args.topic, value, partition=i % partitions)
                break
            except BufferError:
                producer.poll(0.005)
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    elapsed = time.monotonic() - started
    if left or errors or len(latencies) != args.records:
        print(f"{left} not delivered, {len(errors)} errors (first: {errors[:3]})", file=sys.stderr)
        return 1

    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000.0

    out = {
        "client": "librdkafka " + __import__("confluent_kafka").libversion()[0],
        "topic": args.topic,
        "partitions": partitions,
        "records": args.records,
        "record_size": args.record_size,
        "idempotence": not args.no_idempotence,
        "max_in_flight_per_connection": args.in_flight,
        "linger_ms": args.linger_ms,
        "elapsed_s": round(elapsed, 3),
        "records_per_sec": round(args.records / elapsed, 1),
        "mb_per_sec": round(args.records * args.record_size / elapsed / 1e6, 2),
        "latency": {"p50_ms": round(pct(0.50), 2), "p99_ms": round(pct(0.99), 2), "max_ms": round(latencies[-1] * 1000.0, 2)},
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KafkaException as e:
        print(f"kafka: {e}", file=sys.stderr)
        sys.exit(1)
