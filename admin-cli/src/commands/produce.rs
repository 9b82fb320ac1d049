//! `shale produce TOPIC`: records from stdin lines, all of stdin, or files.

use std::io::IsTerminal;
use std::path::PathBuf;

use bytes::Bytes;
use serde::Serialize;
use shale_client::{ClientError, DeliveryFuture, ProducerConfig, ProducerRecord, RecordMetadata};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

use crate::cli::ProduceArgs;
use crate::context::Ctx;
use crate::error::{CliError, Result};
use crate::output::{self, OutputFormat, Table, hex};

/// Deliveries waiting to be reported while more records are read (bounds memory on long inputs).
const MAX_PENDING_DELIVERIES: usize = 10_000;

/// How one record's delivery ended: `-o json` prints one per line as each settles, in input order;
/// table and YAML print them all at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The record's position in the input, from 0 (stdin line L is record L - 1; file F is record F - 1).
    pub record: u64,
    /// Its key, when it has one and it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Its key in base64, when it has one that is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    /// Where it was written, or why not.
    #[serde(flatten)]
    pub delivery: Delivery,
}

/// Where a record was written, or why it was not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Delivery {
    /// Acknowledged: committed on a majority of the partition's replicas.
    Acked(AckView),
    /// Not delivered.
    Failed {
        /// What went wrong.
        error: ErrorView,
    },
}

/// One acknowledged record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AckView {
    /// Partition written.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// The chain hash (hex) of the log entry holding it (its stored batch).
    pub chain_hash: String,
    /// The log index of that entry.
    pub entry_index: u64,
}

/// Why a record was not delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorView {
    /// The stable error code the node sent (`RECORD_TOO_LARGE`, ...; docs/api.md), `null` for a
    /// failure without one (the node could not be reached, ...).
    pub code: Option<String>,
    /// The whole error.
    pub message: String,
}

impl Outcome {
    fn new(record: u64, key: Option<&Bytes>, result: &std::result::Result<RecordMetadata, ClientError>) -> Self {
        let (key, key_base64) = key.map_or((None, None), |k| output::text_or_base64(k));
        let delivery = match result {
            Ok(meta) => Delivery::Acked(AckView {
                partition: meta.partition,
                offset: meta.offset,
                chain_hash: hex(&meta.chain_hash.0, false),
                entry_index: meta.entry_index,
            }),
            Err(e) => Delivery::Failed {
                error: ErrorView { code: e.code().map(|c| c.as_str().to_string()), message: e.to_string() },
            },
        };
        Self { record, key, key_base64, delivery }
    }
}

/// The table of `-o table`.
fn outcomes_table(outcomes: &[Outcome]) -> String {
    let mut t = Table::new(["record", "partition", "offset", "chain hash", "error"]);
    for o in outcomes {
        match &o.delivery {
            Delivery::Acked(a) => {
                t.row([o.record.to_string(), a.partition.to_string(), a.offset.to_string(), a.chain_hash.clone()])
            }
            Delivery::Failed { error } => {
                t.row([o.record.to_string(), "-".into(), "-".into(), "-".into(), error.message.clone()])
            }
        }
    }
    t.render()
}

/// A record handed to the producer, waiting for its delivery.
struct InFlight {
    record: u64,
    key: Option<Bytes>,
    delivery: DeliveryFuture,
}

/// Reports each delivery as it settles, in input order.
struct Reporter {
    format: Option<OutputFormat>,
    /// Kept for table and YAML, which print at the end.
    outcomes: Vec<Outcome>,
    acked: u64,
    failed: u64,
    first_failure: Option<(u64, ClientError)>,
}

impl Reporter {
    fn settled(
        &mut self,
        record: u64,
        key: Option<&Bytes>,
        result: std::result::Result<RecordMetadata, ClientError>,
    ) -> Result<()> {
        let outcome = Outcome::new(record, key, &result);
        match self.format {
            Some(OutputFormat::Json) => output::print_stdout(&format!("{}\n", output::to_json_line(&outcome)?))?,
            Some(_) => self.outcomes.push(outcome),
            None => {}
        }
        match result {
            Ok(_) => self.acked += 1,
            Err(e) => {
                self.failed += 1;
                if self.format != Some(OutputFormat::Json) {
                    eprintln!("record {record} was not delivered: {e}");
                }
                self.first_failure.get_or_insert((record, e));
            }
        }
        Ok(())
    }

    /// Awaits every delivery `rx` yields, in order, until the sending side is done.
    async fn run(mut self, mut rx: mpsc::Receiver<InFlight>) -> Result<Self> {
        while let Some(f) = rx.recv().await {
            let result = f.delivery.await;
            self.settled(f.record, f.key.as_ref(), result)?;
        }
        Ok(self)
    }
}

/// Hands records to the producer and their deliveries to the reporter.
struct Sender<'a> {
    ctx: &'a Ctx,
    producer: shale_client::Producer,
    deliveries: mpsc::Sender<InFlight>,
    sent: u64,
}

impl Sender<'_> {
    async fn send(&mut self, record: ProducerRecord) -> Result<()> {
        let topic = record.topic.clone();
        let key = record.key.clone();
        let delivery = self.producer.send(record).await.map_err(|e| self.ctx.err(format!("produce to {topic}"), e))?;
        let in_flight = InFlight { record: self.sent, key, delivery };
        // Closed only when the reporter stopped on an output error, which `run` reports instead.
        self.deliveries
            .send(in_flight)
            .await
            .map_err(|_| CliError::Output(std::io::Error::from(std::io::ErrorKind::BrokenPipe)))?;
        self.sent += 1;
        Ok(())
    }

    /// Sends what is still queued; the reporter then sees every delivery settle.
    async fn finish(self) -> Result<u64> {
        self.producer.flush().await.map_err(|e| self.ctx.err("flush", e))?;
        let _ = self.producer.close().await;
        Ok(self.sent)
    }
}

/// How each input unit becomes a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordTemplate {
    /// The topic.
    pub topic: String,
    /// Fixed key.
    pub key: Option<String>,
    /// Split lines into key and value at this separator.
    pub key_separator: Option<String>,
    /// Headers of every record.
    pub headers: Vec<(String, String)>,
    /// Explicit partition.
    pub partition: Option<u32>,
}

impl RecordTemplate {
    /// A record for one input unit (`line` is its 1-based line number, for errors).
    pub fn record(&self, payload: &[u8], line: u64) -> Result<ProducerRecord> {
        let (key, value) = match &self.key_separator {
            Some(sep) => {
                let at = find(payload, sep.as_bytes()).ok_or_else(|| {
                    CliError::BadInput(format!("line {line} has no key separator {sep:?}: give lines as KEY{sep}VALUE"))
                })?;
                (Some(Bytes::copy_from_slice(&payload[..at])), Bytes::copy_from_slice(&payload[at + sep.len()..]))
            }
            None => (self.key.as_ref().map(|k| Bytes::from(k.clone())), Bytes::copy_from_slice(payload)),
        };
        let mut r = ProducerRecord::new(self.topic.clone(), value);
        r.key = key;
        r.partition = self.partition;
        for (k, v) in &self.headers {
            r = r.header(k.clone(), Bytes::from(v.clone()));
        }
        Ok(r)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A line without its `\n` / `\r\n` ending.
pub fn strip_line_ending(mut line: &[u8]) -> &[u8] {
    if let Some(rest) = line.strip_suffix(b"\n") {
        line = rest;
        if let Some(rest) = line.strip_suffix(b"\r") {
            line = rest;
        }
    }
    line
}

async fn read_file(path: &PathBuf) -> Result<Vec<u8>> {
    tokio::fs::read(path).await.map_err(|source| CliError::Input { path: path.clone(), source })
}

/// Reads the input the flags name and hands each record to `sender`.
async fn send_input(a: &ProduceArgs, template: &RecordTemplate, sender: &mut Sender<'_>) -> Result<()> {
    let stdin_path = || PathBuf::from("-");
    if !a.files.is_empty() {
        for (i, path) in a.files.iter().enumerate() {
            let data = read_file(path).await?;
            sender.send(template.record(&data, i as u64 + 1)?).await?;
        }
    } else if a.whole {
        let mut data = Vec::new();
        tokio::io::stdin()
            .read_to_end(&mut data)
            .await
            .map_err(|source| CliError::Input { path: stdin_path(), source })?;
        sender.send(template.record(&data, 1)?).await?;
    } else {
        if std::io::stdin().is_terminal() {
            eprintln!("reading records from stdin, one per line; Ctrl-D to send and finish");
        }
        let mut reader = BufReader::new(tokio::io::stdin());
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .await
                .map_err(|source| CliError::Input { path: stdin_path(), source })?;
            if n == 0 {
                break;
            }
            number += 1;
            sender.send(template.record(strip_line_ending(&line), number)?).await?;
        }
    }
    Ok(())
}

/// Runs `shale produce`.
///
/// Every record read is sent; one that fails does not stop the others. Each delivery is reported
/// as it settles (`-o json`: one JSON object per line, an acknowledgement or an error; otherwise
/// failures on stderr and, with `-o table|yaml`, every outcome at the end). Exit 1 if any record
/// was not delivered, naming the first.
pub async fn run(ctx: &Ctx, a: ProduceArgs) -> Result<()> {
    let template = RecordTemplate {
        topic: a.topic.clone(),
        key: a.key.clone(),
        key_separator: a.key_separator.clone(),
        headers: a.headers.clone(),
        partition: a.partition,
    };
    let client = ctx.client()?;
    let (tx, rx) = mpsc::channel(MAX_PENDING_DELIVERIES);
    let reporter = Reporter { format: a.output, outcomes: Vec::new(), acked: 0, failed: 0, first_failure: None };
    let reporting = tokio::spawn(reporter.run(rx));
    let mut sender = Sender { ctx, producer: client.producer(ProducerConfig::default()), deliveries: tx, sent: 0 };
    // Records read before a bad input line are still delivered; the input error is reported after.
    let input_result = send_input(&a, &template, &mut sender).await;
    let finished = sender.finish().await;
    let report = reporting
        .await
        .map_err(|e| CliError::Output(std::io::Error::other(format!("the output task failed: {e}"))))??;
    let sent = finished?;
    let records = |n: u64| format!("{n} record{}", if n == 1 { "" } else { "s" });
    let failed = if report.failed > 0 { format!(" ({} not delivered)", report.failed) } else { String::new() };
    if let Err(e) = input_result {
        eprintln!("produced {} to {} before the error{failed}", records(report.acked), a.topic);
        return Err(e);
    }
    eprintln!("produced {} to {}{failed}", records(report.acked), a.topic);
    if let Some(format @ (OutputFormat::Table | OutputFormat::Yaml)) = a.output {
        output::emit(format, &report.outcomes, |o| outcomes_table(o))?;
    }
    match report.first_failure {
        Some((record, e)) => Err(ctx.err(
            format!("{} of {} to {} not delivered; the first, record {record}", report.failed, records(sent), a.topic),
            e,
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> RecordTemplate {
        RecordTemplate {
            topic: "t".into(),
            key: None,
            key_separator: None,
            headers: vec![("src".into(), "cli".into())],
            partition: Some(2),
        }
    }

    #[test]
    fn lines_lose_their_endings_only() {
        assert_eq!(strip_line_ending(b"abc\n"), b"abc");
        assert_eq!(strip_line_ending(b"abc\r\n"), b"abc");
        assert_eq!(strip_line_ending(b"abc"), b"abc");
        assert_eq!(strip_line_ending(b"a\rb\n"), b"a\rb");
        assert_eq!(strip_line_ending(b"\n"), b"");
    }

    #[test]
    fn a_fixed_key_and_headers_go_on_every_record() {
        let t = RecordTemplate { key: Some("k1".into()), ..template() };
        let r = t.record(b"hello", 1).unwrap();
        assert_eq!(r.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(&r.value[..], b"hello");
        assert_eq!(r.partition, Some(2));
        assert_eq!(r.headers.len(), 1);
        assert_eq!(r.headers[0].key, "src");
        assert_eq!(&r.headers[0].value[..], b"cli");
    }

    #[test]
    fn key_separator_splits_at_the_first_occurrence() {
        let t = RecordTemplate { key_separator: Some("::".into()), ..template() };
        let r = t.record(b"user-1::a::b", 1).unwrap();
        assert_eq!(r.key.as_deref(), Some(&b"user-1"[..]));
        assert_eq!(&r.value[..], b"a::b");
        let err = t.record(b"no separator here", 7).unwrap_err();
        assert!(err.to_string().contains("line 7"), "{err}");
        assert_eq!(err.exit_code(), 1);
    }
}
