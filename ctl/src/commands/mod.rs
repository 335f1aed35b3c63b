//! What every command shares: the resolved global flags (`Ctx`) and the
//! connection to the cluster through keel's failover client.

pub mod alarm;
pub mod cluster;
pub mod concurrency;
pub mod defrag;
pub mod kv;
pub mod lease;
pub mod member;
pub mod snapshot;
pub mod txn;
pub mod watch;
mod watch_session;

use std::time::Duration;

use keel_client::{Client, ClientConfig, TlsOptions};

use crate::error::CtlError;
use crate::output::Printer;

/// The global flags, resolved from the command line and the environment.
pub struct Ctx {
    pub endpoints: Vec<String>,
    pub dial_timeout: Duration,
    pub command_timeout: Duration,
    /// --cacert, --cert, --key, --insecure-skip-tls-verify, --insecure-transport.
    pub tls: TlsOptions,
    pub printer: Printer,
    pub debug: bool,
}

impl Ctx {
    pub fn client_config(&self, endpoints: Vec<String>) -> ClientConfig {
        ClientConfig::new(endpoints)
            .with_dial_timeout(self.dial_timeout)
            .with_request_timeout(self.command_timeout)
            .with_tls(self.tls.clone())
    }

    /// A client over every endpoint; fails within the dial timeout, naming
    /// the endpoints, when none answers.
    pub async fn connect(&self) -> Result<Client, CtlError> {
        Ok(Client::connect(self.client_config(self.endpoints.clone())).await?)
    }
}
