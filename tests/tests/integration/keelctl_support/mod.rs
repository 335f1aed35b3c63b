//! Shared by the keelctl tests: running `keelctl` and `etcdctl` as child
//! processes, and a replaying KV proxy so that a write command run by both
//! tools gets one and the same server response. `watch_runner` runs a watch
//! (which never ends by itself) with both tools, step by step.
//!
//! The proxy forwards a KV request to the cluster the first time it sees
//! it and records the answer; the same request bytes seen again (the other
//! tool's identical request) get the recorded answer without a second
//! write. So both tools print the very same response, and a request that
//! differs between the tools shows up as a second forwarded write.

#![allow(dead_code)]

pub mod background;
pub mod masks;
pub mod verdicts;
pub mod watch_runner;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_api::etcdserverpb::kv_server::{Kv, KvServer};
use keel_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use keel_client::{Client, ClientConfig};
use prost::Message;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status};

/// What a command printed and how it exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Ran {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

pub fn keelctl_path() -> std::path::PathBuf {
    keel_tests::built_binary("keelctl").expect("keelctl is built (cargo build --workspace --bins)")
}

pub fn etcdctl_path() -> std::path::PathBuf {
    keel_tests::which("etcdctl").expect("etcdctl 3.4 on PATH (Debian's etcd-client)")
}

/// Runs `program args` with `stdin`, without the caller's KEELCTL_/ETCDCTL_
/// variables, and waits (at most 60s) for it.
pub async fn run(program: &std::path::Path, args: &[Vec<u8>], stdin: &[u8]) -> Ran {
    run_with_variables(program, args, stdin, &[]).await
}

/// `run`, with the environment variables `variables` set.
pub async fn run_with_variables(
    program: &std::path::Path,
    args: &[Vec<u8>],
    stdin: &[u8],
    variables: &[(&str, &str)],
) -> Ran {
    use std::os::unix::ffi::OsStrExt;
    let mut command = ctl_command(program);
    command
        .envs(variables.iter().copied())
        .args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{} runs: {e}", program.display()));
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin).await;
    }
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} did not finish within 60s", program.display()))
        .expect("command output");
    Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: output.stdout,
        stderr: output.stderr,
    }
}

/// etcdctl's stderr without its client's JSON retry logs (timestamps, ids),
/// which keelctl does not print.
pub fn without_client_logs(stderr: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(stderr);
    let kept: Vec<&str> = text
        .split_inclusive('\n')
        .filter(|line| !line.starts_with("{\"level\":"))
        .collect();
    kept.concat().into_bytes()
}

pub fn args(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|a| a.as_bytes().to_vec()).collect()
}

type Answer = Result<Vec<u8>, (tonic::Code, String)>;

#[derive(Default)]
struct Recorded {
    answers: HashMap<(&'static str, Vec<u8>), Answer>,
    forwarded: usize,
}

#[derive(Clone)]
pub struct ReplayProxy {
    upstream: Client,
    recorded: Arc<Mutex<Recorded>>,
}

impl ReplayProxy {
    /// Starts the proxy on a free 127.0.0.1 port in front of `endpoint`;
    /// returns it and its `host:port`.
    pub async fn start(endpoint: &str) -> (ReplayProxy, String) {
        let upstream = Client::connect_lazy(
            ClientConfig::new([endpoint.to_string()]).with_request_timeout(Duration::from_secs(15)),
        )
        .expect("upstream client");
        let proxy = ReplayProxy {
            upstream,
            recorded: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let address = listener.local_addr().expect("proxy address").to_string();
        let service = KvServer::new(proxy.clone());
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        (proxy, address)
    }

    /// Forgets the recorded answers (before each write command).
    pub fn reset(&self) {
        let mut recorded = self.recorded.lock().expect("proxy lock");
        recorded.answers.clear();
        recorded.forwarded = 0;
    }

    /// How many requests reached the cluster since the last reset.
    pub fn forwarded(&self) -> usize {
        self.recorded.lock().expect("proxy lock").forwarded
    }

    async fn answer<Req: Message, Resp: Message + Default, F, Fut>(
        &self,
        method: &'static str,
        request: Req,
        forward: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(Client, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, keel_client::ClientError>>,
    {
        let key = (method, request.encode_to_vec());
        let known = self
            .recorded
            .lock()
            .expect("proxy lock")
            .answers
            .get(&key)
            .cloned();
        let answer = match known {
            Some(answer) => answer,
            None => {
                let answer = match forward(self.upstream.clone(), request).await {
                    Ok(response) => Ok(response.encode_to_vec()),
                    Err(error) => Err((error.code(), error.to_string())),
                };
                let mut recorded = self.recorded.lock().expect("proxy lock");
                recorded.forwarded += 1;
                recorded.answers.insert(key, answer.clone());
                answer
            }
        };
        match answer {
            Ok(bytes) => Resp::decode(bytes.as_slice())
                .map(Response::new)
                .map_err(|e| Status::internal(e.to_string())),
            Err((code, message)) => Err(Status::new(code, message)),
        }
    }
}

#[tonic::async_trait]
impl Kv for ReplayProxy {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.answer(
            "range",
            request.into_inner(),
            |c, r| async move { c.range(r).await },
        )
        .await
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.answer("put", request.into_inner(), |c, r| async move { c.put(r).await })
            .await
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.answer("delete_range", request.into_inner(), |c, r| async move {
            c.delete_range(r).await
        })
        .await
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.answer("txn", request.into_inner(), |c, r| async move { c.txn(r).await })
            .await
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        self.answer("compact", request.into_inner(), |c, r| async move {
            c.compact(r).await
        })
        .await
    }
}

/// A command line of `program` (etcdctl or keelctl) with none of the
/// caller's `KEELCTL_*`/`ETCDCTL_*` settings and etcdctl's v3 API.
pub fn ctl_command(program: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("KEELCTL_") || text.starts_with("ETCDCTL_") {
            command.env_remove(&name);
        }
    }
    command.env("ETCDCTL_API", "3");
    command
}
