//! Running `watch`: every watch of one keelctl shares one Watch stream, as
//! etcdctl's client shares one, and this file gives each watch what
//! etcdctl's client gives its watch channel, printed as etcdctl prints it
//! (the event lines, "progress notify: N", "watch was canceled (...)"), and
//! runs the exec command for each event.
//!
//! Invariants, as in etcd's Go client (clientv3 3.4):
//! - at most one create is unanswered at a time: the server's `created`
//!   answers are matched to creates in the order they were sent;
//! - a progress answer for the whole stream (watch id -1) goes to every
//!   created watch; any other response goes to its own watch only, and a
//!   response for a watch nobody has gets that watch canceled once;
//! - a stream that fails with a transport error (Unavailable, Internal;
//!   not "no leader") is reopened and every watch is created again from the
//!   revision after the last one it saw; any other failure ends every watch
//!   with the failure's text.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io::Write;
use std::time::Duration;

use keel_api::etcdserverpb::WatchResponse;
use keel_api::WireError;
use keel_client::watch::{cancellation, is_progress_notify, WatchCanceled, STREAM_WATCH_ID};
use keel_client::{Client, WatchError, WatchReceiver, WatchSender, WatchStreamOptions};

use super::watch::{parse_line, InputLine, Line, WatchEnvironment, WatchSpec};
use super::Ctx;
use crate::error::{status_text, CtlError};
use crate::go_value_format::quote;
use crate::output::{event_type_name, Output};

/// How long keelctl waits before reopening a failed stream (clientv3's
/// longest backoff).
const REOPEN_BACKOFF: Duration = Duration::from_millis(100);

/// Why a session ended without an error of its own.
pub enum SessionEnd {
    /// Every watch has ended (not interactive).
    Canceled,
    /// `-i`'s input ended; the reason in Go's words ("EOF").
    InputEnded(String),
}

struct Watching {
    spec: WatchSpec,
    /// Where to start again if the stream is reopened.
    next_revision: i64,
}

impl Watching {
    fn new(spec: WatchSpec) -> Watching {
        let next_revision = spec.request.start_revision;
        Watching { spec, next_revision }
    }

    fn create_request(&self) -> keel_api::etcdserverpb::WatchCreateRequest {
        let mut request = self.spec.request.clone();
        request.start_revision = self.next_revision;
        request
    }

    fn saw(&mut self, response: &WatchResponse) {
        if let Some(last) = response.events.last().and_then(|e| e.kv.as_ref()) {
            self.next_revision = last.mod_revision + 1;
        } else if is_progress_notify(response) || (response.created && self.next_revision == 0) {
            self.next_revision = response.header.map_or(0, |h| h.revision) + 1;
        }
    }
}

pub struct Session<'a> {
    ctx: &'a Ctx,
    client: Client,
    interactive: bool,
    stream: Option<(WatchSender, WatchReceiver)>,
    /// Creates not answered yet, in order; the first has been sent.
    queued: VecDeque<Watching>,
    /// Created watches by watch id.
    active: BTreeMap<i64, Watching>,
    /// Watch ids of unknown watches already asked to cancel.
    canceled_unknown: HashSet<i64>,
    /// The stream was reopened after a failure and has not answered yet.
    reopening: bool,
}

impl<'a> Session<'a> {
    pub fn new(ctx: &'a Ctx, client: Client, interactive: bool) -> Session<'a> {
        Session {
            ctx,
            client,
            interactive,
            stream: None,
            queued: VecDeque::new(),
            active: BTreeMap::new(),
            canceled_unknown: HashSet::new(),
            reopening: false,
        }
    }

    /// Runs `initial` watches, and those `lines` ask for, until every watch
    /// has ended (not interactive) or the input ends (interactive).
    pub async fn run(
        mut self,
        initial: VecDeque<WatchSpec>,
        mut lines: Option<tokio::sync::mpsc::UnboundedReceiver<InputLine>>,
        environment: &WatchEnvironment,
    ) -> Result<SessionEnd, CtlError> {
        for spec in initial {
            self.add(spec);
        }
        loop {
            if !self.interactive && self.queued.is_empty() && self.active.is_empty() {
                return Ok(SessionEnd::Canceled);
            }
            tokio::select! {
                line = next_line(&mut lines) => match line {
                    Err(reason) => return Ok(SessionEnd::InputEnded(reason)),
                    Ok(line) => match parse_line(&line, environment)? {
                        Line::Watch(spec) => self.add(spec),
                        Line::Progress => self.request_progress()?,
                        Line::Invalid(message) => eprintln!("{message}"),
                    },
                },
                received = next_response(&mut self.stream) => match received {
                    Ok(Some(response)) => {
                        self.reopening = false;
                        self.dispatch(response).await?
                    }
                    Ok(None) => self.stream_failed("EOF".to_string()).await?,
                    Err(error) if recoverable(&error, self.reopening) => self.reopen(&error).await,
                    Err(error) => {
                        let text = match &error {
                            WatchError::Stream(status) => status_text(status),
                            other => other.to_string(),
                        };
                        self.stream_failed(text).await?;
                    }
                },
            }
        }
    }

    fn sender(&mut self) -> &WatchSender {
        let (sender, _) = self.stream.get_or_insert_with(|| {
            self.client
                .watch_stream(WatchStreamOptions { require_leader: true })
        });
        sender
    }

    fn add(&mut self, spec: WatchSpec) {
        self.queued.push_back(Watching::new(spec));
        if self.queued.len() == 1 {
            self.send_next_create();
        }
    }

    /// Sends the first queued create. A send can only fail once the stream
    /// has ended, which the receive side reports.
    fn send_next_create(&mut self) {
        if let Some(request) = self.queued.front().map(Watching::create_request) {
            let _ = self.sender().create(request);
        }
    }

    fn request_progress(&mut self) -> Result<(), CtlError> {
        self.sender()
            .request_progress()
            .map_err(|e| CtlError::failed(e.to_string()))
    }

    fn cancel(&mut self, watch_id: i64) {
        if let Some((sender, _)) = &self.stream {
            let _ = sender.cancel(watch_id);
        }
    }

    async fn dispatch(&mut self, response: WatchResponse) -> Result<(), CtlError> {
        let id = response.watch_id;
        if response.created {
            let Some(mut watching) = self.queued.pop_front() else {
                return Ok(());
            };
            if id == STREAM_WATCH_ID || (response.canceled && !response.cancel_reason.is_empty()) {
                self.show_failure(&watching, &response.cancel_reason).await?;
            } else {
                watching.saw(&response);
                self.active.insert(id, watching);
            }
            self.send_next_create();
        } else if response.canceled && response.compact_revision == 0 {
            // clientv3 ends such a watch without a word.
            self.active.remove(&id);
        } else if is_progress_notify(&response) && id == STREAM_WATCH_ID {
            for watching in self.active.values_mut() {
                watching.saw(&response);
            }
            for watching in self.active.values() {
                self.show(watching, &response).await?;
            }
        } else if let Some(watching) = self.active.get_mut(&id) {
            watching.saw(&response);
            if let Some(watching) = self.active.get(&id) {
                self.show(watching, &response).await?;
            }
            if cancellation(&response).is_some() {
                self.active.remove(&id);
                self.cancel(id);
            }
        } else if self.canceled_unknown.insert(id) {
            self.cancel(id);
        }
        Ok(())
    }

    /// What clientv3 hands a watch whose create failed or whose stream
    /// broke: canceled, with the error's text, and no events (`null`).
    async fn show_failure(&self, watching: &Watching, text: &str) -> Result<(), CtlError> {
        eprintln!("watch was canceled ({text})");
        let made_up = WatchResponse {
            canceled: true,
            ..Default::default()
        };
        self.print(watching, &made_up, true).await
    }

    /// One response to one watch, as etcdctl's `printWatchCh` shows it.
    async fn show(&self, watching: &Watching, response: &WatchResponse) -> Result<(), CtlError> {
        if response.canceled {
            let text = match cancellation(response) {
                Some(WatchCanceled::Reason(reason)) => reason,
                Some(WatchCanceled::Unstated) | None => String::new(),
                Some(compacted) => compacted.to_string(),
            };
            eprintln!("watch was canceled ({text})");
        }
        self.print(watching, response, false).await
    }

    async fn print(
        &self,
        watching: &Watching,
        response: &WatchResponse,
        events_nil: bool,
    ) -> Result<(), CtlError> {
        let mut out = Output::default();
        if is_progress_notify(response) {
            let revision = response.header.map_or(0, |h| h.revision);
            out.stdout
                .extend(format!("progress notify: {revision}\n").as_bytes());
        }
        let printed = self.ctx.printer.watch(&mut out, response, events_nil);
        let mut stdout = std::io::stdout();
        if stdout
            .write_all(&out.stdout)
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // Nobody reads any more (etcdctl dies of SIGPIPE here).
            return Err(CtlError::exit_quietly(crate::error::EXIT_ERROR));
        }
        printed?;
        if !watching.spec.exec.is_empty() {
            for event in &response.events {
                let revision = response.header.map_or(0, |h| h.revision);
                run_exec(&watching.spec.exec, revision, event).await?;
            }
        }
        Ok(())
    }

    /// The stream ended for good: every watch is told why, and ends.
    async fn stream_failed(&mut self, text: String) -> Result<(), CtlError> {
        self.stream = None;
        let active = std::mem::take(&mut self.active);
        let queued = std::mem::take(&mut self.queued);
        for watching in active.into_values().chain(queued) {
            self.show_failure(&watching, &text).await?;
        }
        Ok(())
    }

    /// Opens a new stream and creates every watch again where it left off.
    async fn reopen(&mut self, error: &WatchError) {
        tracing::debug!(%error, "watch stream failed; reopening it");
        self.stream = None;
        self.reopening = true;
        tokio::time::sleep(REOPEN_BACKOFF).await;
        let active = std::mem::take(&mut self.active);
        let mut again: VecDeque<Watching> = active.into_values().collect();
        again.extend(std::mem::take(&mut self.queued));
        self.queued = again;
        self.send_next_create();
    }
}

/// clientv3 retries a stream whose connection broke, or that failed with
/// Unavailable or Internal, except on "no leader"; anything else ends it.
/// (tonic reports a connection that broke mid-stream as Unknown, grpc-go as
/// Unavailable: the error's source tells.) While a stream is being reopened
/// after such a failure, "no leader" is retried too: a member that has just
/// restarted knows no leader until it hears one, and clientv3 waits out
/// that moment in its reconnect backoff (a second or more) where keelctl's
/// is shorter.
fn recoverable(error: &WatchError, reopening: bool) -> bool {
    match error {
        WatchError::Stream(status) => {
            (reopening || error.wire_error() != Some(WireError::NoLeader))
                && (error.connection_lost()
                    || matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Internal))
        }
        _ => false,
    }
}

async fn next_line(lines: &mut Option<tokio::sync::mpsc::UnboundedReceiver<InputLine>>) -> InputLine {
    match lines {
        Some(lines) => lines.recv().await.unwrap_or_else(|| Err("EOF".to_string())),
        None => std::future::pending().await,
    }
}

async fn next_response(
    stream: &mut Option<(WatchSender, WatchReceiver)>,
) -> Result<Option<WatchResponse>, WatchError> {
    match stream {
        Some((_, receiver)) => receiver.response().await,
        None => std::future::pending().await,
    }
}

/// Runs the exec command for one event with etcdctl's variables (each
/// `%q`-quoted, the revision the response's); a failure ends keelctl
/// with etcdctl's message and exit code 1.
async fn run_exec(
    command: &[OsString],
    revision: i64,
    event: &keel_api::mvccpb::Event,
) -> Result<(), CtlError> {
    let kv = event.kv.clone().unwrap_or_default();
    let type_name = event_type_name(event.r#type);
    let result = match resolve_program(&command[0]) {
        Err(text) => Err(text),
        Ok(program) => tokio::process::Command::new(&program)
            .args(&command[1..])
            .env("ETCD_WATCH_REVISION", revision.to_string())
            .env("ETCD_WATCH_EVENT_TYPE", quote(type_name.as_bytes()))
            .env("ETCD_WATCH_KEY", quote(&kv.key))
            .env("ETCD_WATCH_VALUE", quote(&kv.value))
            .status()
            .await
            .map_err(|e| format!("fork/exec {}: {}", program.to_string_lossy(), go_errno_text(&e)))
            .and_then(|status| exit_text(status).map_or(Ok(()), Err)),
    };
    result.map_err(|text| {
        let words: Vec<String> = command
            .iter()
            .map(|word| quote(word.as_encoded_bytes()))
            .collect();
        eprintln!("command [{}] error ({text})", words.join(" "));
        CtlError::exit_quietly(1)
    })
}

/// Go's `exec.Command` lookup: a name without a slash is searched in $PATH.
pub(super) fn resolve_program(name: &OsString) -> Result<OsString, String> {
    if name.as_encoded_bytes().contains(&b'/') {
        return Ok(name.clone());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        let executable = std::fs::metadata(&candidate).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        });
        if executable {
            return Ok(candidate.into_os_string());
        }
    }
    Err(format!(
        "exec: {}: executable file not found in $PATH",
        quote(name.as_encoded_bytes())
    ))
}

/// Go's `ProcessState.String()` for a failed command; `None` on success.
pub(super) fn exit_text(status: std::process::ExitStatus) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return None;
    }
    if let Some(code) = status.code() {
        return Some(format!("exit status {code}"));
    }
    let signal = status.signal().unwrap_or(0);
    let name = match signal {
        1 => "hangup".to_string(),
        2 => "interrupt".to_string(),
        3 => "quit".to_string(),
        6 => "aborted".to_string(),
        9 => "killed".to_string(),
        11 => "segmentation fault".to_string(),
        13 => "broken pipe".to_string(),
        15 => "terminated".to_string(),
        other => format!("signal {other}"),
    };
    Some(format!("signal: {name}"))
}

/// Go's text for the errno behind a failed spawn.
pub(super) fn go_errno_text(error: &std::io::Error) -> String {
    match error.raw_os_error() {
        Some(2) => "no such file or directory".to_string(),
        Some(13) => "permission denied".to_string(),
        Some(8) => "exec format error".to_string(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_failures_read_as_go_reports_them() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            exit_text(std::process::ExitStatus::from_raw(3 << 8)),
            Some("exit status 3".into())
        );
        assert_eq!(
            exit_text(std::process::ExitStatus::from_raw(9)),
            Some("signal: killed".into())
        );
        assert_eq!(exit_text(std::process::ExitStatus::from_raw(0)), None);
        assert_eq!(
            resolve_program(&OsString::from("surely-no-such-program-here")).unwrap_err(),
            "exec: \"surely-no-such-program-here\": executable file not found in $PATH"
        );
        assert_eq!(
            resolve_program(&OsString::from("/x/y")).unwrap(),
            OsString::from("/x/y")
        );
    }

    #[test]
    fn a_watch_resumes_after_the_last_revision_it_saw() {
        let mut watching = Watching::new(WatchSpec::default());
        let header = |revision| {
            Some(keel_api::etcdserverpb::ResponseHeader {
                revision,
                ..Default::default()
            })
        };
        watching.saw(&WatchResponse {
            created: true,
            header: header(7),
            ..Default::default()
        });
        assert_eq!(watching.create_request().start_revision, 8);
        watching.saw(&WatchResponse {
            header: header(12),
            events: vec![keel_api::mvccpb::Event {
                kv: Some(keel_api::mvccpb::KeyValue {
                    mod_revision: 10,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(watching.next_revision, 11);
        watching.saw(&WatchResponse {
            header: header(15),
            ..Default::default()
        });
        assert_eq!(watching.next_revision, 16);
        assert!(recoverable(
            &WatchError::from(tonic::Status::unavailable("reset")),
            false
        ));
        assert!(!recoverable(
            &WatchError::from(WireError::NoLeader.to_status()),
            false
        ));
        assert!(recoverable(
            &WatchError::from(WireError::NoLeader.to_status()),
            true
        ));
        assert!(!recoverable(
            &WatchError::from(tonic::Status::permission_denied("no")),
            true
        ));
    }
}
