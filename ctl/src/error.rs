//! keelctl's errors and exit codes, as etcdctl 3.4 uses them: the message is
//! printed as `Error: <message>` on stderr and the process exits with the
//! code (1 for a failed request, 2 for no endpoint to connect to, 3 for
//! bad txn or watch input, 4 for an unsupported output format or flag
//! value, 5 for a watch the server ended, 128 for bad arguments).

use keel_client::{ClientError, TlsError};

/// etcdctl's exit codes (`ctlv3/command/error.go`).
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_BAD_CONNECTION: i32 = 2;
pub const EXIT_INVALID_INPUT: i32 = 3;
pub const EXIT_BAD_FEATURE: i32 = 4;
pub const EXIT_INTERRUPTED: i32 = 5;
pub const EXIT_BAD_ARGS: i32 = 128;

#[derive(Debug)]
pub struct CtlError {
    pub code: i32,
    pub message: String,
    /// Printed as is, without the `Error: ` line (for commands that already
    /// reported their failures, as `endpoint status` does).
    pub silent: bool,
    /// Output gathered before the failure, printed before the error.
    pub partial: Option<crate::output::Output>,
}

impl CtlError {
    pub fn new(code: i32, message: impl Into<String>) -> CtlError {
        CtlError {
            code,
            message: message.into(),
            silent: false,
            partial: None,
        }
    }

    pub fn failed(message: impl Into<String>) -> CtlError {
        CtlError::new(EXIT_ERROR, message)
    }

    pub fn bad_args(message: impl Into<String>) -> CtlError {
        CtlError::new(EXIT_BAD_ARGS, message)
    }

    pub fn bad_feature(message: impl Into<String>) -> CtlError {
        CtlError::new(EXIT_BAD_FEATURE, message)
    }

    pub fn invalid_input(message: impl Into<String>) -> CtlError {
        CtlError::new(EXIT_INVALID_INPUT, message)
    }

    /// Exit with `code` and print nothing more.
    pub fn exit_quietly(code: i32) -> CtlError {
        CtlError {
            code,
            message: String::new(),
            silent: true,
            partial: None,
        }
    }
}

impl From<ClientError> for CtlError {
    fn from(error: ClientError) -> CtlError {
        match &error {
            // etcdctl cannot make its client from the TLS flags: bad arguments.
            ClientError::Tls(tls) => CtlError::bad_args(tls_error_text(tls)),
            _ => CtlError::failed(client_error_text(&error)),
        }
    }
}

/// etcdctl's words for a TLS file it cannot open (Go's `open PATH: no such
/// file or directory`); keel's own for the rest.
fn tls_error_text(error: &TlsError) -> String {
    if let Some((path, io)) = error.unreadable_file() {
        let reason = match io.kind() {
            std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => io.to_string(),
        };
        return format!("open {}: {reason}", path.display());
    }
    error.to_string()
}

/// The text etcdctl would print for `error`: etcd's own message for a
/// server error; for a connection failure, "context deadline exceeded"
/// followed by what keelctl knows (the endpoints tried and why).
pub fn client_error_text(error: &ClientError) -> String {
    match error {
        ClientError::Status(status) => status_text(status),
        ClientError::Unreachable { .. } => format!("{}: {error}", keel_api::DEADLINE_EXCEEDED_TEXT),
        other => other.to_string(),
    }
}

/// The text clientv3 gives a server's error status: etcd's own message for
/// an etcd error, gRPC's form for any other.
pub fn status_text(status: &tonic::Status) -> String {
    let message = status.message();
    if status.code() == tonic::Code::DeadlineExceeded {
        keel_api::DEADLINE_EXCEEDED_TEXT.to_string()
    } else if keel_api::WireError::from_status(status).is_some() || message.starts_with("etcdserver: ") {
        message.to_string()
    } else {
        // clientv3 prints statuses it does not know as gRPC does.
        format!(
            "rpc error: code = {} desc = {message}",
            go_code_name(status.code())
        )
    }
}

/// grpc-go's name for a status code (`codes.Code.String()`).
fn go_code_name(code: tonic::Code) -> String {
    match code {
        tonic::Code::Cancelled => "Canceled".to_string(),
        other => format!("{other:?}"),
    }
}
