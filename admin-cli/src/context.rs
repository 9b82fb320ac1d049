//! What every networked command shares: the global flags and one lazily built client.

use std::sync::OnceLock;

use shale_client::{Client, ClientConfig, ClientError};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::cli::GlobalArgs;
use crate::error::{CliError, Result};

/// The global flags and the cluster client built from them.
#[derive(Debug)]
pub struct Ctx {
    /// The flags every command takes.
    pub global: GlobalArgs,
    client: OnceLock<Client>,
}

impl Ctx {
    /// A context for these flags; the client is built on first use.
    pub fn new(global: GlobalArgs) -> Self {
        Self { global, client: OnceLock::new() }
    }

    /// The client settings the flags ask for.
    pub fn client_config(&self) -> Result<ClientConfig> {
        let mut config =
            ClientConfig::from_endpoint_list(&self.global.bootstrap).map_err(|e| self.err("read --bootstrap", e))?;
        config.request_timeout_ms = self.global.timeout.max(1);
        config.max_attempts = self.global.attempts;
        if let Some(ca) = &self.global.tls_ca {
            let read = |path: &std::path::PathBuf| {
                std::fs::read(path).map_err(|source| CliError::Local { op: "read", path: path.clone(), source })
            };
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let (Some(cert), Some(key)) = (&self.global.tls_cert, &self.global.tls_key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            config.tls = Some(tls);
        }
        if let Some(token) = &self.global.token {
            config.token = Some(
                shale_client::Token::parse(token)
                    .map_err(|e| CliError::Usage(format!("--token / SHALE_TOKEN: {e}")))?,
            );
        }
        Ok(config)
    }

    /// The cluster client.
    pub fn client(&self) -> Result<Client> {
        if let Some(c) = self.client.get() {
            return Ok(c.clone());
        }
        let client = Client::new(self.client_config()?).map_err(|e| self.err("connect", e))?;
        Ok(self.client.get_or_init(|| client).clone())
    }

    /// A failed cluster call while doing `action`, with the bootstrap list for the hint.
    pub fn err(&self, action: impl Into<String>, e: ClientError) -> CliError {
        CliError::client(action, &self.global.bootstrap, e)
    }
}
