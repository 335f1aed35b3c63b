//! `defrag [--cluster]`: etcdctl 3.4's defragmentation of each endpoint's
//! storage (with `--cluster`, every member's client URLs from the member
//! list), one line per endpoint: "Finished defragmenting etcd
//! member[<endpoint>]" on stdout, or "Failed to defragment etcd
//! member[<endpoint>] (<error>)" on stderr and exit status 1 at the end.
//! etcdctl's offline `--data-dir` defragmentation is refused: keel
//! defragments a running member only.

use clap::Args;

use crate::go_bool::GoBoolFlag;
use keel_client::{transport_failure, Client, ClientError};

use super::cluster::{endpoints, partial_failure};
use super::Ctx;
use crate::error::{client_error_text, CtlError, EXIT_ERROR};
use crate::output::{self, Output};

#[derive(Args, Debug, Clone)]
pub struct DefragArgs {
    /// Use all endpoints from the cluster member list.
    #[arg(long, go_bool_default = false)]
    pub cluster: bool,
    /// Not supported by keel (etcdctl defragments a stopped etcd's data
    /// directory with it); defragment the running member instead.
    #[arg(long = "data-dir", value_name = "DIR")]
    pub data_dir: Option<String>,
}

pub async fn defrag(ctx: &Ctx, args: &DefragArgs) -> Result<Output, CtlError> {
    let mut out = Output::default();
    if let Some(data_dir) = args.data_dir.as_deref().filter(|dir| !dir.is_empty()) {
        output::defrag::data_dir_refused(&mut out, data_dir);
        return Err(partial_failure(out, CtlError::exit_quietly(EXIT_ERROR)));
    }
    let mut failed = false;
    for endpoint in endpoints(ctx, args.cluster).await? {
        let answer = match Client::connect_lazy(ctx.client_config(vec![endpoint.clone()])) {
            Ok(client) => client.defragment(&endpoint).await.map(|_| ()),
            Err(error) => Err(error),
        };
        match answer {
            Ok(()) => output::defrag::finished(&mut out, &endpoint),
            Err(error) => {
                failed = true;
                output::defrag::failed(&mut out, &endpoint, &defrag_error_text(&error));
            }
        }
    }
    if failed {
        return Err(partial_failure(out, CtlError::exit_quietly(EXIT_ERROR)));
    }
    Ok(out)
}

/// What etcdctl prints for a failed endpoint: an endpoint it cannot reach
/// is retried until the command timeout, so it reports "context deadline
/// exceeded"; a server's error as clientv3 gives it.
fn defrag_error_text(error: &ClientError) -> String {
    match error {
        ClientError::Status(status) if transport_failure(status) => {
            keel_api::DEADLINE_EXCEEDED_TEXT.to_string()
        }
        ClientError::Unreachable { .. } => keel_api::DEADLINE_EXCEEDED_TEXT.to_string(),
        other => client_error_text(other),
    }
}
