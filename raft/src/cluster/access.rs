//! Users and ACLs as the metadata group replicates them, pure: who may do what.
//!
//! - A **user** is a name and one [`Credential`]: the SHA-256 of its bearer token's secret, or a
//!   SCRAM-SHA-256 credential of its password (RFC 5802/7677: salt, iteration count, StoredKey,
//!   ServerKey). Neither the secret nor the password is ever stored or replicated (see
//!   `shale_client::token` and `shale_client::scram`).
//! - An **ACL rule** allows one principal (a user or client-certificate name, or `*` for every
//!   authenticated or anonymous caller) one [`Operation`] on the resources a [`ResourcePattern`]
//!   matches. There are only allow rules: what no rule allows is denied (once the node turns
//!   authorization on). Rules on a topic that allow any topic operation also allow `describe` on
//!   it (a producer or consumer must be able to look the topic up).
//!
//! The node decides each request with [`AccessState::allows`] against its applied metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use crate::cluster::api::ClusterError;
use crate::cluster::layout::{Reader, Writer};

/// Most users a cluster holds.
pub const MAX_USERS: usize = 10_000;
/// Most ACL rules a cluster holds.
pub const MAX_ACLS: usize = 10_000;
/// Longest principal (user or client-certificate) name, in bytes.
pub const MAX_PRINCIPAL_BYTES: usize = 64;
/// Longest resource name or prefix in a rule, in bytes (a topic name's limit; group names are
/// shorter or equal in practice and are checked against their own limit at the edge).
pub const MAX_RESOURCE_BYTES: usize = 255;
/// Bytes of a token hash (SHA-256).
pub const TOKEN_HASH_BYTES: usize = 32;
/// The principal pattern that matches every caller.
pub const ANY_PRINCIPAL: &str = "*";
/// Bytes of a SCRAM-SHA-256 StoredKey or ServerKey.
pub const SCRAM_KEY_BYTES: usize = 32;
/// Fewest PBKDF2 iterations a SCRAM credential may have (RFC 7677's minimum).
pub const MIN_SCRAM_ITERATIONS: u32 = 4096;
/// Most PBKDF2 iterations a SCRAM credential may have: a node runs them for every password it has
/// not yet verified, so the count bounds the CPU one authentication costs.
pub const MAX_SCRAM_ITERATIONS: u32 = 1_000_000;
/// Shortest SCRAM salt, in bytes.
pub const MIN_SCRAM_SALT_BYTES: usize = 16;
/// Longest SCRAM salt, in bytes.
pub const MAX_SCRAM_SALT_BYTES: usize = 64;
/// Credential kind byte in a snapshot's user entry: a bearer token's hash.
pub const CREDENTIAL_TOKEN: u8 = 1;
/// Credential kind byte in a snapshot's user entry: a SCRAM-SHA-256 password credential.
pub const CREDENTIAL_SCRAM_SHA_256: u8 = 2;

/// A password as SCRAM-SHA-256 keeps it (RFC 5802 section 3): `SaltedPassword = PBKDF2-HMAC-SHA-256
/// (password, salt, iterations)`, `StoredKey = SHA-256(HMAC(SaltedPassword, "Client Key"))`,
/// `ServerKey = HMAC(SaltedPassword, "Server Key")`. The password cannot be recovered from it; a
/// node checks a presented password by deriving StoredKey again.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    /// Random salt, [`MIN_SCRAM_SALT_BYTES`]..=[`MAX_SCRAM_SALT_BYTES`] bytes.
    pub salt: Vec<u8>,
    /// PBKDF2 iterations, [`MIN_SCRAM_ITERATIONS`]..=[`MAX_SCRAM_ITERATIONS`].
    pub iterations: u32,
    /// `SHA-256(ClientKey)`.
    pub stored_key: [u8; SCRAM_KEY_BYTES],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; SCRAM_KEY_BYTES],
}

impl fmt::Debug for ScramCredential {
    /// Shows the parameters, not the keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredential")
            .field("salt_bytes", &self.salt.len())
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredential {
    /// Checks the salt length and iteration count.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if !(MIN_SCRAM_SALT_BYTES..=MAX_SCRAM_SALT_BYTES).contains(&self.salt.len()) {
            return Err(ClusterError::InvalidArgument {
                field: "salt",
                reason: format!(
                    "{} bytes (a SCRAM salt is {MIN_SCRAM_SALT_BYTES}..={MAX_SCRAM_SALT_BYTES} bytes)",
                    self.salt.len()
                ),
            });
        }
        if !(MIN_SCRAM_ITERATIONS..=MAX_SCRAM_ITERATIONS).contains(&self.iterations) {
            return Err(ClusterError::InvalidArgument {
                field: "iterations",
                reason: format!("{} is not in {MIN_SCRAM_ITERATIONS}..={MAX_SCRAM_ITERATIONS}", self.iterations),
            });
        }
        Ok(())
    }
}

/// How a user authenticates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A bearer token: SHA-256 of its secret.
    Token([u8; TOKEN_HASH_BYTES]),
    /// A password, as its SCRAM-SHA-256 credential.
    Password(ScramCredential),
}

/// Checks a principal name: 1..=64 bytes of ASCII letters, digits, `.`, `_`, `-` (so it can never
/// look like `*`, a node (`node:<id>`) or contain a separator).
pub fn validate_principal(name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_PRINCIPAL_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ClusterError::InvalidArgument {
            field: "principal",
            reason: format!(
                "{:?} is not 1..={MAX_PRINCIPAL_BYTES} ASCII letters, digits, '.', '_' or '-'",
                truncate(name, MAX_PRINCIPAL_BYTES + 8)
            ),
        })
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

macro_rules! operations {
    ($( $(#[$doc:meta])* $variant:ident => $text:literal, $code:literal; )*) => {
        /// What a request does to a resource (an ACL rule allows one operation).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Operation {
            $( $(#[$doc])* $variant, )*
        }

        impl Operation {
            /// Every operation.
            pub const ALL: &'static [Operation] = &[$(Operation::$variant),*];

            /// The name used by the CLI, the API and the docs.
            pub fn as_str(self) -> &'static str {
                match self { $(Operation::$variant => $text,)* }
            }

            /// The byte stored in commands and snapshots.
            pub fn code(self) -> u8 {
                match self { $(Operation::$variant => $code,)* }
            }

            /// The operation stored as `code`.
            pub fn from_code(code: u8) -> Option<Self> {
                match code { $($code => Some(Operation::$variant),)* _ => None }
            }
        }

        impl FromStr for Operation {
            type Err = ClusterError;
            fn from_str(s: &str) -> Result<Self, ClusterError> {
                match s {
                    $($text => Ok(Operation::$variant),)*
                    _ => Err(ClusterError::InvalidArgument {
                        field: "operation",
                        reason: format!("{:?} is not one of {}", truncate(s, 32), [$($text),*].join(", ")),
                    }),
                }
            }
        }
    };
}

operations! {
    /// Produce to a topic.
    Produce => "produce", 1;
    /// Fetch from or subscribe to a topic.
    Consume => "consume", 2;
    /// Describe a topic (also implied by every other topic operation) or the cluster.
    Describe => "describe", 3;
    /// Create a topic.
    Create => "create", 4;
    /// Delete a topic.
    Delete => "delete", 5;
    /// Change a topic's settings.
    Alter => "alter", 6;
    /// Read and commit a consumer group's offsets.
    GroupRead => "group-read", 7;
    /// Cluster operations: membership, leadership, maintenance, users and ACLs.
    ClusterAdmin => "cluster-admin", 8;
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One resource a request touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource<'a> {
    /// A topic by name.
    Topic(&'a str),
    /// A consumer group by name.
    Group(&'a str),
    /// The cluster itself.
    Cluster,
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Topic(t) => write!(f, "topic {t}"),
            Resource::Group(g) => write!(f, "group {g}"),
            Resource::Cluster => f.write_str("cluster"),
        }
    }
}

/// The resources a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourcePattern {
    /// One topic.
    Topic(String),
    /// Every topic whose name starts with this (the empty prefix: every topic).
    TopicPrefix(String),
    /// One consumer group.
    Group(String),
    /// The cluster.
    Cluster,
}

impl ResourcePattern {
    fn kind(&self) -> u8 {
        match self {
            ResourcePattern::Topic(_) => 1,
            ResourcePattern::TopicPrefix(_) => 2,
            ResourcePattern::Group(_) => 3,
            ResourcePattern::Cluster => 4,
        }
    }

    fn name(&self) -> &str {
        match self {
            ResourcePattern::Topic(n) | ResourcePattern::TopicPrefix(n) | ResourcePattern::Group(n) => n,
            ResourcePattern::Cluster => "",
        }
    }

    /// Whether the pattern covers `resource`.
    pub fn matches(&self, resource: Resource<'_>) -> bool {
        match (self, resource) {
            (ResourcePattern::Topic(p), Resource::Topic(t)) => p == t,
            (ResourcePattern::TopicPrefix(p), Resource::Topic(t)) => t.starts_with(p.as_str()),
            (ResourcePattern::Group(p), Resource::Group(g)) => p == g,
            (ResourcePattern::Cluster, Resource::Cluster) => true,
            _ => false,
        }
    }

    /// The pattern `kind` (`topic`, `topic-prefix`, `group`, `cluster`) names with `name`.
    pub fn parse(kind: &str, name: &str) -> Result<Self, ClusterError> {
        let pattern = match kind {
            "topic" => ResourcePattern::Topic(name.to_string()),
            "topic-prefix" => ResourcePattern::TopicPrefix(name.to_string()),
            "group" => ResourcePattern::Group(name.to_string()),
            "cluster" => ResourcePattern::Cluster,
            other => {
                return Err(ClusterError::InvalidArgument {
                    field: "resource",
                    reason: format!("{:?} is not topic, topic-prefix, group or cluster", truncate(other, 32)),
                });
            }
        };
        pattern.validate()?;
        Ok(pattern)
    }

    /// The kind as [`ResourcePattern::parse`] reads it.
    pub fn kind_str(&self) -> &'static str {
        match self {
            ResourcePattern::Topic(_) => "topic",
            ResourcePattern::TopicPrefix(_) => "topic-prefix",
            ResourcePattern::Group(_) => "group",
            ResourcePattern::Cluster => "cluster",
        }
    }

    /// The name or prefix (empty for the cluster).
    pub fn name_str(&self) -> &str {
        self.name()
    }

    fn validate(&self) -> Result<(), ClusterError> {
        let bad = |reason: String| Err(ClusterError::InvalidArgument { field: "resource", reason });
        match self {
            ResourcePattern::Topic(n) | ResourcePattern::Group(n) if n.is_empty() => {
                bad(format!("a {} rule needs a name", self.kind_str()))
            }
            _ if self.name().len() > MAX_RESOURCE_BYTES => {
                bad(format!("a name of {} bytes (at most {MAX_RESOURCE_BYTES})", self.name().len()))
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for ResourcePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourcePattern::Cluster => f.write_str("cluster"),
            other => write!(f, "{}:{}", other.kind_str(), other.name()),
        }
    }
}

/// An allow rule: `principal` (a name or `*`) may do `operation` on what `resource` matches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AclRule {
    /// A principal name, or [`ANY_PRINCIPAL`].
    pub principal: String,
    /// The operation allowed.
    pub operation: Operation,
    /// The resources it is allowed on.
    pub resource: ResourcePattern,
}

impl AclRule {
    /// Checks the rule's fields.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.principal != ANY_PRINCIPAL {
            validate_principal(&self.principal)?;
        }
        self.resource.validate()?;
        let fits = match &self.resource {
            ResourcePattern::Topic(_) | ResourcePattern::TopicPrefix(_) => {
                !matches!(self.operation, Operation::GroupRead | Operation::ClusterAdmin)
            }
            ResourcePattern::Group(_) => self.operation == Operation::GroupRead,
            ResourcePattern::Cluster => matches!(self.operation, Operation::ClusterAdmin | Operation::Describe),
        };
        if !fits {
            return Err(ClusterError::InvalidArgument {
                field: "operation",
                reason: format!("{} does not apply to {}", self.operation, self.resource.kind_str()),
            });
        }
        Ok(())
    }

    /// Whether the rule allows `principal` to do `operation` on `resource`.
    pub fn allows(&self, principal: Option<&str>, operation: Operation, resource: Resource<'_>) -> bool {
        let who = self.principal == ANY_PRINCIPAL || principal.is_some_and(|p| p == self.principal);
        let what =
            self.operation == operation || (operation == Operation::Describe && matches!(resource, Resource::Topic(_)));
        who && what && self.resource.matches(resource)
    }
}

impl fmt::Display for AclRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "allow {} {} on {}", self.principal, self.operation, self.resource)
    }
}

/// Users (name -> credential) and ACL rules: the access part of the metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessState {
    users: BTreeMap<String, Credential>,
    acls: BTreeSet<AclRule>,
}

/// The rules naming exactly `who`, found by range in the sorted set.
fn rules_of<'a>(acls: &'a BTreeSet<AclRule>, who: &'a str) -> impl Iterator<Item = &'a AclRule> + 'a {
    // The smallest rule of `who`: the first operation and the smallest resource sort first.
    let first = AclRule {
        principal: who.to_string(),
        operation: Operation::Produce,
        resource: ResourcePattern::Topic(String::new()),
    };
    acls.range(first..).take_while(move |r| r.principal == who)
}

/// Why an access command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessRejection {
    /// A user of that name exists.
    UserExists(String),
    /// No user of that name.
    UnknownUser(String),
    /// No such rule.
    UnknownAcl(String),
    /// A field is out of range, or a table is full.
    Invalid(String),
}

impl AccessState {
    /// Users by name with their credentials.
    pub fn users(&self) -> &BTreeMap<String, Credential> {
        &self.users
    }

    /// The rules, sorted.
    pub fn acls(&self) -> &BTreeSet<AclRule> {
        &self.acls
    }

    /// A token user's token hash (`None` for an unknown user or a password user).
    pub fn token_hash(&self, user: &str) -> Option<&[u8; TOKEN_HASH_BYTES]> {
        match self.users.get(user)? {
            Credential::Token(hash) => Some(hash),
            Credential::Password(_) => None,
        }
    }

    /// A password user's SCRAM credential (`None` for an unknown user or a token user).
    pub fn scram(&self, user: &str) -> Option<&ScramCredential> {
        match self.users.get(user)? {
            Credential::Password(c) => Some(c),
            Credential::Token(_) => None,
        }
    }

    /// Whether some rule allows `principal` (`None`: an anonymous caller, matched by `*` rules
    /// only) to do `operation` on `resource`.
    pub fn allows(&self, principal: Option<&str>, operation: Operation, resource: Resource<'_>) -> bool {
        // Rules sort by principal first: only the caller's and `*`'s are looked at.
        let mine = principal.filter(|p| *p != ANY_PRINCIPAL).into_iter().flat_map(|p| rules_of(&self.acls, p));
        rules_of(&self.acls, ANY_PRINCIPAL).chain(mine).any(|r| r.allows(principal, operation, resource))
    }

    /// Adds a token user.
    pub fn create_user(&mut self, name: &str, hash: [u8; TOKEN_HASH_BYTES]) -> Result<(), AccessRejection> {
        self.create(name, Credential::Token(hash))
    }

    /// Adds a password user.
    pub fn create_password_user(&mut self, name: &str, credential: &ScramCredential) -> Result<(), AccessRejection> {
        credential.validate().map_err(|e| AccessRejection::Invalid(e.to_string()))?;
        self.create(name, Credential::Password(credential.clone()))
    }

    /// Gives an existing user (token or password) a new password: its old token or password stops
    /// working.
    pub fn set_password(&mut self, name: &str, credential: &ScramCredential) -> Result<(), AccessRejection> {
        credential.validate().map_err(|e| AccessRejection::Invalid(e.to_string()))?;
        let slot = self.users.get_mut(name).ok_or_else(|| AccessRejection::UnknownUser(name.to_string()))?;
        *slot = Credential::Password(credential.clone());
        Ok(())
    }

    fn create(&mut self, name: &str, credential: Credential) -> Result<(), AccessRejection> {
        validate_principal(name).map_err(|e| AccessRejection::Invalid(e.to_string()))?;
        if self.users.contains_key(name) {
            return Err(AccessRejection::UserExists(name.to_string()));
        }
        if self.users.len() >= MAX_USERS {
            return Err(AccessRejection::Invalid(format!("the cluster holds the maximum of {MAX_USERS} users")));
        }
        self.users.insert(name.to_string(), credential);
        Ok(())
    }

    /// Removes a user (its rules stay: they name a principal, which a client certificate may
    /// still carry).
    pub fn delete_user(&mut self, name: &str) -> Result<(), AccessRejection> {
        self.users.remove(name).map(|_| ()).ok_or_else(|| AccessRejection::UnknownUser(name.to_string()))
    }

    /// Adds a rule (adding one that exists changes nothing and succeeds).
    pub fn add_acl(&mut self, rule: &AclRule) -> Result<(), AccessRejection> {
        rule.validate().map_err(|e| AccessRejection::Invalid(e.to_string()))?;
        if self.acls.len() >= MAX_ACLS && !self.acls.contains(rule) {
            return Err(AccessRejection::Invalid(format!("the cluster holds the maximum of {MAX_ACLS} ACL rules")));
        }
        self.acls.insert(rule.clone());
        Ok(())
    }

    /// Removes a rule.
    pub fn remove_acl(&mut self, rule: &AclRule) -> Result<(), AccessRejection> {
        if self.acls.remove(rule) { Ok(()) } else { Err(AccessRejection::UnknownAcl(rule.to_string())) }
    }

    /// Appends users and rules to a metadata snapshot (its tail since version 3: each user's
    /// credential after a kind byte).
    pub fn encode(&self, w: &mut Writer) {
        w.u32(self.users.len() as u32);
        for (name, credential) in &self.users {
            w.str16(name);
            match credential {
                Credential::Token(hash) => {
                    w.u8(CREDENTIAL_TOKEN);
                    write_hash(w, hash);
                }
                Credential::Password(c) => {
                    w.u8(CREDENTIAL_SCRAM_SHA_256);
                    write_scram(w, c);
                }
            }
        }
        w.u32(self.acls.len() as u32);
        for rule in &self.acls {
            write_rule(w, rule);
        }
    }

    /// Reads what [`AccessState::encode`] wrote; with `typed_credentials` false, the older tail
    /// (snapshot versions 2 and 3) whose users are all token users, `[name][hash]` each.
    pub fn decode(r: &mut Reader<'_>, typed_credentials: bool) -> Result<Self, ClusterError> {
        let mut state = AccessState::default();
        let raw = u64::from(r.u32()?);
        let n = r.count(raw, MAX_USERS, 2 + usize::from(typed_credentials) + TOKEN_HASH_BYTES)?;
        for _ in 0..n {
            let name = r.str16(MAX_PRINCIPAL_BYTES)?;
            let kind = if typed_credentials { r.u8()? } else { CREDENTIAL_TOKEN };
            let credential = match kind {
                CREDENTIAL_TOKEN => Credential::Token(read_hash(r)?),
                CREDENTIAL_SCRAM_SHA_256 => Credential::Password(read_scram(r)?),
                other => return Err(r.error(format!("unknown credential kind {other} of user {name:?}"))),
            };
            state.users.insert(name, credential);
        }
        let raw = u64::from(r.u32()?);
        let n = r.count(raw, MAX_ACLS, 6)?;
        for _ in 0..n {
            state.acls.insert(read_rule(r)?);
        }
        Ok(state)
    }
}

/// `[principal:str16][operation:u8][kind:u8][name:str16]`.
pub fn write_rule(w: &mut Writer, rule: &AclRule) {
    w.str16(&rule.principal).u8(rule.operation.code()).u8(rule.resource.kind()).str16(rule.resource.name());
}

/// Reads what [`write_rule`] wrote.
pub fn read_rule(r: &mut Reader<'_>) -> Result<AclRule, ClusterError> {
    let principal = r.str16(MAX_PRINCIPAL_BYTES)?;
    let code = r.u8()?;
    let operation = Operation::from_code(code).ok_or_else(|| r.error(format!("unknown operation {code}")))?;
    let kind = r.u8()?;
    let name = r.str16(MAX_RESOURCE_BYTES)?;
    let resource = match kind {
        1 => ResourcePattern::Topic(name),
        2 => ResourcePattern::TopicPrefix(name),
        3 => ResourcePattern::Group(name),
        4 if name.is_empty() => ResourcePattern::Cluster,
        other => return Err(r.error(format!("unknown resource kind {other} (name of {} bytes)", name.len()))),
    };
    Ok(AclRule { principal, operation, resource })
}

/// Reads a token hash.
pub fn read_hash(r: &mut Reader<'_>) -> Result<[u8; TOKEN_HASH_BYTES], ClusterError> {
    let mut hash = [0u8; TOKEN_HASH_BYTES];
    for b in &mut hash {
        *b = r.u8()?;
    }
    Ok(hash)
}

/// Writes a token hash.
pub fn write_hash(w: &mut Writer, hash: &[u8; TOKEN_HASH_BYTES]) {
    for b in hash {
        w.u8(*b);
    }
}

/// `[iterations:u32][salt_len:u8][salt][stored_key:32][server_key:32]`.
pub fn write_scram(w: &mut Writer, c: &ScramCredential) {
    w.u32(c.iterations).u8(c.salt.len() as u8);
    for b in &c.salt {
        w.u8(*b);
    }
    write_hash(w, &c.stored_key);
    write_hash(w, &c.server_key);
}

/// Reads what [`write_scram`] wrote, and checks it.
pub fn read_scram(r: &mut Reader<'_>) -> Result<ScramCredential, ClusterError> {
    let iterations = r.u32()?;
    let len = usize::from(r.u8()?);
    if len > MAX_SCRAM_SALT_BYTES {
        return Err(r.error(format!("a SCRAM salt of {len} bytes (at most {MAX_SCRAM_SALT_BYTES})")));
    }
    let mut salt = vec![0u8; len];
    for b in &mut salt {
        *b = r.u8()?;
    }
    let credential = ScramCredential { salt, iterations, stored_key: read_hash(r)?, server_key: read_hash(r)? };
    credential.validate().map_err(|e| r.error(e.to_string()))?;
    Ok(credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(principal: &str, operation: Operation, resource: ResourcePattern) -> AclRule {
        AclRule { principal: principal.into(), operation, resource }
    }

    #[test]
    fn rules_match_principal_operation_and_resource() {
        let mut s = AccessState::default();
        s.add_acl(&rule("alice", Operation::Produce, ResourcePattern::Topic("orders".into()))).unwrap();
        s.add_acl(&rule("*", Operation::Consume, ResourcePattern::TopicPrefix("public.".into()))).unwrap();
        s.add_acl(&rule("bob", Operation::GroupRead, ResourcePattern::Group("g".into()))).unwrap();
        s.add_acl(&rule("ops", Operation::ClusterAdmin, ResourcePattern::Cluster)).unwrap();
        assert!(s.allows(Some("alice"), Operation::Produce, Resource::Topic("orders")));
        assert!(s.allows(Some("alice"), Operation::Describe, Resource::Topic("orders")), "implied describe");
        assert!(!s.allows(Some("alice"), Operation::Consume, Resource::Topic("orders")));
        assert!(!s.allows(Some("alice"), Operation::Produce, Resource::Topic("orders2")));
        assert!(!s.allows(Some("bob"), Operation::Produce, Resource::Topic("orders")));
        assert!(s.allows(None, Operation::Consume, Resource::Topic("public.news")), "* covers anonymous");
        assert!(s.allows(Some("bob"), Operation::Consume, Resource::Topic("public.")));
        assert!(!s.allows(None, Operation::Consume, Resource::Topic("public")));
        assert!(s.allows(Some("bob"), Operation::GroupRead, Resource::Group("g")));
        assert!(!s.allows(Some("bob"), Operation::GroupRead, Resource::Group("g2")));
        assert!(!s.allows(Some("bob"), Operation::Describe, Resource::Cluster));
        assert!(s.allows(Some("ops"), Operation::ClusterAdmin, Resource::Cluster));
        assert!(!s.allows(Some("ops"), Operation::Delete, Resource::Topic("orders")));
        assert!(
            !AccessState::default().allows(Some("alice"), Operation::Describe, Resource::Topic("x")),
            "deny by default"
        );
    }

    #[test]
    fn bad_rules_and_users_are_refused() {
        let mut s = AccessState::default();
        for bad in [
            rule("", Operation::Produce, ResourcePattern::Topic("t".into())),
            rule("a:b", Operation::Produce, ResourcePattern::Topic("t".into())),
            rule("a", Operation::Produce, ResourcePattern::Topic(String::new())),
            rule("a", Operation::GroupRead, ResourcePattern::Topic("t".into())),
            rule("a", Operation::Produce, ResourcePattern::Group("g".into())),
            rule("a", Operation::Produce, ResourcePattern::Cluster),
        ] {
            assert!(matches!(s.add_acl(&bad), Err(AccessRejection::Invalid(_))), "{bad:?}");
        }
        s.create_user("alice", [1; 32]).unwrap();
        assert_eq!(s.create_user("alice", [2; 32]), Err(AccessRejection::UserExists("alice".into())));
        assert!(matches!(s.create_user("node:1", [2; 32]), Err(AccessRejection::Invalid(_))));
        assert_eq!(s.token_hash("alice"), Some(&[1; 32]));
        s.delete_user("alice").unwrap();
        assert_eq!(s.delete_user("alice"), Err(AccessRejection::UnknownUser("alice".into())));
        let r = rule("a", Operation::Describe, ResourcePattern::Cluster);
        assert!(matches!(s.remove_acl(&r), Err(AccessRejection::UnknownAcl(_))));
    }

    fn scram(byte: u8) -> ScramCredential {
        ScramCredential { salt: vec![byte; 16], iterations: 4096, stored_key: [byte; 32], server_key: [!byte; 32] }
    }

    #[test]
    fn password_users_are_created_changed_and_checked() {
        let mut s = AccessState::default();
        s.create_password_user("carol", &scram(1)).unwrap();
        assert_eq!(s.scram("carol"), Some(&scram(1)));
        assert_eq!(s.token_hash("carol"), None, "a password user has no token");
        assert_eq!(s.create_user("carol", [1; 32]), Err(AccessRejection::UserExists("carol".into())));
        s.set_password("carol", &scram(2)).unwrap();
        assert_eq!(s.scram("carol"), Some(&scram(2)));
        s.create_user("dave", [3; 32]).unwrap();
        s.set_password("dave", &scram(4)).unwrap();
        assert_eq!((s.token_hash("dave"), s.scram("dave")), (None, Some(&scram(4))), "the token is replaced");
        assert_eq!(s.set_password("erin", &scram(5)), Err(AccessRejection::UnknownUser("erin".into())));
        for bad in [
            ScramCredential { iterations: 4095, ..scram(6) },
            ScramCredential { iterations: MAX_SCRAM_ITERATIONS + 1, ..scram(6) },
            ScramCredential { salt: vec![6; 15], ..scram(6) },
            ScramCredential { salt: vec![6; 65], ..scram(6) },
        ] {
            assert!(matches!(s.create_password_user("frank", &bad), Err(AccessRejection::Invalid(_))), "{bad:?}");
            assert!(matches!(s.set_password("carol", &bad), Err(AccessRejection::Invalid(_))), "{bad:?}");
        }
        assert!(!format!("{:?}", scram(7)).contains("stored_key"), "Debug hides the keys");
    }

    #[test]
    fn credentials_round_trip_and_bad_ones_are_refused() {
        let mut s = AccessState::default();
        s.create_user("alice", [9; 32]).unwrap();
        s.create_password_user("bob", &scram(8)).unwrap();
        let mut w = Writer::new();
        s.encode(&mut w);
        let bytes = w.finish();
        assert_eq!(AccessState::decode(&mut Reader::new("t", &bytes), true).unwrap(), s);
        // Iterations below the minimum in stored bytes are refused, not trusted.
        let mut w = Writer::new();
        write_scram(&mut w, &ScramCredential { iterations: 1, ..scram(1) });
        assert!(read_scram(&mut Reader::new("t", &w.finish())).is_err());
    }

    #[test]
    fn a_principals_rules_are_found_among_many() {
        let mut s = AccessState::default();
        for i in 0..200 {
            let who = format!("u{i:03}");
            s.add_acl(&rule(&who, Operation::Describe, ResourcePattern::Topic(format!("t{i}")))).unwrap();
            s.add_acl(&rule(&who, Operation::ClusterAdmin, ResourcePattern::Cluster)).unwrap();
            s.add_acl(&rule(&who, Operation::Produce, ResourcePattern::TopicPrefix(String::new()))).unwrap();
        }
        for i in [0, 57, 199] {
            let who = format!("u{i:03}");
            assert!(s.allows(Some(&who), Operation::Describe, Resource::Topic(&format!("t{i}"))));
            assert!(s.allows(Some(&who), Operation::ClusterAdmin, Resource::Cluster));
            assert!(s.allows(Some(&who), Operation::Produce, Resource::Topic("anything")), "the lowest sort key");
            assert!(!s.allows(Some(&who), Operation::Consume, Resource::Topic("anything")));
        }
        assert!(!s.allows(Some("u2"), Operation::ClusterAdmin, Resource::Cluster), "no prefix match on principals");
        assert!(!s.allows(Some("*"), Operation::ClusterAdmin, Resource::Cluster));
        assert!(!s.allows(None, Operation::ClusterAdmin, Resource::Cluster));
    }

    #[test]
    fn operations_and_patterns_parse() {
        for op in Operation::ALL {
            assert_eq!(op.as_str().parse::<Operation>().unwrap(), *op);
            assert_eq!(Operation::from_code(op.code()), Some(*op));
        }
        assert!("write".parse::<Operation>().is_err());
        assert_eq!(ResourcePattern::parse("topic-prefix", "").unwrap(), ResourcePattern::TopicPrefix(String::new()));
        assert!(ResourcePattern::parse("topic", "").is_err());
        assert!(ResourcePattern::parse("tenant", "x").is_err());
    }
}
