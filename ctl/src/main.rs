//! keelctl: the etcdctl-compatible command line for keel (and any etcd v3
//! cluster). This file owns the command-line surface (global flags and
//! their KEELCTL_*/ETCDCTL_* environment variables, the command tree, the
//! help text), turns clap's errors into etcdctl's "Error: ..." form, and
//! dispatches to `commands`; what each command prints lives in `output`.

mod commands;
mod error;
mod go_bool;
mod go_value_format;
mod output;
mod txn_parse;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use commands::alarm::AlarmCommand;
use commands::cluster::{EndpointArgs, MemberCommand, MoveLeaderArgs};
use commands::concurrency::{ElectArgs, LockArgs};
use commands::kv::{CompactionArgs, DelArgs, GetArgs, PutArgs};
use commands::lease::LeaseCommand;
use commands::txn::TxnArgs;
use commands::watch::WatchArgs;
use commands::Ctx;
use error::{CtlError, EXIT_ERROR};
use go_bool::GoBoolFlag;
use keel_client::TlsOptions;
use output::{Format, Output, Printer};

const EXAMPLES: &str = "\
Examples:
  keelctl put name john                          write a key (the value is read from stdin when absent)
  keelctl get name                               read a key
  keelctl get / --prefix --keys-only             list the keys under a prefix
  keelctl get a z -w table                       a range [a, z) as a table (KEY, VALUE, REVISION)
  keelctl del /tmp --prefix --prev-kv            delete every key under a prefix, printing them
  keelctl txn -i                                 a transaction: compares, then success and failure requests
  printf 'mod(\"k\") > \"0\"\\n\\nput k v\\n\\nput k new\\n\\n' | keelctl txn
  keelctl watch a/ --prefix --rev 1              print every change under a/ since revision 1, then wait for more
  keelctl watch k -- sh -c 'echo $ETCD_WATCH_KEY'  run a command for each change of k
  keelctl lease grant 60                         a lease of 60 seconds (prints its ID in hex)
  keelctl put k v --lease 694d77aa9e38260f       a key that lives as long as the lease
  keelctl lease keep-alive 694d77aa9e38260f      renew the lease until interrupted
  keelctl lock jobs -- make release              run a command holding the lock \"jobs\"
  keelctl elect web node-1                       lead election \"web\" (Kubernetes timings: 15s/10s/2s)
  keelctl elect web -l                           print every leader of \"web\"
  keelctl compaction 42                          forget the history before revision 42
  keelctl member list -w table                   the cluster's members
  keelctl endpoint status --cluster -w table     every member's status (leader, raft term and index)
  keelctl endpoint health --cluster              a linearizable read through every member
  keelctl endpoint hashkv --cluster              every member's hash of the key-value history
  keelctl alarm list                             the raised alarms (NOSPACE: over --quota-backend-bytes)
  keelctl alarm disarm                           clear every alarm
  keelctl move-leader 8211f1d0f64f3269           make that member the leader (an endpoint must be the leader)
  keelctl defrag --cluster                       defragment every member's keyspace
  keelctl user add root --new-user-password=pw   a user (without the flag: asks for the password twice)
  keelctl role add reader                        a role
  keelctl role grant-permission r read /a/ --prefix  let role r read every key under /a/
  keelctl user grant-role alice reader           give alice the role
  keelctl user get alice --detail                alice's roles and their permissions
  keelctl auth enable                            turn authentication on (root gets the root role first)
  keelctl --user root:pw get /app/ --prefix      act as root (--user root alone asks for the password)
  keelctl --user root --password pw auth disable  turn authentication off (as root)

Endpoints come from --endpoints, else $KEELCTL_ENDPOINTS, else $ETCDCTL_ENDPOINTS
(every global flag can be set that way, e.g. KEELCTL_WRITE_OUT=json).";

#[derive(Parser, Debug)]
#[command(
    name = "keelctl",
    version,
    about = "keelctl: a command line client for keel (and etcd v3), compatible with etcdctl",
    after_help = EXAMPLES,
    infer_subcommands = true,
    arg_required_else_help = true
)]
struct Cli {
    /// gRPC endpoints (comma-separated).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379",
        env = "KEELCTL_ENDPOINTS"
    )]
    endpoints: Vec<String>,
    /// Dial timeout for client connections (Go duration: 2s, 500ms, 1m).
    #[arg(
        long = "dial-timeout",
        global = true,
        default_value = "2s",
        env = "KEELCTL_DIAL_TIMEOUT"
    )]
    dial_timeout: String,
    /// Timeout for short running command (excluding dial timeout).
    #[arg(
        long = "command-timeout",
        global = true,
        default_value = "5s",
        env = "KEELCTL_COMMAND_TIMEOUT"
    )]
    command_timeout: String,
    /// Set the output format (fields, json, protobuf, simple, table).
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        default_value = "simple",
        env = "KEELCTL_WRITE_OUT"
    )]
    write_out: String,
    /// Print byte strings as hex encoded strings.
    #[arg(long, global = true, go_bool_default = false, env = "KEELCTL_HEX")]
    hex: bool,
    /// Enable client-side debug logging.
    #[arg(long, global = true, go_bool_default = false, env = "KEELCTL_DEBUG")]
    debug: bool,
    /// Accepted for etcdctl compatibility; keel uses its own keepalive.
    #[arg(
        long = "keepalive-time",
        global = true,
        hide = true,
        env = "KEELCTL_KEEPALIVE_TIME"
    )]
    keepalive_time: Option<String>,
    /// Accepted for etcdctl compatibility; keel uses its own keepalive.
    #[arg(
        long = "keepalive-timeout",
        global = true,
        hide = true,
        env = "KEELCTL_KEEPALIVE_TIMEOUT"
    )]
    keepalive_timeout: Option<String>,
    /// Verify certificates of TLS-enabled secure servers using this CA bundle.
    #[arg(
        long = "cacert",
        id = "tls_cacert",
        value_name = "FILE",
        global = true,
        env = "KEELCTL_CACERT"
    )]
    cacert: Option<String>,
    /// Identify secure client using this TLS certificate file.
    #[arg(
        long = "cert",
        id = "tls_cert",
        value_name = "FILE",
        global = true,
        env = "KEELCTL_CERT"
    )]
    cert: Option<String>,
    /// Identify secure client using this TLS key file.
    // Not `key`: commands have a KEY argument of that id.
    #[arg(
        long = "key",
        id = "tls_key",
        value_name = "FILE",
        global = true,
        env = "KEELCTL_KEY"
    )]
    key: Option<String>,
    /// Skip server certificate verification (CAUTION: this option should be
    /// enabled only for testing purposes).
    #[arg(
        long = "insecure-skip-tls-verify",
        global = true,
        go_bool_default = false,
        env = "KEELCTL_INSECURE_SKIP_TLS_VERIFY"
    )]
    insecure_skip_tls_verify: bool,
    /// Disable transport security for client connections (https:// endpoints
    /// use TLS regardless; bare host:port ones when this is false or a
    /// certificate file is given).
    #[arg(
        long = "insecure-transport",
        global = true,
        go_bool_default = true,
        env = "KEELCTL_INSECURE_TRANSPORT"
    )]
    insecure_transport: bool,
    /// username[:password] for authentication (prompt if password is not supplied).
    #[arg(
        long = "user",
        id = "auth_user",
        value_name = "USER",
        global = true,
        env = "KEELCTL_USER",
        hide_env_values = true
    )]
    user: Option<String>,
    /// password for authentication (if this option is used, --user option shouldn't include password).
    #[arg(
        long = "password",
        id = "auth_password",
        value_name = "PASSWORD",
        global = true,
        env = "KEELCTL_PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Puts the given key into the store.
    ///
    /// When VALUE is absent it is read from stdin (`cat file | keelctl put KEY`).
    /// A value that begins with '-' needs '--' first: `keelctl put KEY -- -value`.
    ///
    /// Example: keelctl put name john --prev-kv
    Put(PutArgs),
    /// Gets the key or a range of keys [KEY, RANGE_END).
    ///
    /// Example: keelctl get / --prefix --keys-only
    Get(GetArgs),
    /// Removes the specified key or range of keys [KEY, RANGE_END).
    ///
    /// Example: keelctl del /tmp --prefix
    Del(DelArgs),
    /// Txn processes all the requests in one transaction.
    ///
    /// Reads three sections from stdin, each ended by an empty line: the
    /// compares (e.g. `mod("key") > "0"`, `value("key") = "v"`), the requests
    /// run when all compares hold, and those run otherwise (put, get, del
    /// lines with their flags).
    ///
    /// Example: printf 'value("k") = "v"\n\nput k w\n\nget k\n\n' | keelctl txn
    Txn(TxnArgs),
    /// Watches events stream on keys or prefixes.
    ///
    /// Prints each change of KEY (or of the range [KEY, RANGE_END), or of a
    /// prefix) until the server ends the watch. With `-- COMMAND ARGS...`, runs
    /// COMMAND for every event with ETCD_WATCH_REVISION, ETCD_WATCH_EVENT_TYPE,
    /// ETCD_WATCH_KEY and ETCD_WATCH_VALUE set. With -i, reads `watch ...` and
    /// `progress` lines from stdin. ETCDCTL_WATCH_KEY and ETCDCTL_WATCH_RANGE_END
    /// may give the key and range end.
    ///
    /// Example: keelctl watch a/ --prefix --rev 1 --prev-kv
    Watch(WatchArgs),
    /// Compacts the event history up to a revision.
    ///
    /// Example: keelctl compaction 42
    Compaction(CompactionArgs),
    /// Lease related commands (grant, revoke, timetolive, list, keep-alive).
    ///
    /// Example: keelctl lease grant 60
    Lease {
        #[command(subcommand)]
        command: LeaseCommand,
    },
    /// Acquires a named lock.
    ///
    /// Prints the lock's key and holds the lock until interrupted, or runs
    /// the command given after `--` holding it, with ETCD_LOCK_KEY and
    /// ETCD_LOCK_REV set.
    ///
    /// Example: keelctl lock jobs -- make release
    Lock(LockArgs),
    /// Observes and participates in leader election.
    ///
    /// With a proposal: campaigns, prints the leader's key and value once
    /// elected, and leads until interrupted (then resigns). Leadership uses
    /// Kubernetes' timings: the session lease lasts --lease-duration; a
    /// leader renews every --retry-period and steps down (exits with an
    /// error) when no renewal succeeded within --renew-deadline, before its
    /// lease can expire. With -l: prints every leader.
    ///
    /// Example: keelctl elect web node-1 --lease-duration 15s --renew-deadline 10s --retry-period 2s
    Elect(ElectArgs),
    /// Membership related commands.
    ///
    /// Example: keelctl member list -w table
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Endpoint related commands (status, health, hashkv).
    ///
    /// Example: keelctl endpoint status --cluster -w table
    Endpoint(EndpointArgs),
    /// Alarm related commands (list, disarm).
    ///
    /// Example: keelctl alarm list
    Alarm {
        #[command(subcommand)]
        command: AlarmCommand,
    },
    /// Transfers leadership to another etcd cluster member.
    ///
    /// Asks the leader among the endpoints given (etcdctl's rule: the
    /// command fails when none of them leads) to hand leadership to the
    /// member whose ID (hex) is given, and waits until it leads.
    ///
    /// Example: keelctl --endpoints=127.0.0.1:2379,127.0.0.1:22379 move-leader 8211f1d0f64f3269
    MoveLeader(MoveLeaderArgs),
    /// Defragments the storage of the etcd members with given endpoints.
    ///
    /// Each member rewrites its own keyspace (not through Raft); reads go
    /// on meanwhile, writes wait. With --cluster, every member's client
    /// URLs from the member list. --data-dir (etcdctl's offline
    /// defragmentation) is refused.
    ///
    /// Example: keelctl defrag --cluster
    Defrag(commands::defrag::DefragArgs),
    /// Manages snapshots of a member's keyspace (save, status, restore).
    ///
    /// Example: keelctl --endpoints=127.0.0.1:2379 snapshot save backup.db
    Snapshot {
        #[command(subcommand)]
        command: commands::snapshot::SnapshotCommand,
    },
    /// User related commands (add, delete, get, list, passwd, grant-role, revoke-role).
    ///
    /// Example: keelctl user add alice --new-user-password=secret
    User {
        #[command(subcommand)]
        command: commands::user::UserCommand,
    },
    /// Role related commands (add, delete, get, list, grant-permission, revoke-permission).
    ///
    /// Example: keelctl role grant-permission reader read /app/ --prefix
    Role {
        #[command(subcommand)]
        command: commands::role::RoleCommand,
    },
    /// Enable or disable authentication (and its status).
    ///
    /// `auth enable` first gives the root user the root role when it lacks
    /// it, as etcdctl does.
    ///
    /// Example: keelctl --user root:secret auth disable
    Auth {
        #[command(subcommand)]
        command: commands::auth::AuthCommand,
    },
    /// Prints the version of keelctl.
    ///
    /// Example: keelctl version
    Version,
}

/// Lets etcdctl's variables set keelctl's flags: each global flag reads
/// `KEELCTL_<FLAG>` (its `env` above), or, when that is unset, etcdctl's
/// `ETCDCTL_<FLAG>`. A flag on the command line wins over both, and an
/// empty variable sets nothing (an empty `KEELCTL_<FLAG>` also hides
/// `ETCDCTL_<FLAG>`).
fn with_etcdctl_environment(command: clap::Command) -> clap::Command {
    command.mut_args(|arg| {
        let Some(keel_name) = arg.get_env().and_then(|name| name.to_str()).map(str::to_string) else {
            return arg;
        };
        let Some(flag) = keel_name.strip_prefix("KEELCTL_") else {
            return arg;
        };
        match std::env::var_os(&keel_name) {
            Some(value) if value.is_empty() => arg.env(None::<&str>),
            Some(_) => arg,
            None => {
                let etcd_name = format!("ETCDCTL_{flag}");
                match std::env::var_os(&etcd_name) {
                    Some(value) if !value.is_empty() => arg.env(etcd_name),
                    _ => arg,
                }
            }
        }
    })
}

/// clap's error in etcdctl's words ("unknown flag: --foo"); `given` is the command line.
fn usage_error(error: &clap::Error, given: &[OsString]) -> String {
    let context = if error.kind() == ErrorKind::InvalidSubcommand {
        ContextKind::InvalidSubcommand
    } else {
        ContextKind::InvalidArg
    };
    let invalid = match error.get(context) {
        Some(ContextValue::String(arg)) => Some(arg.clone()),
        _ => None,
    };
    match (error.kind(), invalid) {
        (ErrorKind::UnknownArgument, Some(arg)) if arg.starts_with("--") => {
            format!("unknown flag: {}", arg.split('=').next().unwrap_or(&arg))
        }
        (ErrorKind::UnknownArgument, Some(arg)) if arg.starts_with('-') && arg.chars().nth(1).is_some() => {
            // clap names only the unknown letter ("-z"); etcdctl names the whole group ("-zq").
            let shorthand = arg.chars().nth(1).unwrap_or('-');
            let group = given
                .iter()
                .map(|given| given.to_string_lossy())
                .find(|given| !given.starts_with("--") && given.starts_with(arg.as_str()))
                .map(|given| given.into_owned())
                .unwrap_or(arg);
            format!("unknown shorthand flag: '{shorthand}' in {group}")
        }
        (ErrorKind::InvalidSubcommand, Some(arg)) => format!("unknown command \"{arg}\" for \"keelctl\""),
        _ => {
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            first.trim_start_matches("error: ").to_string()
        }
    }
}

fn resolve(cli: &Cli) -> Result<Ctx, CtlError> {
    let dial_timeout = go_value_format::parse_duration(&cli.dial_timeout).map_err(|e| {
        CtlError::failed(format!(
            "invalid argument \"{}\" for \"--dial-timeout\" flag: {e}",
            cli.dial_timeout
        ))
    })?;
    let command_timeout = go_value_format::parse_duration(&cli.command_timeout).map_err(|e| {
        CtlError::failed(format!(
            "invalid argument \"{}\" for \"--command-timeout\" flag: {e}",
            cli.command_timeout
        ))
    })?;
    let endpoints: Vec<String> = cli
        .endpoints
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err(CtlError::new(
            error::EXIT_BAD_CONNECTION,
            "etcdclient: no available endpoints",
        ));
    }
    // etcdctl takes an empty path as none given.
    let path = |flag: &Option<String>| flag.as_deref().filter(|p| !p.is_empty()).map(PathBuf::from);
    let tls = TlsOptions {
        trusted_ca_file: path(&cli.cacert),
        cert_file: path(&cli.cert),
        key_file: path(&cli.key),
        insecure_skip_verify: cli.insecure_skip_tls_verify,
        insecure_transport: cli.insecure_transport,
    };
    // As etcdctl, unusable TLS files fail every command before it dials
    // (not as one endpoint's failure of `endpoint health`).
    if tls.names_files() {
        keel_client::tls::client_tls_config(&tls).map_err(keel_client::ClientError::from)?;
    }
    Ok(Ctx {
        endpoints,
        dial_timeout,
        command_timeout,
        tls,
        printer: Printer {
            format: Format::parse(&cli.write_out)?,
            hex: cli.hex,
            value_only: false,
        },
        debug: cli.debug,
        auth: commands::auth::AuthFlags::new(cli.user.clone(), cli.password.clone()),
    })
}

async fn run(cli: Cli) -> Result<Output, CtlError> {
    if let Command::Version = cli.command {
        let mut out = Output::default();
        let text = format!(
            "keelctl version: {}\nAPI version: 3.4\n",
            env!("CARGO_PKG_VERSION")
        );
        out.stdout.extend(text.as_bytes());
        return Ok(out);
    }
    let ctx = resolve(&cli)?;
    if ctx.debug {
        eprintln!("KEELCTL_ENDPOINTS=[{}]", ctx.endpoints.join(","));
        eprintln!(
            "KEELCTL_DIAL_TIMEOUT={}",
            go_value_format::format_duration(ctx.dial_timeout)
        );
        eprintln!(
            "KEELCTL_COMMAND_TIMEOUT={}",
            go_value_format::format_duration(ctx.command_timeout)
        );
        eprintln!("KEELCTL_WRITE_OUT={}", ctx.printer.format.name());
        eprintln!("KEELCTL_HEX={}", ctx.printer.hex);
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,h2=info,hyper=info,tower=info",
            ))
            .try_init();
    }
    match &cli.command {
        Command::Put(args) => commands::kv::put(&ctx, args).await,
        Command::Get(args) => commands::kv::get(&ctx, args).await,
        Command::Del(args) => commands::kv::del(&ctx, args).await,
        Command::Txn(args) => commands::txn::txn(&ctx, args).await,
        Command::Compaction(args) => commands::kv::compaction(&ctx, args).await,
        Command::Watch(args) => commands::watch::watch(&ctx, args).await,
        Command::Lock(args) => commands::concurrency::lock(&ctx, args).await,
        Command::Elect(args) => commands::concurrency::elect(&ctx, args).await,
        Command::Lease { command } => commands::lease::lease(&ctx, command).await,
        Command::Member { command } => commands::cluster::member(&ctx, command).await,
        Command::Endpoint(args) => commands::cluster::endpoint(&ctx, args).await,
        Command::Alarm { command } => commands::alarm::alarm(&ctx, command).await,
        Command::MoveLeader(args) => commands::cluster::move_leader(&ctx, args).await,
        Command::Defrag(args) => commands::defrag::defrag(&ctx, args).await,
        Command::Snapshot { command } => commands::snapshot::snapshot(&ctx, command).await,
        Command::User { command } => commands::user::user(&ctx, command).await,
        Command::Role { command } => commands::role::role(&ctx, command).await,
        Command::Auth { command } => commands::auth::auth(&ctx, command).await,
        Command::Version => Ok(Output::default()),
    }
}

fn emit(out: &Output) {
    let _ = std::io::stdout().write_all(&out.stdout);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().write_all(&out.stderr);
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let parsed = with_etcdctl_environment(Cli::command())
        .try_get_matches_from(&args)
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(error) => match error.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                let _ = error.print();
                std::process::exit(0);
            }
            _ => {
                eprintln!("Error: {}", usage_error(&error, &args));
                eprintln!("Run 'keelctl --help' (or 'keelctl <command> --help') for usage.");
                std::process::exit(EXIT_ERROR);
            }
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error: cannot start the async runtime: {error}");
            std::process::exit(EXIT_ERROR);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(out) => emit(&out),
        Err(error) => {
            if let Some(partial) = &error.partial {
                emit(partial);
            }
            if !error.silent {
                eprintln!("Error: {}", error.message);
            }
            std::process::exit(error.code);
        }
    }
}
