//! Client quotas, enforced per node as Kafka does: each principal's produce and consume bytes are
//! measured over a window of samples (default 11 x 1 s); a request that leaves the principal over
//! its rate is answered late by the throttle time that brings the window's rate back to the quota,
//! and the principal's next requests on this node wait until that time has passed before they are
//! served (so a client with many requests in flight is held back too). Nothing is refused: the
//! answer carries `throttle_time_ms`. The rates themselves are replicated in the metadata group
//! (`shale_raft::cluster::quota`).
//!
//! What is counted, and where: a request is charged on the node that **serves** it (that ran the
//! produce or read for it), against the principal it acts for; the node a client called and that
//! only forwarded the request charges nothing (the forwarded answer carries the serving node's
//! throttle time back). So every request is charged once, and a client cannot escape its quota by
//! marking requests as forwarded. Nodes acting for themselves (`node:<id>`) are never charged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;
use shale_raft::cluster::Cluster;

use crate::auth::{Caller, Principal};
use crate::metrics::Metrics;

/// Quota measurement settings (`[quotas]` in the config file). The rates themselves are set with
/// `shale quota set` and replicated.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    /// Length of one sample of the rate window (Kafka's `quota.window.size.seconds`).
    pub sample_ms: u64,
    /// Samples in the window (Kafka's `quota.window.num`); at least 2.
    pub samples: u32,
    /// Longest a node delays one answer for a quota (the wait before a request is served and the
    /// delay of its answer are each at most this). Keep it well below clients' request timeout.
    pub max_throttle_ms: u64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self { sample_ms: 1_000, samples: 11, max_throttle_ms: 4_000 }
    }
}

impl QuotaConfig {
    /// Checks the settings: `(field, reason)` of the first bad one.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.sample_ms == 0 || self.sample_ms > 60_000 {
            return Err(("quotas.sample_ms", format!("{} is not in 1..=60000", self.sample_ms)));
        }
        if !(2..=100).contains(&self.samples) {
            return Err(("quotas.samples", format!("{} is not in 2..=100", self.samples)));
        }
        if self.max_throttle_ms == 0 || self.max_throttle_ms > 60_000 {
            return Err(("quotas.max_throttle_ms", format!("{} is not in 1..=60000", self.max_throttle_ms)));
        }
        Ok(())
    }
}

/// What a quota limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuotaKind {
    /// Record bytes produced.
    Produce,
    /// Bytes served by Fetch and Subscribe.
    Consume,
}

impl QuotaKind {
    /// Both kinds.
    pub const ALL: [QuotaKind; 2] = [QuotaKind::Produce, QuotaKind::Consume];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Produce => "produce",
            QuotaKind::Consume => "consume",
        }
    }

    /// Its place in per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    start_ms: u64,
    bytes: u64,
}

/// Bytes over a window of `n` samples of `sample_ms` each, as Kafka's `Rate` over a `SampledStat`:
/// samples older than the whole window are dropped, and the rate divides by the time since the
/// oldest sample began, but by no less than `n - 1` whole samples (so one burst right after a quiet
/// period is measured against the whole window, not against a few milliseconds).
#[derive(Clone, Debug)]
pub struct RateWindow {
    sample_ms: u64,
    samples: Vec<Sample>,
    current: usize,
}

impl RateWindow {
    /// An empty window of `samples` (at least 2) samples of `sample_ms` (at least 1) each, starting
    /// at `now_ms`.
    pub fn new(samples: u32, sample_ms: u64, now_ms: u64) -> Self {
        let n = samples.max(2) as usize;
        Self { sample_ms: sample_ms.max(1), samples: vec![Sample { start_ms: now_ms, bytes: 0 }; n], current: 0 }
    }

    fn span_ms(&self) -> u64 {
        self.sample_ms * self.samples.len() as u64
    }

    /// Drops samples that started a whole window or more before `now_ms`.
    fn purge(&mut self, now_ms: u64) {
        let span = self.span_ms();
        for s in &mut self.samples {
            if now_ms.saturating_sub(s.start_ms) >= span {
                *s = Sample { start_ms: now_ms, bytes: 0 };
            }
        }
    }

    /// Adds `bytes` at `now_ms` (a time not before the last one recorded).
    pub fn record(&mut self, now_ms: u64, bytes: u64) {
        self.purge(now_ms);
        if now_ms.saturating_sub(self.samples[self.current].start_ms) >= self.sample_ms {
            self.current = (self.current + 1) % self.samples.len();
            self.samples[self.current] = Sample { start_ms: now_ms, bytes: 0 };
        }
        let s = &mut self.samples[self.current];
        s.bytes = s.bytes.saturating_add(bytes);
    }

    /// Bytes in the window at `now_ms`.
    pub fn total(&mut self, now_ms: u64) -> u64 {
        self.purge(now_ms);
        self.samples.iter().map(|s| s.bytes).fold(0, u64::saturating_add)
    }

    /// The time the rate is measured over at `now_ms`: since the oldest sample began, at least
    /// `n - 1` samples.
    pub fn elapsed_ms(&mut self, now_ms: u64) -> u64 {
        self.purge(now_ms);
        let oldest = self.samples.iter().map(|s| s.start_ms).min().unwrap_or(now_ms);
        let min = self.sample_ms * (self.samples.len() as u64 - 1);
        now_ms.saturating_sub(oldest).max(min)
    }

    /// Bytes per second over the window at `now_ms`.
    pub fn rate(&mut self, now_ms: u64) -> f64 {
        let total = self.total(now_ms);
        total as f64 * 1000.0 / self.elapsed_ms(now_ms) as f64
    }

    /// How long the principal must be held back at `now_ms` so the window's rate falls to `quota`
    /// bytes per second (Kafka: `(rate - quota) / quota * window`, i.e. the time the surplus takes
    /// at the quota); zero at or under it.
    pub fn throttle_ms(&mut self, now_ms: u64, quota: u64) -> u64 {
        let quota = quota.max(1);
        let total = u128::from(self.total(now_ms));
        let elapsed = u128::from(self.elapsed_ms(now_ms));
        let allowed = u128::from(quota) * elapsed / 1000;
        if total <= allowed {
            return 0;
        }
        let ms = (total - allowed) * 1000 / u128::from(quota);
        u64::try_from(ms).unwrap_or(u64::MAX)
    }
}

#[derive(Debug)]
struct Sensor {
    window: RateWindow,
    /// Requests of this principal and kind wait until then (ms since the epoch of [`Quotas`]).
    until_ms: u64,
    last_ms: u64,
}

/// Sensors kept before idle ones are dropped.
const SENSORS_BEFORE_PURGE: usize = 4_096;

/// One request's charge: the principal's key and its rate for the kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    key: String,
    kind: QuotaKind,
    rate: u64,
}

/// The charge of a request of `kind` by `caller` under this node's applied quotas: `None` when the
/// caller is a node, or no quota of that kind applies to it.
pub fn charge_of(caller: Option<&Caller>, cluster: &Cluster, kind: QuotaKind) -> Option<Charge> {
    let principal = caller.map_or(&Principal::Anonymous, |c| &c.principal);
    let user = match principal {
        Principal::Node(_) => return None,
        Principal::User(name) => Some(name.as_str()),
        Principal::Anonymous => None,
    };
    let quota = cluster.quota_of(user);
    let rate = match kind {
        QuotaKind::Produce => quota.produce_bytes_per_sec,
        QuotaKind::Consume => quota.consume_bytes_per_sec,
    }?;
    Some(Charge { key: principal.to_string(), kind, rate })
}

/// The node's quota sensors: one rate window per (principal, kind) charged recently.
#[derive(Debug)]
pub struct Quotas {
    config: QuotaConfig,
    epoch: Instant,
    sensors: Mutex<HashMap<(String, QuotaKind), Sensor>>,
}

impl Quotas {
    /// Sensors measured as `config` says.
    pub fn new(config: QuotaConfig) -> Self {
        Self { config, epoch: Instant::now(), sensors: Mutex::default() }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn cap(&self, ms: u64) -> Duration {
        Duration::from_millis(ms.min(self.config.max_throttle_ms))
    }

    /// How long a request of `charge` must wait before it is served: until the principal's last
    /// throttle ends (at most `max_throttle_ms`).
    pub fn wait_before(&self, charge: &Charge) -> Duration {
        let now = self.now_ms();
        let sensors = self.sensors.lock();
        let until = sensors.get(&(charge.key.clone(), charge.kind)).map_or(0, |s| s.until_ms);
        self.cap(until.saturating_sub(now))
    }

    /// Charges `bytes` served for `charge` and answers the throttle time of the answer (at most
    /// `max_throttle_ms`); the principal's next requests wait until it has passed.
    pub fn record(&self, charge: &Charge, bytes: u64) -> Duration {
        let now = self.now_ms();
        let mut sensors = self.sensors.lock();
        if sensors.len() >= SENSORS_BEFORE_PURGE {
            let span = self.config.sample_ms * u64::from(self.config.samples);
            sensors.retain(|_, s| now.saturating_sub(s.last_ms) < span || s.until_ms > now);
        }
        let (samples, sample_ms) = (self.config.samples, self.config.sample_ms);
        let sensor = sensors.entry((charge.key.clone(), charge.kind)).or_insert_with(|| Sensor {
            window: RateWindow::new(samples, sample_ms, now),
            until_ms: 0,
            last_ms: now,
        });
        sensor.window.record(now, bytes);
        sensor.last_ms = now;
        let throttle = self.cap(sensor.window.throttle_ms(now, charge.rate));
        sensor.until_ms = sensor.until_ms.max(now + throttle.as_millis() as u64);
        throttle
    }
}

/// Counts a delay imposed for a quota of `kind`.
pub fn count(metrics: &Metrics, kind: QuotaKind, delay: Duration) {
    if !delay.is_zero() {
        metrics.count_throttle(kind, delay);
    }
}

/// Milliseconds for a response's `throttle_time_ms`.
pub fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_after_quiet_is_measured_over_the_whole_window() {
        // 11 x 1 s: one 5 000-byte burst at t = 0 is 5 000 / 10 s = 500 B/s.
        let mut w = RateWindow::new(11, 1_000, 0);
        w.record(0, 5_000);
        assert_eq!(w.elapsed_ms(0), 10_000);
        assert_eq!(w.rate(0), 500.0);
        assert_eq!(w.throttle_ms(0, 1_000), 0, "under the quota");
        // At 100 B/s the surplus over 10 s of quota (1 000 B) takes 40 s to drain.
        assert_eq!(w.throttle_ms(0, 100), 40_000);
    }

    #[test]
    fn the_window_slides_and_forgets_old_samples() {
        let mut w = RateWindow::new(3, 100, 0);
        w.record(0, 300);
        w.record(150, 300);
        w.record(250, 300);
        assert_eq!(w.total(250), 900);
        // Elapsed is 250 ms since the oldest sample began (over the 200 ms minimum).
        assert_eq!(w.elapsed_ms(250), 250);
        assert_eq!(w.rate(250), 3_600.0);
        // At 300 the first sample (started at 0) is a whole window old: dropped.
        assert_eq!(w.total(300), 600);
        // Much later everything is gone.
        assert_eq!(w.total(10_000), 0);
        assert_eq!(w.throttle_ms(10_000, 1), 0);
    }

    #[test]
    fn throttle_brings_the_rate_back_to_the_quota() {
        // Quota 1 000 B/s over 10 x 100 ms: 3 000 bytes at once is 2 100 over the 900 the minimum
        // window allows: 2.1 s at the quota.
        let mut w = RateWindow::new(10, 100, 0);
        w.record(0, 3_000);
        let t = w.throttle_ms(0, 1_000);
        assert_eq!(t, 2_100);
        // Once the throttle has passed (and the sample aged out of the 1 s window), nothing is owed.
        assert_eq!(w.throttle_ms(t, 1_000), 0);
    }

    #[test]
    fn a_steady_sender_that_waits_its_throttle_stays_near_the_quota() {
        // Simulates a client sending 1 000 bytes, then waiting for the answer's throttle time:
        // over 20 s it gets no more than quota * (time + window) through.
        let quota = 2_000;
        let mut w = RateWindow::new(11, 100, 0);
        let (mut now, mut sent) = (0u64, 0u64);
        while now < 20_000 {
            w.record(now, 1_000);
            sent += 1_000;
            now += w.throttle_ms(now, quota).max(1);
        }
        let bound = quota * (now + 1_100) / 1_000 + 1_000;
        assert!(sent <= bound, "{sent} bytes in {now} ms, bound {bound}");
        assert!(sent >= quota * now / 1_000 / 2, "{sent} bytes in {now} ms: throttled far too hard");
    }

    #[test]
    fn nodes_and_unquoted_principals_are_not_charged_and_throttles_are_capped() {
        let q = Quotas::new(QuotaConfig { sample_ms: 100, samples: 11, max_throttle_ms: 500 });
        let charge = Charge { key: "user:alice".into(), kind: QuotaKind::Produce, rate: 10 };
        assert_eq!(q.wait_before(&charge), Duration::ZERO);
        let t = q.record(&charge, 1_000_000);
        assert_eq!(t, Duration::from_millis(500), "capped at max_throttle_ms");
        assert!(q.wait_before(&charge) > Duration::ZERO, "the next request waits");
        let other = Charge { key: "user:bob".into(), kind: QuotaKind::Produce, rate: 10 };
        assert_eq!(q.wait_before(&other), Duration::ZERO, "another principal does not");
        let consume = Charge { kind: QuotaKind::Consume, ..charge };
        assert_eq!(q.wait_before(&consume), Duration::ZERO, "nor another kind");
    }
}
