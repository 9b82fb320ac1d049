//! `shale.api.v1.Access`: users, ACL rules and client quotas (metadata-group writes, forwarded to
//! its leader; quotas: docs/security.md "Quotas"), and `WhoAmI`. Every change is audited
//! ([`crate::auth::audit`]); all but `WhoAmI` need `cluster-admin` on the cluster once
//! authorization is on.

use std::sync::Arc;

use shale_client::proto;
use shale_client::proto::access_client::AccessClient;
use shale_raft::cluster::access::{AclRule, Operation, Resource, ResourcePattern, ScramCredential, TOKEN_HASH_BYTES};
use shale_raft::cluster::quota::{Quota, QuotaEntity};
use tonic::{Request, Response, Status};

use crate::auth::audit::audited;
use crate::auth::current;
use crate::context::NodeContext;
use crate::convert::errors::{cluster_error, invalid};

/// The Access service.
#[derive(Debug, Clone)]
pub struct AccessService {
    ctx: Arc<NodeContext>,
}

impl AccessService {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    async fn admin(&self) -> Result<(), Status> {
        self.ctx.authorize(Operation::ClusterAdmin, Resource::Cluster).await
    }
}

/// The domain rule of a wire rule.
fn rule_of(rule: Option<&proto::AclRule>) -> Result<AclRule, Status> {
    let rule = rule.ok_or_else(|| invalid("rule", "missing"))?;
    let operation = rule.operation.parse::<Operation>().map_err(cluster_error)?;
    let resource = ResourcePattern::parse(&rule.resource_type, &rule.resource_name).map_err(cluster_error)?;
    let rule = AclRule { principal: rule.principal.clone(), operation, resource };
    rule.validate().map_err(cluster_error)?;
    Ok(rule)
}

/// The domain credential of a wire credential (its salt and iterations are checked by the cluster).
fn credential_of(c: Option<&proto::ScramCredential>) -> Result<ScramCredential, Status> {
    let c = c.ok_or_else(|| invalid("scram_sha256", "missing"))?;
    let key = |field: &'static str, bytes: &[u8]| -> Result<[u8; 32], Status> {
        bytes.try_into().map_err(|_| invalid(field, "a SCRAM-SHA-256 key is 32 bytes"))
    };
    Ok(ScramCredential {
        salt: c.salt.to_vec(),
        iterations: c.iterations,
        stored_key: key("stored_key", &c.stored_key)?,
        server_key: key("server_key", &c.server_key)?,
    })
}

/// The wire rule of a domain rule.
fn wire_rule(rule: &AclRule) -> proto::AclRule {
    proto::AclRule {
        principal: rule.principal.clone(),
        operation: rule.operation.as_str().to_string(),
        resource_type: rule.resource.kind_str().to_string(),
        resource_name: rule.resource.name_str().to_string(),
    }
}

/// The domain entry of a wire quota (a rate of 0 is unset).
fn quota_of(quota: Option<&proto::Quota>) -> Result<(QuotaEntity, Quota), Status> {
    let quota = quota.ok_or_else(|| invalid("quota", "missing"))?;
    let entity = QuotaEntity::parse(&quota.entity).map_err(cluster_error)?;
    let rate = |v: u64| (v != 0).then_some(v);
    let q = Quota {
        produce_bytes_per_sec: rate(quota.produce_bytes_per_sec),
        consume_bytes_per_sec: rate(quota.consume_bytes_per_sec),
    };
    q.validate().map_err(cluster_error)?;
    Ok((entity, q))
}

/// The wire quota of a domain entry.
fn wire_quota(entity: &QuotaEntity, quota: &Quota) -> proto::Quota {
    proto::Quota {
        entity: entity.as_str().to_string(),
        produce_bytes_per_sec: quota.produce_bytes_per_sec.unwrap_or(0),
        consume_bytes_per_sec: quota.consume_bytes_per_sec.unwrap_or(0),
    }
}

#[tonic::async_trait]
impl proto::access_server::Access for AccessService {
    async fn set_quota(
        &self,
        request: Request<proto::SetQuotaRequest>,
    ) -> Result<Response<proto::SetQuotaResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                let entry = quota_of(req.quota.as_ref());
                let resource = req.quota.as_ref().map(|q| format!("quota {}", q.entity)).unwrap_or_default();
                let shown = entry.as_ref().map(|(_, q)| q.to_string()).unwrap_or_default();
                audited("set_quota", &resource, &shown, async {
                    self.admin().await?;
                    let (entity, quota) = entry?;
                    let result = self.ctx.cluster.set_quota(entity, quota).await;
                    let served = self.ctx.or_forward(result, forwarded, None, req, AccessClient::set_quota).await?;
                    Ok(served.answer(|()| proto::SetQuotaResponse {}))
                })
                .await
            })
            .await
    }

    async fn remove_quota(
        &self,
        request: Request<proto::RemoveQuotaRequest>,
    ) -> Result<Response<proto::RemoveQuotaResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                let resource = format!("quota {}", req.entity);
                audited("remove_quota", &resource, "", async {
                    self.admin().await?;
                    let entity = QuotaEntity::parse(&req.entity).map_err(cluster_error)?;
                    let result = self.ctx.cluster.remove_quota(entity).await;
                    let served = self.ctx.or_forward(result, forwarded, None, req, AccessClient::remove_quota).await?;
                    Ok(served.answer(|()| proto::RemoveQuotaResponse {}))
                })
                .await
            })
            .await
    }

    async fn list_quotas(
        &self,
        request: Request<proto::ListQuotasRequest>,
    ) -> Result<Response<proto::ListQuotasResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                self.admin().await?;
                let result = self.ctx.cluster.list_quotas().await;
                let served = self.ctx.or_forward(result, forwarded, None, req, AccessClient::list_quotas).await?;
                Ok(served.answer(|entries| proto::ListQuotasResponse {
                    quotas: entries.iter().map(|(e, q)| wire_quota(e, q)).collect(),
                }))
            })
            .await
    }

    async fn create_user(
        &self,
        request: Request<proto::CreateUserRequest>,
    ) -> Result<Response<proto::CreateUserResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                let name = req.name.clone();
                audited("create_user", &format!("user {name}"), "", async {
                    self.admin().await?;
                    let hash: [u8; TOKEN_HASH_BYTES] = req
                        .token_sha256
                        .as_ref()
                        .try_into()
                        .map_err(|_| invalid("token_sha256", "a SHA-256 hash is 32 bytes"))?;
                    let result = self.ctx.cluster.create_user(&name, hash).await;
                    let served = self.ctx.or_forward(result, forwarded, None, req, AccessClient::create_user).await?;
                    Ok(served.answer(|()| proto::CreateUserResponse {}))
                })
                .await
            })
            .await
    }

    async fn create_password_user(
        &self,
        request: Request<proto::CreatePasswordUserRequest>,
    ) -> Result<Response<proto::CreatePasswordUserResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                let name = req.name.clone();
                audited("create_password_user", &format!("user {name}"), "", async {
                    self.admin().await?;
                    let credential = credential_of(req.scram_sha256.as_ref())?;
                    let result = self.ctx.cluster.create_password_user(&name, credential).await;
                    let served =
                        self.ctx.or_forward(result, forwarded, None, req, AccessClient::create_password_user).await?;
                    Ok(served.answer(|()| proto::CreatePasswordUserResponse {}))
                })
                .await
            })
            .await
    }

    async fn set_user_password(
        &self,
        request: Request<proto::SetUserPasswordRequest>,
    ) -> Result<Response<proto::SetUserPasswordResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                let name = req.name.clone();
                audited("set_user_password", &format!("user {name}"), "", async {
                    self.admin().await?;
                    let credential = credential_of(req.scram_sha256.as_ref())?;
                    let result = self.ctx.cluster.set_password(&name, credential).await;
                    let served =
                        self.ctx.or_forward(result, forwarded, None, req, AccessClient::set_user_password).await?;
                    Ok(served.answer(|()| proto::SetUserPasswordResponse {}))
                })
                .await
            })
            .await
    }

    async fn delete_user(
        &self,
        request: Request<proto::DeleteUserRequest>,
    ) -> Result<Response<proto::DeleteUserResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                let name = req.name.clone();
                audited("delete_user", &format!("user {name}"), "", async {
                    self.admin().await?;
                    let result = self.ctx.cluster.delete_user(&name).await;
                    let served = self.ctx.or_forward(result, forwarded, None, req, AccessClient::delete_user).await?;
                    Ok(served.answer(|()| proto::DeleteUserResponse {}))
                })
                .await
            })
            .await
    }

    async fn list_users(
        &self,
        request: Request<proto::ListUsersRequest>,
    ) -> Result<Response<proto::ListUsersResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                self.admin().await?;
                let result = self.ctx.cluster.list_users().await;
                let served = self.ctx.or_forward(result, forwarded, None, req, AccessClient::list_users).await?;
                Ok(served.answer(|names| proto::ListUsersResponse { names }))
            })
            .await
    }

    async fn add_acl(
        &self,
        request: Request<proto::AclRuleRequest>,
    ) -> Result<Response<proto::AclRuleResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                let rule = rule_of(req.rule.as_ref());
                let shown = rule.as_ref().map(ToString::to_string).unwrap_or_default();
                audited("add_acl", "cluster", &shown, async {
                    self.admin().await?;
                    let result = self.ctx.cluster.add_acl(rule?).await;
                    let served = self.ctx.or_forward(result, forwarded, None, req, AccessClient::add_acl).await?;
                    Ok(served.answer(|()| proto::AclRuleResponse {}))
                })
                .await
            })
            .await
    }

    async fn remove_acl(
        &self,
        request: Request<proto::AclRuleRequest>,
    ) -> Result<Response<proto::AclRuleResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                let rule = rule_of(req.rule.as_ref());
                let shown = rule.as_ref().map(ToString::to_string).unwrap_or_default();
                audited("remove_acl", "cluster", &shown, async {
                    self.admin().await?;
                    let result = self.ctx.cluster.remove_acl(rule?).await;
                    let served = self.ctx.or_forward(result, forwarded, None, req, AccessClient::remove_acl).await?;
                    Ok(served.answer(|()| proto::AclRuleResponse {}))
                })
                .await
            })
            .await
    }

    async fn list_acls(
        &self,
        request: Request<proto::ListAclsRequest>,
    ) -> Result<Response<proto::ListAclsResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                self.admin().await?;
                let result = self.ctx.cluster.list_acls().await;
                let served = self.ctx.or_forward(result, forwarded, None, req, AccessClient::list_acls).await?;
                Ok(served.answer(|rules| proto::ListAclsResponse { rules: rules.iter().map(wire_rule).collect() }))
            })
            .await
    }

    async fn who_am_i(
        &self,
        request: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::WhoAmIResponse>, Status> {
        self.ctx
            .handle(request, async |_, _| {
                let caller = current().ok_or_else(|| Status::internal("no caller"))?;
                Ok(proto::WhoAmIResponse {
                    principal: caller.principal.to_string(),
                    source: caller.source.as_str().to_string(),
                    authorization: self.ctx.auth.config.enabled,
                    super_user: self.ctx.auth.is_super(&caller.principal),
                })
            })
            .await
    }
}
