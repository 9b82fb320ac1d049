//! Client quotas as the metadata group replicates them, pure: how many bytes per second a principal
//! may produce and consume (Kafka's client quotas, per user).
//!
//! - A quota is set for an [`QuotaEntity`]: the **default** (`*`, every user and anonymous caller
//!   without an override) or one **user** (a user or client-certificate name, as ACL rules name it).
//! - Each [`Quota`] field is a rate in bytes per second, or unset. A user's effective quota takes
//!   each field from its own entry when set there, else from the default entry; a field set
//!   nowhere is unlimited ([`QuotaState::effective`]).
//! - Nodes acting for themselves are never subject to a quota (the node decides that; this module
//!   only knows user names).
//!
//! Each node enforces the rates on its own (`shale-node`'s `quota` module).

use std::collections::BTreeMap;
use std::fmt;

use crate::cluster::access::{self, ANY_PRINCIPAL, MAX_PRINCIPAL_BYTES, validate_principal};
use crate::cluster::api::ClusterError;
use crate::cluster::layout::{Reader, Writer, quota_entry};

/// Most quota entries a cluster holds.
pub const MAX_QUOTAS: usize = 10_000;

/// Who a quota entry applies to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QuotaEntity {
    /// Every user (and anonymous caller) without an entry of its own; written `*`.
    Default,
    /// One user or client-certificate name.
    User(String),
}

impl QuotaEntity {
    /// `*` is the default, anything else a user name (validated as a principal).
    pub fn parse(text: &str) -> Result<Self, ClusterError> {
        if text == ANY_PRINCIPAL {
            return Ok(QuotaEntity::Default);
        }
        validate_principal(text)?;
        Ok(QuotaEntity::User(text.to_string()))
    }

    /// The form [`QuotaEntity::parse`] reads.
    pub fn as_str(&self) -> &str {
        match self {
            QuotaEntity::Default => ANY_PRINCIPAL,
            QuotaEntity::User(name) => name,
        }
    }
}

impl fmt::Display for QuotaEntity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuotaEntity::Default => f.write_str("default (*)"),
            QuotaEntity::User(name) => write!(f, "user:{name}"),
        }
    }
}

/// Rates in bytes per second; `None`: not set by this entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Quota {
    /// Record bytes a principal may produce per second (the records' keys, values and headers).
    pub produce_bytes_per_sec: Option<u64>,
    /// Bytes a principal may be served per second by Fetch and Subscribe.
    pub consume_bytes_per_sec: Option<u64>,
}

impl Quota {
    /// Checks the fields: a set rate is at least 1 byte per second, and an entry sets something.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |field, reason: &str| Err(ClusterError::InvalidArgument { field, reason: reason.to_string() });
        if self.produce_bytes_per_sec == Some(0) {
            return bad("produce_bytes_per_sec", "a rate is at least 1 byte per second");
        }
        if self.consume_bytes_per_sec == Some(0) {
            return bad("consume_bytes_per_sec", "a rate is at least 1 byte per second");
        }
        if self.produce_bytes_per_sec.is_none() && self.consume_bytes_per_sec.is_none() {
            return bad("quota", "sets no rate (remove the entry instead)");
        }
        Ok(())
    }

    /// Each field from `self` where set, else from `fallback`.
    pub fn or(self, fallback: Quota) -> Quota {
        Quota {
            produce_bytes_per_sec: self.produce_bytes_per_sec.or(fallback.produce_bytes_per_sec),
            consume_bytes_per_sec: self.consume_bytes_per_sec.or(fallback.consume_bytes_per_sec),
        }
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<u64>| v.map_or_else(|| "unset".to_string(), |v| format!("{v} B/s"));
        write!(f, "produce {}, consume {}", show(self.produce_bytes_per_sec), show(self.consume_bytes_per_sec))
    }
}

/// Why a quota command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuotaRejection {
    /// No entry for that entity.
    Unknown(String),
    /// A field is out of range, or the table is full.
    Invalid(String),
}

/// The quota entries: the quota part of the metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuotaState {
    entries: BTreeMap<QuotaEntity, Quota>,
}

impl QuotaState {
    /// Every entry, the default first, then users by name.
    pub fn entries(&self) -> &BTreeMap<QuotaEntity, Quota> {
        &self.entries
    }

    /// The quota that applies to `user` (`None`: an anonymous caller, who gets the default).
    pub fn effective(&self, user: Option<&str>) -> Quota {
        let default = self.entries.get(&QuotaEntity::Default).copied().unwrap_or_default();
        let own = user.and_then(|u| self.entries.get(&QuotaEntity::User(u.to_string()))).copied();
        own.map_or(default, |q| q.or(default))
    }

    /// Sets (replaces) an entity's entry.
    pub fn set(&mut self, entity: &QuotaEntity, quota: Quota) -> Result<(), QuotaRejection> {
        quota.validate().map_err(|e| QuotaRejection::Invalid(e.to_string()))?;
        if let QuotaEntity::User(name) = entity {
            validate_principal(name).map_err(|e| QuotaRejection::Invalid(e.to_string()))?;
        }
        if self.entries.len() >= MAX_QUOTAS && !self.entries.contains_key(entity) {
            return Err(QuotaRejection::Invalid(format!(
                "the cluster holds the maximum of {MAX_QUOTAS} quota entries"
            )));
        }
        self.entries.insert(entity.clone(), quota);
        Ok(())
    }

    /// Removes an entity's entry.
    pub fn remove(&mut self, entity: &QuotaEntity) -> Result<(), QuotaRejection> {
        self.entries.remove(entity).map(|_| ()).ok_or_else(|| QuotaRejection::Unknown(entity.to_string()))
    }

    /// Appends the entries to a metadata snapshot (its version-5 tail).
    pub fn encode(&self, w: &mut Writer) {
        w.u32(self.entries.len() as u32);
        for (entity, quota) in &self.entries {
            write_entry(w, entity, quota);
        }
    }

    /// Reads what [`QuotaState::encode`] wrote.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, ClusterError> {
        let mut state = QuotaState::default();
        let raw = u64::from(r.u32()?);
        let n = r.count(raw, MAX_QUOTAS, quota_entry::MIN_LEN)?;
        for _ in 0..n {
            let (entity, quota) = read_entry(r)?;
            state.entries.insert(entity, quota);
        }
        Ok(state)
    }
}

fn write_rate(w: &mut Writer, rate: Option<u64>) {
    // 0 is never a valid rate: it stands for "unset".
    w.u64(rate.unwrap_or(0));
}

fn read_rate(r: &mut Reader<'_>) -> Result<Option<u64>, ClusterError> {
    Ok(Some(r.u64()?).filter(|v| *v != 0))
}

/// `[kind:u8][name:str16][produce:u64][consume:u64]` (kind 1 default with an empty name, 2 user;
/// a rate of 0 is unset).
pub fn write_entry(w: &mut Writer, entity: &QuotaEntity, quota: &Quota) {
    write_entity(w, entity);
    write_rate(w, quota.produce_bytes_per_sec);
    write_rate(w, quota.consume_bytes_per_sec);
}

/// Reads what [`write_entry`] wrote.
pub fn read_entry(r: &mut Reader<'_>) -> Result<(QuotaEntity, Quota), ClusterError> {
    let entity = read_entity(r)?;
    let quota = Quota { produce_bytes_per_sec: read_rate(r)?, consume_bytes_per_sec: read_rate(r)? };
    Ok((entity, quota))
}

/// `[kind:u8][name:str16]`.
pub fn write_entity(w: &mut Writer, entity: &QuotaEntity) {
    match entity {
        QuotaEntity::Default => w.u8(quota_entry::ENTITY_DEFAULT).str16(""),
        QuotaEntity::User(name) => w.u8(quota_entry::ENTITY_USER).str16(name),
    };
}

/// Reads what [`write_entity`] wrote.
pub fn read_entity(r: &mut Reader<'_>) -> Result<QuotaEntity, ClusterError> {
    let kind = r.u8()?;
    let name = r.str16(MAX_PRINCIPAL_BYTES)?;
    match kind {
        quota_entry::ENTITY_DEFAULT if name.is_empty() => Ok(QuotaEntity::Default),
        quota_entry::ENTITY_USER if access::validate_principal(&name).is_ok() => Ok(QuotaEntity::User(name)),
        other => Err(r.error(format!("bad quota entity kind {other} (name of {} bytes)", name.len()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(produce: Option<u64>, consume: Option<u64>) -> Quota {
        Quota { produce_bytes_per_sec: produce, consume_bytes_per_sec: consume }
    }

    #[test]
    fn a_users_entry_overrides_the_default_field_by_field() {
        let mut s = QuotaState::default();
        assert_eq!(s.effective(Some("alice")), Quota::default(), "no entry: unlimited");
        s.set(&QuotaEntity::Default, q(Some(100), Some(200))).unwrap();
        s.set(&QuotaEntity::User("alice".into()), q(Some(5_000), None)).unwrap();
        assert_eq!(s.effective(Some("alice")), q(Some(5_000), Some(200)));
        assert_eq!(s.effective(Some("bob")), q(Some(100), Some(200)));
        assert_eq!(s.effective(None), q(Some(100), Some(200)), "anonymous callers get the default");
        s.remove(&QuotaEntity::Default).unwrap();
        assert_eq!(s.effective(Some("alice")), q(Some(5_000), None));
        assert_eq!(s.effective(Some("bob")), Quota::default());
        assert_eq!(s.remove(&QuotaEntity::Default), Err(QuotaRejection::Unknown("default (*)".into())));
    }

    #[test]
    fn bad_entries_are_refused() {
        let mut s = QuotaState::default();
        assert!(matches!(s.set(&QuotaEntity::Default, q(None, None)), Err(QuotaRejection::Invalid(_))));
        assert!(matches!(s.set(&QuotaEntity::Default, q(Some(0), None)), Err(QuotaRejection::Invalid(_))));
        assert!(matches!(s.set(&QuotaEntity::User("a:b".into()), q(Some(1), None)), Err(QuotaRejection::Invalid(_))));
        assert_eq!(QuotaEntity::parse("*").unwrap(), QuotaEntity::Default);
        assert_eq!(QuotaEntity::parse("alice").unwrap(), QuotaEntity::User("alice".into()));
        assert!(QuotaEntity::parse("node:1").is_err());
    }

    #[test]
    fn entries_round_trip() {
        let mut s = QuotaState::default();
        s.set(&QuotaEntity::Default, q(Some(1), None)).unwrap();
        s.set(&QuotaEntity::User("alice".into()), q(None, Some(u64::MAX))).unwrap();
        let mut w = Writer::new();
        s.encode(&mut w);
        let bytes = w.finish();
        let mut r = Reader::new("quotas", &bytes);
        assert_eq!(QuotaState::decode(&mut r).unwrap(), s);
        r.finish().unwrap();
        for cut in 0..bytes.len() {
            let mut r = Reader::new("quotas", &bytes[..cut]);
            assert!(QuotaState::decode(&mut r).and_then(|_| r.finish()).is_err(), "cut at {cut}");
        }
    }
}
