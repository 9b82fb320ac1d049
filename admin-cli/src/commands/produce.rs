//! `shale produce TOPIC`: records from stdin lines, all of stdin, or files.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::path::PathBuf;

use bytes::Bytes;
use serde::Serialize;
use shale_client::{DeliveryFuture, ProducerConfig, ProducerRecord, RecordMetadata};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::cli::ProduceArgs;
use crate::context::Ctx;
use crate::error::{CliError, Result};
use crate::output::{self, Table, hex};

/// Deliveries awaited in order while more records are read (bounds memory on long inputs).
const MAX_PENDING_DELIVERIES: usize = 10_000;

/// One acknowledged record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AckView {
    /// Partition written.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// Its chain hash (hex).
    pub chain_hash: String,
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

/// Sends records and collects acknowledgements, keeping a bounded number in flight.
struct Sender<'a> {
    ctx: &'a Ctx,
    producer: shale_client::Producer,
    pending: VecDeque<DeliveryFuture>,
    acks: Vec<AckView>,
    keep_acks: bool,
    sent: u64,
}

impl Sender<'_> {
    async fn send(&mut self, record: ProducerRecord) -> Result<()> {
        let topic = record.topic.clone();
        let delivery = self.producer.send(record).await.map_err(|e| self.ctx.err(format!("produce to {topic}"), e))?;
        self.pending.push_back(delivery);
        self.sent += 1;
        if self.pending.len() >= MAX_PENDING_DELIVERIES {
            self.settle_one().await?;
        }
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<()> {
        if let Some(d) = self.pending.pop_front() {
            let meta: RecordMetadata = d.await.map_err(|e| self.ctx.err("produce", e))?;
            if self.keep_acks {
                self.acks.push(AckView {
                    partition: meta.partition,
                    offset: meta.offset,
                    chain_hash: hex(&meta.chain_hash, false),
                });
            }
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<(u64, Vec<AckView>)> {
        self.producer.flush().await.map_err(|e| self.ctx.err("flush", e))?;
        while !self.pending.is_empty() {
            self.settle_one().await?;
        }
        let _ = self.producer.close().await;
        Ok((self.sent, self.acks))
    }
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
pub async fn run(ctx: &Ctx, a: ProduceArgs) -> Result<()> {
    let template = RecordTemplate {
        topic: a.topic.clone(),
        key: a.key.clone(),
        key_separator: a.key_separator.clone(),
        headers: a.headers.clone(),
        partition: a.partition,
    };
    let client = ctx.client()?;
    let mut sender = Sender {
        ctx,
        producer: client.producer(ProducerConfig::default()),
        pending: VecDeque::new(),
        acks: Vec::new(),
        keep_acks: a.output.is_some(),
        sent: 0,
    };
    // Records read before a bad input line are still delivered; the input error is reported after.
    let input_result = send_input(&a, &template, &mut sender).await;
    let (sent, acks) = sender.finish().await?;
    if let Err(e) = input_result {
        eprintln!("produced {sent} record{} to {} before the error", if sent == 1 { "" } else { "s" }, a.topic);
        return Err(e);
    }
    eprintln!("produced {sent} record{} to {}", if sent == 1 { "" } else { "s" }, a.topic);
    if let Some(format) = a.output {
        output::emit(format, &acks, |acks| {
            let mut t = Table::new(["partition", "offset", "chain hash"]);
            for ack in acks {
                t.row([ack.partition.to_string(), ack.offset.to_string(), ack.chain_hash.clone()]);
            }
            t.render()
        })?;
    }
    Ok(())
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
