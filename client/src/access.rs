//! Users, ACL rules and client quotas ([`Admin`] calls of the `Access` service): see
//! docs/security.md.

use std::time::Duration;

use crate::admin::Admin;
use crate::client::{Client, Route};
use crate::error::ClientError;
use crate::proto;
use crate::scram::Credential;
use crate::token::Token;

macro_rules! access_call {
    ($self:ident, $method:ident, $req:expr) => {{
        let message = $req;
        $self
            .client
            .call(Route::Any, |ch| {
                let req = $self.client.request(message.clone(), Duration::ZERO);
                async move { Client::access_client(ch).$method(req).await }
            })
            .await
    }};
}

/// An ACL allow rule as the API carries it.
pub fn acl_rule(principal: &str, operation: &str, resource_type: &str, resource_name: &str) -> proto::AclRule {
    proto::AclRule {
        principal: principal.to_string(),
        operation: operation.to_string(),
        resource_type: resource_type.to_string(),
        resource_name: resource_name.to_string(),
    }
}

/// A client quota entry as the API carries it: `entity` is a user name or `*` (the default);
/// `None` leaves a rate unset (a user's falls back to the default's; set nowhere: unlimited).
pub fn quota(entity: &str, produce_bytes_per_sec: Option<u64>, consume_bytes_per_sec: Option<u64>) -> proto::Quota {
    proto::Quota {
        entity: entity.to_string(),
        produce_bytes_per_sec: produce_bytes_per_sec.unwrap_or(0),
        consume_bytes_per_sec: consume_bytes_per_sec.unwrap_or(0),
    }
}

/// A credential as the API carries it.
pub fn wire_credential(c: &Credential) -> proto::ScramCredential {
    proto::ScramCredential {
        salt: c.salt.clone().into(),
        iterations: c.iterations,
        stored_key: c.stored_key.to_vec().into(),
        server_key: c.server_key.to_vec().into(),
    }
}

impl Admin {
    /// Sets (replaces) a quota entry (see [`quota`]).
    pub async fn set_quota(&self, quota: proto::Quota) -> Result<(), ClientError> {
        access_call!(self, set_quota, proto::SetQuotaRequest { quota: Some(quota) }).map(|_| ())
    }

    /// Removes the quota entry of `entity` (a user name or `*`).
    pub async fn remove_quota(&self, entity: &str) -> Result<(), ClientError> {
        access_call!(self, remove_quota, proto::RemoveQuotaRequest { entity: entity.to_string() }).map(|_| ())
    }

    /// Every quota entry, the default (`*`) first.
    pub async fn list_quotas(&self) -> Result<Vec<proto::Quota>, ClientError> {
        Ok(access_call!(self, list_quotas, proto::ListQuotasRequest {})?.quotas)
    }

    /// Creates a user and returns its token: the only time the secret exists outside the caller
    /// (the cluster stores its SHA-256).
    pub async fn create_user(&self, name: &str) -> Result<Token, ClientError> {
        let token = Token::generate(name)?;
        let req =
            proto::CreateUserRequest { name: name.to_string(), token_sha256: token.secret_hash().to_vec().into() };
        access_call!(self, create_user, req)?;
        Ok(token)
    }

    /// Creates a user with a password. The client derives its SCRAM-SHA-256 credential (random
    /// salt, [`crate::scram::DEFAULT_ITERATIONS`]) and sends only that: the password never reaches
    /// the cluster here.
    pub async fn create_password_user(&self, name: &str, password: &str) -> Result<(), ClientError> {
        let scram = wire_credential(&Credential::generate(password)?);
        let req = proto::CreatePasswordUserRequest { name: name.to_string(), scram_sha256: Some(scram) };
        access_call!(self, create_password_user, req).map(|_| ())
    }

    /// Gives an existing user a new password (derived here as for
    /// [`Admin::create_password_user`]); its token or old password stops working.
    pub async fn set_user_password(&self, name: &str, password: &str) -> Result<(), ClientError> {
        let scram = wire_credential(&Credential::generate(password)?);
        let req = proto::SetUserPasswordRequest { name: name.to_string(), scram_sha256: Some(scram) };
        access_call!(self, set_user_password, req).map(|_| ())
    }

    /// Deletes a user (its token stops working; rules naming it stay).
    pub async fn delete_user(&self, name: &str) -> Result<(), ClientError> {
        access_call!(self, delete_user, proto::DeleteUserRequest { name: name.to_string() }).map(|_| ())
    }

    /// Every user name, sorted.
    pub async fn list_users(&self) -> Result<Vec<String>, ClientError> {
        Ok(access_call!(self, list_users, proto::ListUsersRequest {})?.names)
    }

    /// Adds an allow rule (see [`acl_rule`]).
    pub async fn add_acl(&self, rule: proto::AclRule) -> Result<(), ClientError> {
        access_call!(self, add_acl, proto::AclRuleRequest { rule: Some(rule) }).map(|_| ())
    }

    /// Removes an allow rule.
    pub async fn remove_acl(&self, rule: proto::AclRule) -> Result<(), ClientError> {
        access_call!(self, remove_acl, proto::AclRuleRequest { rule: Some(rule) }).map(|_| ())
    }

    /// Every rule, sorted.
    pub async fn list_acls(&self) -> Result<Vec<proto::AclRule>, ClientError> {
        Ok(access_call!(self, list_acls, proto::ListAclsRequest {})?.rules)
    }

    /// The principal the node sees for this client.
    pub async fn who_am_i(&self) -> Result<proto::WhoAmIResponse, ClientError> {
        access_call!(self, who_am_i, proto::WhoAmIRequest {})
    }
}
