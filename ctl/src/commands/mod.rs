//! What every command shares: the resolved global flags (`Ctx`) and the
//! connection to the cluster through keel's failover client.

pub mod alarm;
pub mod auth;
pub mod cluster;
pub mod concurrency;
pub mod defrag;
pub mod kv;
pub mod lease;
pub mod member;
pub mod role;
pub mod snapshot;
pub mod txn;
pub mod user;
pub mod watch;
mod watch_session;

use std::time::Duration;

use keel_api::WireError;
use keel_client::{Client, ClientConfig, TlsOptions};

use crate::error::{client_error_text, CtlError, EXIT_BAD_CONNECTION};
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
    /// --user and --password (the password asked for once, when first needed).
    pub auth: auth::AuthFlags,
}

impl Ctx {
    /// The client settings of the global flags (credentials given while
    /// auth is disabled are not used: keel's client, as etcd's, ignores
    /// "authentication is not enabled").
    pub fn client_config(&self, endpoints: Vec<String>) -> ClientConfig {
        let config = ClientConfig::new(endpoints)
            .with_dial_timeout(self.dial_timeout)
            .with_request_timeout(self.command_timeout)
            .with_tls(self.tls.clone());
        match self.auth.credentials() {
            Some((user, password)) => config.with_credentials(user, password),
            None => config,
        }
    }

    /// A client over every endpoint; fails within the dial timeout, naming
    /// the endpoints, when none answers. With --user, authenticates first:
    /// a wrong password fails here (exit 2), as etcdctl fails when it
    /// connects.
    pub async fn connect(&self) -> Result<Client, CtlError> {
        Client::connect(self.client_config(self.endpoints.clone()))
            .await
            .map_err(connect_error)
    }
}

/// A failed connect's error: a refused password is a failed connection
/// (exit 2), as etcdctl reports it.
pub fn connect_error(error: keel_client::ClientError) -> CtlError {
    match error.wire_error() {
        Some(WireError::AuthFailed) => CtlError::new(EXIT_BAD_CONNECTION, client_error_text(&error)),
        _ => CtlError::from(error),
    }
}
