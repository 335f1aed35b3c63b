//! `watch`: its flags and arguments, read as etcdctl 3.4 reads them (the
//! key and range end, `--prefix`, `--rev`, `--prev-kv`, the exec command
//! after `--`, the ETCDCTL_WATCH_KEY/ETCDCTL_WATCH_RANGE_END variables),
//! and the `-i` lines (`watch ...`, `progress`) with etcdctl's messages for
//! bad ones. Running the watches is `watch_session`'s.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::BufRead;
use std::os::unix::ffi::OsStringExt;

use clap::{Args, FromArgMatches, Parser};
use keel_api::etcdserverpb::WatchCreateRequest;
use keel_api::key_range::{prefix_range_end, FROM_KEY_RANGE_END};

use super::watch_session::{Session, SessionEnd};
use super::Ctx;
use crate::error::{CtlError, EXIT_INTERRUPTED};
use crate::go_bool::GoBoolFlag;
use crate::output::Output;

const BAD_ARGS_NUM: &str = "bad number of arguments";
const CONFLICTING_ENV: &str = "bad number of arguments (found conflicting environment key)";
const SEPARATOR_WITHOUT_COMMAND: &str = "bad number of arguments (found separator --, but no commands)";
const RANGE_END_AND_PREFIX: &str = "`range_end` and `--prefix` are mutually exclusive";

/// The flags a watch takes, on the command line and on a `watch` line of `-i`.
#[derive(Args, Debug, Clone, Default)]
pub struct WatchFlags {
    /// Interactive mode: read `watch ...` and `progress` lines from stdin.
    #[arg(short = 'i', long, go_bool_default = false)]
    pub interactive: bool,
    /// Watch on a prefix if prefix is set.
    #[arg(long, go_bool_default = false)]
    pub prefix: bool,
    /// Revision to start watching.
    #[arg(long, default_value = "0", allow_hyphen_values = true)]
    pub rev: String,
    /// Get the previous key-value pair before the event happens.
    #[arg(long = "prev-kv", go_bool_default = false)]
    pub prev_kv: bool,
}

#[derive(Args, Debug, Clone, Default)]
pub struct WatchArgs {
    /// The key or prefix, then an optional range end.
    #[arg(value_name = "KEY")]
    pub keys: Vec<OsString>,
    /// A command run for every event, with ETCD_WATCH_REVISION,
    /// ETCD_WATCH_EVENT_TYPE, ETCD_WATCH_KEY and ETCD_WATCH_VALUE set.
    #[arg(last = true, value_name = "EXEC-COMMAND")]
    pub exec: Vec<OsString>,
    #[command(flatten)]
    pub flags: WatchFlags,
}

/// One `watch` line of `-i`, parsed with the watch's own flags only.
#[derive(Parser, Debug)]
#[command(no_binary_name = true, disable_help_flag = true)]
struct WatchLine {
    #[command(flatten)]
    args: WatchArgs,
}

/// A watch to create, and the command to run for its events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchSpec {
    pub request: WatchCreateRequest,
    pub exec: Vec<OsString>,
}

/// ETCDCTL_WATCH_KEY and ETCDCTL_WATCH_RANGE_END (KEELCTL_* first), empty when unset.
#[derive(Debug, Clone, Default)]
pub struct WatchEnvironment {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

impl WatchEnvironment {
    pub fn from_process() -> WatchEnvironment {
        let read = |suffix: &str| {
            std::env::var_os(format!("KEELCTL_{suffix}"))
                .or_else(|| std::env::var_os(format!("ETCDCTL_{suffix}")))
                .map(OsString::into_vec)
                .unwrap_or_default()
        };
        WatchEnvironment {
            key: read("WATCH_KEY"),
            range_end: read("WATCH_RANGE_END"),
        }
    }

    /// etcdctl refuses a range end without a key, before anything else.
    fn check(&self) -> Result<(), CtlError> {
        if self.key.is_empty() && !self.range_end.is_empty() {
            return Err(CtlError::bad_args(format!(
                "ETCDCTL_WATCH_KEY is empty but got ETCDCTL_WATCH_RANGE_END={}",
                crate::go_value_format::quote(&self.range_end)
            )));
        }
        Ok(())
    }

    /// The key (and range end) the variables give, ahead of `keys`.
    fn keys_with(&self, keys: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        if self.key.is_empty() {
            return keys;
        }
        let mut all = vec![self.key.clone()];
        if !self.range_end.is_empty() {
            all.push(self.range_end.clone());
        }
        all.extend(keys);
        all
    }
}

/// `--rev`, or pflag's complaint about it.
fn start_revision(flags: &WatchFlags) -> Result<i64, String> {
    crate::go_value_format::parse_int64(&flags.rev).map_err(|e| {
        format!(
            "invalid argument {} for \"--rev\" flag: {e}",
            crate::go_value_format::quote(flags.rev.as_bytes())
        )
    })
}

/// The create request etcdctl's `getWatchChan` makes of the keys: a third
/// and later key are ignored, as etcdctl ignores them.
fn create_request(
    keys: &[Vec<u8>],
    flags: &WatchFlags,
    start_revision: i64,
) -> Result<WatchCreateRequest, String> {
    let Some(key) = keys.first() else {
        return Err(BAD_ARGS_NUM.to_string());
    };
    let mut request = WatchCreateRequest {
        key: key.clone(),
        start_revision,
        prev_kv: flags.prev_kv,
        ..Default::default()
    };
    if keys.len() == 2 {
        if flags.prefix {
            return Err(RANGE_END_AND_PREFIX.to_string());
        }
        request.range_end = keys[1].clone();
    }
    if flags.prefix {
        if key.is_empty() {
            request.key = FROM_KEY_RANGE_END.to_vec();
            request.range_end = FROM_KEY_RANGE_END.to_vec();
        } else {
            request.range_end = prefix_range_end(key);
        }
    }
    Ok(request)
}

fn into_bytes(args: &[OsString]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.clone().into_vec()).collect()
}

/// The watch the command line asks for. `raw` is what followed `watch` on
/// the command line, which tells a trailing `--` from none.
pub fn command_line_spec(
    args: &WatchArgs,
    raw: &[OsString],
    environment: &WatchEnvironment,
) -> Result<WatchSpec, CtlError> {
    let start_revision = start_revision(&args.flags).map_err(CtlError::failed)?;
    let separator = raw.iter().position(|a| a == "--");
    if separator.is_some_and(|at| at + 1 == raw.len()) {
        return Err(CtlError::bad_args(SEPARATOR_WITHOUT_COMMAND));
    }
    if !environment.key.is_empty() && !args.keys.is_empty() {
        return Err(CtlError::bad_args(CONFLICTING_ENV));
    }
    let keys = environment.keys_with(into_bytes(&args.keys));
    let request = create_request(&keys, &args.flags, start_revision).map_err(CtlError::bad_args)?;
    Ok(WatchSpec {
        request,
        exec: args.exec.clone(),
    })
}

/// What one line of `-i` asks for.
#[derive(Debug)]
pub enum Line {
    Watch(WatchSpec),
    Progress,
    /// Printed on stderr; the next line is read.
    Invalid(String),
}

/// Reads one `-i` line as etcdctl does. A `watch` line whose flags or
/// arguments are wrong ends keelctl (the error), as it ends etcdctl.
pub fn parse_line(line: &str, environment: &WatchEnvironment) -> Result<Line, CtlError> {
    let words = crate::txn_parse::argify(line).map_err(CtlError::invalid_input)?;
    let Some(command) = words.first() else {
        return Ok(Line::Invalid(format!(
            "Invalid command: {line} (watch and progress supported)"
        )));
    };
    match command.as_slice() {
        b"watch" => {}
        b"progress" => return Ok(Line::Progress),
        _ => {
            return Ok(Line::Invalid(format!(
                "Invalid command {line} (only support watch)"
            )))
        }
    }
    if words.len() < 2 && environment.key.is_empty() {
        return Ok(Line::Invalid(format!(
            "Invalid command {line} (command type or key is not provided)"
        )));
    }
    let rest: Vec<OsString> = words[1..].iter().cloned().map(OsString::from_vec).collect();
    if rest
        .iter()
        .position(|a| a == "--")
        .is_some_and(|at| at + 1 == rest.len())
    {
        return Err(CtlError::bad_args(SEPARATOR_WITHOUT_COMMAND));
    }
    let command = <WatchLine as clap::CommandFactory>::command();
    let parsed = command
        .try_get_matches_from(&rest)
        .and_then(|matches| WatchLine::from_arg_matches(&matches))
        .map_err(|error| CtlError::bad_args(crate::usage_error(&error, &rest)))?;
    let args = parsed.args;
    let start_revision = start_revision(&args.flags).map_err(CtlError::bad_args)?;
    if args.exec.is_empty() && args.keys.is_empty() && environment.key.is_empty() {
        return Err(CtlError::bad_args(BAD_ARGS_NUM));
    }
    if args.exec.is_empty() && !args.keys.is_empty() && !environment.key.is_empty() {
        return Err(CtlError::bad_args(CONFLICTING_ENV));
    }
    let keys = environment.keys_with(into_bytes(&args.keys));
    match create_request(&keys, &args.flags, start_revision) {
        Ok(request) => Ok(Line::Watch(WatchSpec {
            request,
            exec: args.exec,
        })),
        Err(reason) => Ok(Line::Invalid(format!("Invalid command {line} ({reason})"))),
    }
}

/// What followed the first `watch` on the process's command line (all of
/// it when there is none, as etcdctl does).
fn raw_watch_args() -> Vec<OsString> {
    let all: Vec<OsString> = std::env::args_os().skip(1).collect();
    match all.iter().position(|a| a == "watch") {
        Some(at) => all[at + 1..].to_vec(),
        None => all,
    }
}

pub async fn watch(ctx: &Ctx, args: &WatchArgs) -> Result<Output, CtlError> {
    let environment = WatchEnvironment::from_process();
    // A bad --rev is a flag error, whatever the mode.
    start_revision(&args.flags).map_err(CtlError::failed)?;
    environment.check()?;
    if args.flags.interactive {
        let client = ctx.connect().await?;
        let lines = read_lines_in_background();
        let end = Session::new(ctx, client, true)
            .run(VecDeque::new(), Some(lines), &environment)
            .await?;
        return Err(session_error(end));
    }
    let spec = command_line_spec(args, &raw_watch_args(), &environment)?;
    let client = ctx.connect().await?;
    let end = Session::new(ctx, client, false)
        .run(VecDeque::from([spec]), None, &environment)
        .await?;
    Err(session_error(end))
}

fn session_error(end: SessionEnd) -> CtlError {
    match end {
        SessionEnd::Canceled => CtlError::new(EXIT_INTERRUPTED, "watch is canceled by the server"),
        SessionEnd::InputEnded(reason) => {
            CtlError::invalid_input(format!("Error reading watch request line: {reason}"))
        }
    }
}

/// An input line of `-i`, or why there are no more (Go's error text: "EOF").
pub type InputLine = Result<String, String>;

/// Reads stdin's lines on a thread of their own (a line is only whole with
/// its newline: a last line without one is the end of input, as etcdctl
/// reads it).
fn read_lines_in_background() -> tokio::sync::mpsc::UnboundedReceiver<InputLine> {
    let (lines, received) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        loop {
            let mut line = Vec::new();
            let next = match input.read_until(b'\n', &mut line) {
                Ok(_) if line.last() == Some(&b'\n') => {
                    line.pop();
                    Ok(String::from_utf8_lossy(&line).into_owned())
                }
                Ok(_) => Err("EOF".to_string()),
                Err(error) => Err(error.to_string()),
            };
            let last = next.is_err();
            if lines.send(next).is_err() || last {
                return;
            }
        }
    });
    received
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> WatchFlags {
        WatchFlags {
            rev: "0".into(),
            ..Default::default()
        }
    }

    fn watch_args(keys: &[&str], exec: &[&str]) -> WatchArgs {
        WatchArgs {
            keys: keys.iter().map(OsString::from).collect(),
            exec: exec.iter().map(OsString::from).collect(),
            flags: flags(),
        }
    }

    fn raw(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn keys_become_the_create_request_as_etcdctl_makes_it() {
        let none = WatchEnvironment::default();
        let spec = command_line_spec(&watch_args(&["a", "z"], &[]), &raw(&["a", "z"]), &none).unwrap();
        assert_eq!(
            (spec.request.key, spec.request.range_end),
            (b"a".to_vec(), b"z".to_vec())
        );
        // A third key is ignored, as etcdctl ignores it.
        let spec =
            command_line_spec(&watch_args(&["a", "b", "c"], &[]), &raw(&["a", "b", "c"]), &none).unwrap();
        assert_eq!(
            (spec.request.key, spec.request.range_end),
            (b"a".to_vec(), vec![])
        );
        let mut prefixed = watch_args(&["a/"], &[]);
        prefixed.flags.prefix = true;
        prefixed.flags.rev = "-1".into();
        prefixed.flags.prev_kv = true;
        let spec = command_line_spec(&prefixed, &raw(&["a/", "--prefix"]), &none).unwrap();
        assert_eq!(spec.request.range_end, b"a0".to_vec());
        assert_eq!((spec.request.start_revision, spec.request.prev_kv), (-1, true));
        let mut everything = watch_args(&[""], &[]);
        everything.flags.prefix = true;
        let spec = command_line_spec(&everything, &raw(&["", "--prefix"]), &none).unwrap();
        assert_eq!((spec.request.key, spec.request.range_end), (vec![0], vec![0]));
    }

    #[test]
    fn bad_arguments_are_etcdctls_errors() {
        let none = WatchEnvironment::default();
        let message = |args: &WatchArgs, raw_args: &[&str], env: &WatchEnvironment| {
            let error = command_line_spec(args, &raw(raw_args), env).unwrap_err();
            assert_eq!(error.code, 128);
            error.message
        };
        assert_eq!(message(&watch_args(&[], &[]), &[], &none), BAD_ARGS_NUM);
        assert_eq!(
            message(&watch_args(&["a"], &[]), &["a", "--"], &none),
            SEPARATOR_WITHOUT_COMMAND
        );
        let mut both = watch_args(&["a", "b"], &[]);
        both.flags.prefix = true;
        assert_eq!(
            message(&both, &["a", "b", "--prefix"], &none),
            RANGE_END_AND_PREFIX
        );
        let env = WatchEnvironment {
            key: b"k".to_vec(),
            range_end: vec![],
        };
        assert_eq!(message(&watch_args(&["a"], &[]), &["a"], &env), CONFLICTING_ENV);
        assert_eq!(
            message(&watch_args(&["a"], &["echo"]), &["a", "--", "echo"], &env),
            CONFLICTING_ENV
        );
        let spec =
            command_line_spec(&watch_args(&[], &["echo", "x"]), &raw(&["--", "echo", "x"]), &env).unwrap();
        assert_eq!(spec.request.key, b"k".to_vec());
        assert_eq!(spec.exec, raw(&["echo", "x"]));
        let range_only = WatchEnvironment {
            key: vec![],
            range_end: b"z".to_vec(),
        };
        assert_eq!(
            range_only.check().unwrap_err().message,
            "ETCDCTL_WATCH_KEY is empty but got ETCDCTL_WATCH_RANGE_END=\"z\""
        );
    }

    #[test]
    fn interactive_lines_are_read_as_etcdctl_reads_them() {
        let none = WatchEnvironment::default();
        let Line::Watch(spec) = parse_line("watch a --rev 3 --prev-kv -- echo 'two words'", &none).unwrap()
        else {
            panic!("a watch line");
        };
        assert_eq!(
            (spec.request.key.as_slice(), spec.request.start_revision),
            (&b"a"[..], 3)
        );
        assert!(spec.request.prev_kv);
        assert_eq!(spec.exec, raw(&["echo", "two words"]));
        assert!(matches!(parse_line("progress", &none).unwrap(), Line::Progress));
        let invalid = |line: &str| match parse_line(line, &none).unwrap() {
            Line::Invalid(message) => message,
            other => panic!("{line:?} gave {other:?}"),
        };
        assert_eq!(invalid(""), "Invalid command:  (watch and progress supported)");
        assert_eq!(invalid("get a"), "Invalid command get a (only support watch)");
        assert_eq!(
            invalid("watch"),
            "Invalid command watch (command type or key is not provided)"
        );
        assert_eq!(
            invalid("watch a b --prefix"),
            "Invalid command watch a b --prefix (`range_end` and `--prefix` are mutually exclusive)"
        );
        let fatal = |line: &str| parse_line(line, &none).unwrap_err();
        assert_eq!(fatal("watch a --bogus").message, "unknown flag: --bogus");
        assert_eq!(
            fatal("watch a -w json").message,
            "unknown shorthand flag: 'w' in -w"
        );
        assert_eq!(fatal("watch --prefix").message, BAD_ARGS_NUM);
        assert_eq!(fatal("watch a --").message, SEPARATOR_WITHOUT_COMMAND);
        assert_eq!(fatal("watch a --bogus").code, 128);
    }
}
