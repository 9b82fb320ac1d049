//! Prometheus metrics, hand-rolled: counters and latency histograms updated by the services, and
//! gauges read from the cluster and storage at scrape time. Text exposition format 0.0.4.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shale_raft::cluster::{Cluster, GroupStats};
use shale_storage::StorageBackend;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Adds one until the returned guard drops (then takes it away again).
    pub fn hold(&self) -> GaugeHold<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        GaugeHold(self)
    }
}

/// One counted in a [`Gauge`] while it lives ([`Gauge::hold`]).
#[derive(Debug)]
pub struct GaugeHold<'a>(&'a Gauge);

impl Drop for GaugeHold<'_> {
    fn drop(&mut self) {
        let _ = self.0.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }
}

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS_S: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A latency histogram with [`LATENCY_BUCKETS_S`] buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS_S.iter().enumerate() {
            if s <= *bound {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, bound) in LATENCY_BUCKETS_S.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", self.buckets[i].load(Ordering::Relaxed));
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// The requests of one kind: how many were handled and failed, and how long the successful ones
/// took.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    /// Requests handled (including refused ones).
    pub requests: Counter,
    /// Requests that failed.
    pub errors: Counter,
    /// Latency of the requests that succeeded.
    pub latency: Histogram,
}

impl RequestMetrics {
    /// Counts one request that started at `started` and succeeded if `ok`.
    pub fn record(&self, started: Instant, ok: bool) {
        self.requests.inc();
        if ok {
            self.latency.observe(started.elapsed());
        } else {
            self.errors.inc();
        }
    }
}

/// Everything the services count.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Produce requests handled (including refused ones), failed, and their latency (request to
    /// acknowledgement).
    pub produce: RequestMetrics,
    /// Records acknowledged.
    pub produce_records: Counter,
    /// Value/key/header bytes acknowledged.
    pub produce_bytes: Counter,
    /// Fetch requests handled, failed, and their latency (including long-poll waits).
    pub fetch: RequestMetrics,
    /// Records returned by fetches and subscriptions.
    pub fetch_records: Counter,
    /// Requests this node forwarded to another.
    pub forwarded: Counter,
    /// The same, per RPC (see [`Metrics::count_forwarded`]).
    pub forwarded_by_rpc: parking_lot::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Bytes the scrubber re-read from storage.
    pub scrub_bytes: Counter,
    /// Segments the scrubber checked.
    pub scrub_segments: Counter,
    /// Damaged ranges the scrubber found (each counted once).
    pub scrub_damage_found: Counter,
    /// Damaged ranges repaired from other replicas.
    pub scrub_repairs: Counter,
    /// Repair attempts that failed (retried later).
    pub scrub_repair_failures: Counter,
    /// Damaged ranges known now (not yet repaired).
    pub scrub_damaged_ranges: Gauge,
    /// Connections admitted and open (`limits.max_connections`).
    pub connections_open: Gauge,
    /// Connections open on the internal listener (`limits.max_internal_connections`).
    pub internal_connections_open: Gauge,
    /// Subscribe streams open (`limits.max_subscriptions`).
    pub subscriptions_open: Gauge,
    /// ProduceStream calls open (a producer keeps one per node it sends to).
    pub produce_calls_open: Gauge,
    /// Client-API requests being served (`limits.max_in_flight_requests`); set at scrape time.
    pub requests_in_flight: Gauge,
    /// Requests and connections refused at a limit, per limit (its config key without `limits.`).
    pub limit_refusals: parking_lot::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Requests whose body could not be decoded, or that named no method (INVALID_REQUEST).
    pub invalid_requests: Counter,
    /// Requests refused by authorization (NOT_AUTHORIZED), per operation.
    pub auth_denied: parking_lot::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Requests refused by authentication (UNAUTHENTICATED).
    pub auth_unauthenticated: Counter,
    /// TLS certificate reloads that failed (the node kept serving the certificates it had).
    pub tls_reload_failures: Counter,
    /// TLS certificate reloads that swapped in new certificates.
    pub tls_reloads: Counter,
    /// `notAfter` of the certificate this node serves and presents, in Unix seconds (0: no TLS).
    pub tls_cert_not_after_seconds: Gauge,
    /// Milliseconds requests (and subscription messages) were delayed for a quota, per kind
    /// ([`crate::quota::QuotaKind`]).
    pub quota_throttle_ms: [Counter; 2],
    /// Answers delayed for a quota, per kind.
    pub quota_throttled: [Counter; 2],
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
}

fn gauge_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    /// Counts one request this node forwarded to another, in total and under its RPC, named after
    /// the request message (`ProduceRequest` counts as `Produce`). Clients that know the partition
    /// leaders send there directly, so in a steady state this stays near zero.
    pub fn count_forwarded<Req>(&self) {
        self.forwarded.inc();
        let name = std::any::type_name::<Req>();
        let message = name.rsplit("::").next().unwrap_or(name);
        let rpc = message.strip_suffix("Request").unwrap_or(message);
        *self.forwarded_by_rpc.lock().entry(rpc).or_default() += 1;
    }

    /// Counts one refusal at `limit` (a `limits.` config key without the prefix).
    pub fn count_limit_refusal(&self, limit: &'static str) {
        *self.limit_refusals.lock().entry(limit).or_default() += 1;
    }

    /// Refusals counted at `limit` so far.
    pub fn limit_refusals(&self, limit: &str) -> u64 {
        self.limit_refusals.lock().get(limit).copied().unwrap_or(0)
    }

    /// Counts one request refused by authorization.
    pub fn count_denied(&self, operation: &'static str) {
        *self.auth_denied.lock().entry(operation).or_default() += 1;
    }

    /// Counts one answer delayed by `delay` for a quota of `kind`.
    pub fn count_throttle(&self, kind: crate::quota::QuotaKind, delay: Duration) {
        self.quota_throttle_ms[kind.index()].add(delay.as_millis() as u64);
        self.quota_throttled[kind.index()].inc();
    }

    /// Answers delayed for a quota of `kind` so far.
    pub fn throttled(&self, kind: crate::quota::QuotaKind) -> u64 {
        self.quota_throttled[kind.index()].get()
    }

    /// Requests refused by authorization, every operation together.
    pub fn denied_total(&self) -> u64 {
        self.auth_denied.lock().values().sum()
    }

    /// The full exposition: counters, histograms, then gauges from the cluster and storage.
    pub fn render(&self, cluster: &Cluster, storage: &dyn StorageBackend) -> String {
        let mut out = String::with_capacity(4096);
        counter(&mut out, "shale_produce_requests_total", "Produce requests handled.", self.produce.requests.get());
        counter(&mut out, "shale_produce_records_total", "Records acknowledged.", self.produce_records.get());
        counter(&mut out, "shale_produce_bytes_total", "Record bytes acknowledged.", self.produce_bytes.get());
        counter(&mut out, "shale_produce_errors_total", "Produce requests that failed.", self.produce.errors.get());
        self.produce.latency.render(&mut out, "shale_produce_latency_seconds", "Produce latency until commit.");
        counter(&mut out, "shale_fetch_requests_total", "Fetch requests handled.", self.fetch.requests.get());
        counter(&mut out, "shale_fetch_records_total", "Records returned to consumers.", self.fetch_records.get());
        counter(&mut out, "shale_fetch_errors_total", "Fetch requests that failed.", self.fetch.errors.get());
        self.fetch.latency.render(&mut out, "shale_fetch_latency_seconds", "Fetch latency, long polls included.");
        counter(
            &mut out,
            "shale_forwarded_requests_total",
            "Requests forwarded to another node.",
            self.forwarded.get(),
        );
        let _ = writeln!(
            out,
            "# HELP shale_forwarded_rpc_requests_total Requests forwarded to another node, per RPC.\n\
             # TYPE shale_forwarded_rpc_requests_total counter"
        );
        for (rpc, n) in self.forwarded_by_rpc.lock().iter() {
            let _ = writeln!(out, "shale_forwarded_rpc_requests_total{{rpc=\"{}\"}} {n}", label(rpc));
        }

        let _ = writeln!(
            out,
            "# HELP shale_limit_refusals_total Connections and requests refused at a limit, per limit (config key).\n\
             # TYPE shale_limit_refusals_total counter"
        );
        for (limit, n) in self.limit_refusals.lock().iter() {
            let _ = writeln!(out, "shale_limit_refusals_total{{limit=\"{}\"}} {n}", label(limit));
        }
        counter(
            &mut out,
            "shale_tls_reloads_total",
            "TLS certificate reloads that swapped in new certificates.",
            self.tls_reloads.get(),
        );
        let not_after = self.tls_cert_not_after_seconds.get();
        if not_after > 0 {
            gauge_header(
                &mut out,
                "shale_tls_cert_not_after_seconds",
                "When the node's certificate expires (notAfter, Unix seconds); alert well before it.",
            );
            let _ = writeln!(out, "shale_tls_cert_not_after_seconds {not_after}");
        }
        counter(
            &mut out,
            "shale_tls_reload_failures_total",
            "TLS certificate reloads refused (unreadable files, key not matching, not signed by the CA); the old certificates stay.",
            self.tls_reload_failures.get(),
        );
        counter(
            &mut out,
            "shale_invalid_requests_total",
            "Requests whose body could not be decoded or that named no method.",
            self.invalid_requests.get(),
        );
        for (name, help, value) in [
            (
                "shale_connections_open",
                "Connections this node serves (limits.max_connections).",
                &self.connections_open,
            ),
            (
                "shale_internal_connections_open",
                "Connections the internal listener serves (limits.max_internal_connections).",
                &self.internal_connections_open,
            ),
            (
                "shale_subscriptions_open",
                "Subscribe streams open (limits.max_subscriptions).",
                &self.subscriptions_open,
            ),
            (
                "shale_produce_calls_open",
                "ProduceStream calls open (a producer keeps one per node it sends to).",
                &self.produce_calls_open,
            ),
            (
                "shale_requests_in_flight",
                "Client-API requests being served (limits.max_in_flight_requests).",
                &self.requests_in_flight,
            ),
        ] {
            gauge_header(&mut out, name, help);
            let _ = writeln!(out, "{name} {}", value.get());
        }
        let (topics, partitions) = cluster.local_totals();
        gauge_header(&mut out, "shale_cluster_topics", "Topics in the cluster (limits.max_topics), as applied here.");
        let _ = writeln!(out, "shale_cluster_topics {topics}");
        gauge_header(
            &mut out,
            "shale_cluster_partitions",
            "Partitions in the cluster (limits.max_partitions), as applied here.",
        );
        let _ = writeln!(out, "shale_cluster_partitions {partitions}");

        let _ = writeln!(
            out,
            "# HELP shale_auth_denied_total Requests refused as not authorized (no ACL rule allows them), per operation.\n\
             # TYPE shale_auth_denied_total counter"
        );
        for (operation, n) in self.auth_denied.lock().iter() {
            let _ = writeln!(out, "shale_auth_denied_total{{operation=\"{}\"}} {n}", label(operation));
        }
        counter(
            &mut out,
            "shale_auth_unauthenticated_total",
            "Requests refused because their credentials were not accepted.",
            self.auth_unauthenticated.get(),
        );
        let _ = writeln!(
            out,
            "# HELP shale_quota_throttle_seconds_total Time answers were delayed because their principal was over a quota, per kind.\n\
             # TYPE shale_quota_throttle_seconds_total counter"
        );
        for kind in crate::quota::QuotaKind::ALL {
            let seconds = self.quota_throttle_ms[kind.index()].get() as f64 / 1000.0;
            let _ = writeln!(out, "shale_quota_throttle_seconds_total{{kind=\"{}\"}} {seconds}", kind.as_str());
        }
        let _ = writeln!(
            out,
            "# HELP shale_quota_throttled_total Answers delayed because their principal was over a quota, per kind.\n\
             # TYPE shale_quota_throttled_total counter"
        );
        for kind in crate::quota::QuotaKind::ALL {
            let n = self.quota_throttled[kind.index()].get();
            let _ = writeln!(out, "shale_quota_throttled_total{{kind=\"{}\"}} {n}", kind.as_str());
        }
        counter(
            &mut out,
            "shale_raft_rpc_refused_total",
            "Raft RPCs refused at the transport's edge (huge term or index, not a member, wrong certificate).",
            cluster.router().refused_rpcs(),
        );
        let router = cluster.router();
        gauge_header(
            &mut out,
            "shale_raft_quiet_groups",
            "Raft groups on this node that are quiet (idle: no per-group heartbeats or election timer).",
        );
        let _ = writeln!(out, "shale_raft_quiet_groups {}", router.quiet_groups());
        let sync = shale_raft::SyncRounds::stats_of(storage);
        counter(
            &mut out,
            "shale_raft_sync_rounds_total",
            "Node-wide log flush rounds: each makes every Raft group's unsynced appends durable with one storage call.",
            sync.rounds,
        );
        counter(
            &mut out,
            "shale_raft_sync_round_streams_total",
            "Group logs synced, summed over the flush rounds (divided by the rounds: groups per round).",
            sync.streams,
        );
        counter(
            &mut out,
            "shale_raft_sync_flushes_total",
            "Group log flushes (appends reported durable, barriers) completed by the flush rounds.",
            sync.ops,
        );
        gauge_header(
            &mut out,
            "shale_raft_sync_round_streams_max",
            "Group logs synced by the largest flush round so far.",
        );
        let _ = writeln!(out, "shale_raft_sync_round_streams_max {}", sync.max_streams);
        let sent = router.sent();
        counter(
            &mut out,
            "shale_raft_node_heartbeats_sent_total",
            "Coalesced node heartbeats sent (one per peer per tick, whatever the number of groups).",
            sent.node_heartbeats.load(std::sync::atomic::Ordering::Relaxed),
        );
        counter(
            &mut out,
            "shale_raft_write_lease_renewals_total",
            "Writes whose group leader first renewed its lease with a heartbeat round (a group quiet for about an election timeout).",
            sent.write_lease_renewals.load(std::sync::atomic::Ordering::Relaxed),
        );
        counter(
            &mut out,
            "shale_raft_node_heartbeats_received_total",
            "Coalesced node heartbeats received from peers.",
            sent.node_heartbeats_received.load(std::sync::atomic::Ordering::Relaxed),
        );
        counter(
            &mut out,
            "shale_raft_append_messages_sent_total",
            "Raft AppendEntries messages sent (per-group heartbeats and replication).",
            sent.append_messages.load(std::sync::atomic::Ordering::Relaxed),
        );
        counter(
            &mut out,
            "shale_raft_lone_append_messages_sent_total",
            "Of the AppendEntries messages, those sent alone (per-group heartbeats), as once requests on the multiplexed calls.",
            sent.lone_append_messages.load(std::sync::atomic::Ordering::Relaxed),
        );
        counter(
            &mut out,
            "shale_raft_entryless_session_messages_sent_total",
            "Of the AppendEntries messages, those sent on replication sessions without entries (commit notices, probes).",
            sent.entryless_session_messages.load(std::sync::atomic::Ordering::Relaxed),
        );
        counter(
            &mut out,
            "shale_raft_multiplexed_messages_sent_total",
            "Messages of the per-peer multiplexed replication calls; each carries the AppendEntries of one or more groups.",
            sent.multiplexed_messages.load(std::sync::atomic::Ordering::Relaxed),
        );
        counter(
            &mut out,
            "shale_scrub_bytes_total",
            "Bytes the scrubber re-read from storage.",
            self.scrub_bytes.get(),
        );
        counter(&mut out, "shale_scrub_segments_total", "Segments the scrubber checked.", self.scrub_segments.get());
        counter(
            &mut out,
            "shale_scrub_damage_found_total",
            "Damaged log ranges the scrubber found.",
            self.scrub_damage_found.get(),
        );
        counter(
            &mut out,
            "shale_scrub_repairs_total",
            "Damaged log ranges repaired from other replicas.",
            self.scrub_repairs.get(),
        );
        counter(
            &mut out,
            "shale_scrub_repair_failures_total",
            "Repair attempts that failed (retried).",
            self.scrub_repair_failures.get(),
        );
        gauge_header(&mut out, "shale_scrub_damaged_ranges", "Damaged log ranges on this node not yet repaired.");
        let _ = writeln!(out, "shale_scrub_damaged_ranges {}", self.scrub_damaged_ranges.get());

        counter(
            &mut out,
            "shale_group_failures_total",
            "Raft groups found stopped by an error here (e.g. a full disk), each stop counted.",
            cluster.group_failures_total(),
        );
        counter(
            &mut out,
            "shale_group_restarts_total",
            "Stopped Raft groups restarted from disk here.",
            cluster.group_restarts_total(),
        );
        gauge_header(
            &mut out,
            "shale_groups_stopped",
            "Raft groups on this node stopped by an error, or restarted less than 5 s ago (not ready while > 0).",
        );
        let _ = writeln!(out, "shale_groups_stopped {}", cluster.stopped_groups().len());

        let status = cluster.cluster_status();
        gauge_header(&mut out, "shale_cluster_members", "Members in the applied metadata.");
        let _ = writeln!(out, "shale_cluster_members {}", status.members.len());
        gauge_header(&mut out, "shale_metadata_has_leader", "1 when the metadata group has a known leader.");
        let _ = writeln!(out, "shale_metadata_has_leader {}", u8::from(cluster.metadata_leader().is_some()));
        if let Some(m) = &status.metadata {
            gauge_header(&mut out, "shale_metadata_commit_index", "Metadata group commit index here.");
            let _ = writeln!(out, "shale_metadata_commit_index {}", m.commit_index);
            gauge_header(&mut out, "shale_metadata_applied_index", "Metadata group applied index here.");
            let _ = writeln!(out, "shale_metadata_applied_index {}", m.applied_index);
        }
        let families: [(&str, &str); 5] = [
            ("shale_partition_log_end", "One past the last applied offset of the local replica."),
            ("shale_partition_commit_index", "Raft commit index of the partition here."),
            ("shale_partition_applied_index", "Raft applied index of the partition here."),
            ("shale_partition_last_log_index", "Last index in the local partition log."),
            ("shale_partition_is_leader", "1 when this node leads the partition."),
        ];
        for (i, (name, help)) in families.iter().enumerate() {
            gauge_header(&mut out, name, help);
            for g in &status.partitions {
                let Some((topic, partition)) = &g.partition else { continue };
                let value = match i {
                    0 => g.applied_index + 1,
                    1 => g.commit_index,
                    2 => g.applied_index,
                    3 => g.last_log_index,
                    _ => u64::from(g.leader == Some(status.node_id)),
                };
                let _ = writeln!(out, "{name}{{topic=\"{}\",partition=\"{partition}\"}} {value}", label(topic));
            }
        }
        gauge_header(
            &mut out,
            "shale_partition_replication_lag",
            "Entries a replica is behind the leader (on the leader).",
        );
        for g in &status.partitions {
            let Some((topic, partition)) = &g.partition else { continue };
            for (replica, lag) in &g.replica_lag {
                let _ = writeln!(
                    out,
                    "shale_partition_replication_lag{{topic=\"{}\",partition=\"{partition}\",replica=\"{replica}\"}} {lag}",
                    label(topic)
                );
            }
        }
        render_groups(&mut out, &cluster.local_group_stats());
        let storage_bytes: u64 = storage.streams().into_iter().filter_map(|s| storage.stream_bytes(s).ok()).sum();
        gauge_header(&mut out, "shale_storage_bytes", "Bytes on disk (or in memory) across all streams.");
        let _ = writeln!(out, "shale_storage_bytes {storage_bytes}");
        out
    }
}

/// The consumer-group series, from the groups as applied on this node (every node exports every
/// group; the lag only of partitions it replicates).
fn render_groups(out: &mut String, groups: &[GroupStats]) {
    gauge_header(out, "shale_consumer_group_members", "Members of a consumer group, as applied on this node.");
    for g in groups {
        let _ = writeln!(out, "shale_consumer_group_members{{group=\"{}\"}} {}", label(&g.group), g.members);
    }
    let _ = writeln!(
        out,
        "# HELP shale_consumer_group_rebalances_total Changes of a consumer group's membership or assignment (its epoch).\n\
         # TYPE shale_consumer_group_rebalances_total counter"
    );
    for g in groups {
        let _ = writeln!(out, "shale_consumer_group_rebalances_total{{group=\"{}\"}} {}", label(&g.group), g.epoch);
    }
    gauge_header(
        out,
        "shale_consumer_group_lag",
        "Committed offset to log end, per group partition this node replicates (its own log end).",
    );
    for g in groups {
        for o in &g.offsets {
            let Some(lag) = o.lag else { continue };
            let _ = writeln!(
                out,
                "shale_consumer_group_lag{{group=\"{}\",topic=\"{}\",partition=\"{}\"}} {lag}",
                label(&g.group),
                label(&o.topic),
                o.partition
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn forwarded_requests_are_counted_per_rpc() {
        struct ProduceRequest;
        let m = Metrics::default();
        m.count_forwarded::<ProduceRequest>();
        m.count_forwarded::<ProduceRequest>();
        m.count_forwarded::<String>();
        assert_eq!(m.forwarded.get(), 3);
        let by_rpc = m.forwarded_by_rpc.lock().clone();
        assert_eq!(by_rpc.into_iter().collect::<Vec<_>>(), vec![("Produce", 2), ("String", 1)]);
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
