#!/usr/bin/env bash
# Kafka-client produce throughput next to the gRPC client's, on one Shale dev cluster in one run
# (issue 17: the Kafka row within 20% of the gRPC one). Run from the project root:
#   tests/bench/kafka_vs_grpc.sh [--records N] [--rounds R] [--no-build] [-- KAFKA_PRODUCE_ARGS...]
# It builds the release binaries, starts `shale-node dev` (three nodes in one process, data in a
# temporary directory), then per round runs
#   - the gRPC row exactly as ../shared/peers/compare.sh does: `shale bench produce --topic ..
#     --create-partitions 3 --concurrency 4 --window 1000 --records N --record-size 1KiB -o json`;
#   - the Kafka row: tests/bench/kafka_produce.py (confluent-kafka, librdkafka: acks=all,
#     enable.idempotence=true, 1 KiB values) against a fresh 3-partition topic, bootstrap = node 1's
#     Kafka listener;
# and prints a markdown table with the ratio of each round. Needs python3 with confluent-kafka
# (.ci/run installs it: `python3 -m pip install confluent-kafka`).
set -euo pipefail
root=$(pwd)
n=100000
rounds=1
build=1
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --records) n=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "usage: tests/bench/kafka_vs_grpc.sh [--records N] [--rounds R] [--no-build] [-- kafka_produce.py args]" >&2; exit 2 ;;
  esac
done
[ -f "$root/tests/bench/kafka_produce.py" ] || { echo "run from the project root" >&2; exit 2; }
python3 -c "import confluent_kafka" 2>/dev/null || {
  echo "confluent-kafka missing: python3 -m pip install confluent-kafka (or --break-system-packages)" >&2; exit 2; }
work=$(mktemp -d /tmp/shale-kafka-bench.XXXXXX)
cleanup() {
  [ -f "$work/dev.pid" ] && kill "$(cat "$work/dev.pid")" 2>/dev/null && sleep 1 || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ "$build" = 1 ]; then
  echo "== building (release): shale-node, shale" >&2
  cargo build -q --release -p shale-node -p shale-cli >&2
fi
shale=$root/target/release/shale

echo "== Shale dev cluster ($work)" >&2
(cd "$work" && exec "$root/target/release/shale-node" dev --data-dir "$work/data" >"$work/dev.log" 2>&1) &
echo $! >"$work/dev.pid"
for _ in $(seq 1 60); do grep -q "^ready" "$work/dev.log" 2>/dev/null && break; sleep 0.5; done
grep -q "^ready" "$work/dev.log" || { echo "the dev cluster did not get ready:" >&2; cat "$work/dev.log" >&2; exit 1; }
# "  node 1: gRPC 127.0.0.1:7001  Kafka 127.0.0.1:9092  HTTP ..."
kafka=$(sed -nE 's/^ *node 1: .*Kafka ([^ ]+) .*/\1/p' "$work/dev.log" | head -1)
[ -n "$kafka" ] || { echo "no Kafka listener in the dev cluster's output" >&2; exit 1; }
echo "   dev pid $(cat "$work/dev.pid"), Kafka bootstrap $kafka" >&2

rows=()
for r in $(seq 1 "$rounds"); do
  echo "== round $r: gRPC (shale bench produce)" >&2
  grpc=$("$shale" bench produce --topic "g$r" --create-partitions 3 --concurrency 4 --window 1000 \
    --records "$n" --record-size 1KiB -o json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); l=d["latency"]; print(d["records_per_sec"], l["p50_ms"], l["p99_ms"])')
  echo "   $grpc" >&2
  echo "== round $r: Kafka (librdkafka, kafka_produce.py)" >&2
  kaf=$(python3 "$root/tests/bench/kafka_produce.py" --bootstrap "$kafka" --topic "k$r" --partitions 3 \
    --records "$n" "${extra[@]}" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); l=d["latency"]; print(d["records_per_sec"], l["p50_ms"], l["p99_ms"], d["idempotence"])')
  echo "   $kaf" >&2
  rows+=("$r $grpc $kaf")
done

echo
echo "1 KiB records, 3 partitions, replication factor 3, $n records per row, acks after a majority fsynced; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| round | gRPC rec/s | gRPC p50 / p99 ms | Kafka rec/s | Kafka p50 / p99 ms | Kafka / gRPC |"
echo "|---|---|---|---|---|---|"
for row in "${rows[@]}"; do
  python3 - $row <<'PY'
import sys
r, gr, gp5, gp9, kr, kp5, kp9, idem = sys.argv[1:]
gr, gp5, gp9, kr, kp5, kp9 = map(float, (gr, gp5, gp9, kr, kp5, kp9))
print(f"| {r} | {gr:,.0f} | {gp5:.2f} / {gp9:.2f} | {kr:,.0f} | {kp5:.2f} / {kp9:.2f} | {kr/max(gr,1):.2f} |")
PY
done
