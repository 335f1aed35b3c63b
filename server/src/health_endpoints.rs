//! etcd's HTTP endpoints beside gRPC on the client port: `/health` (etcd
//! 3.4's: healthy when no alarm is raised, a leader is known and a
//! linearizable read, or with `?serializable=true` a local one, succeeds
//! within a second), `/version`, and etcd 3.5's probes `/livez` (the member
//! serves local reads) and `/readyz` (also no alarm, a leader and
//! linearizable reads).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::context::MemberContext;

/// How long a health check's read may take, as in etcd.
const HEALTH_READ_LIMIT: Duration = Duration::from_secs(1);

pub fn health_routes(context: Arc<MemberContext>) -> axum::Router {
    axum::Router::new()
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(context)
}

#[derive(Deserialize)]
struct HealthQuery {
    #[serde(default)]
    serializable: Option<String>,
}

#[derive(Deserialize)]
struct ProbeQuery {
    #[serde(default)]
    verbose: Option<String>,
}

/// One check a probe makes.
#[derive(Clone, Copy)]
enum HealthCheck {
    NoAlarm,
    LeaderKnown,
    SerializableRead,
    LinearizableRead,
}

impl HealthCheck {
    fn name(self) -> &'static str {
        match self {
            HealthCheck::NoAlarm => "alarm",
            HealthCheck::LeaderKnown => "leader",
            HealthCheck::SerializableRead => "serializable_read",
            HealthCheck::LinearizableRead => "linearizable_read",
        }
    }

    async fn passes(self, context: &MemberContext) -> bool {
        match self {
            HealthCheck::NoAlarm => context.node.state().alarms().is_empty(),
            HealthCheck::LeaderKnown => context.node.leadership().known_leader().is_some(),
            // A local read of one key, as etcd's check reads: the
            // member's applied keyspace answers from storage.
            HealthCheck::SerializableRead => {
                let probe = keel_api::etcdserverpb::RangeRequest {
                    key: b"health".to_vec(),
                    serializable: true,
                    count_only: true,
                    ..Default::default()
                };
                context.node.state().store().range(&probe).is_ok()
            }
            HealthCheck::LinearizableRead => matches!(
                tokio::time::timeout(HEALTH_READ_LIMIT, context.node.linearize()).await,
                Ok(Ok(()))
            ),
        }
    }
}

async fn health(State(context): State<Arc<MemberContext>>, Query(query): Query<HealthQuery>) -> Response {
    let serializable = query.serializable.as_deref() == Some("true");
    let read = if serializable {
        HealthCheck::SerializableRead
    } else {
        HealthCheck::LinearizableRead
    };
    let mut healthy = true;
    for check in [HealthCheck::NoAlarm, HealthCheck::LeaderKnown, read] {
        if !check.passes(&context).await {
            tracing::warn!(check = check.name(), "/health: unhealthy");
            healthy = false;
            break;
        }
    }
    let (status, body) = if healthy {
        (StatusCode::OK, r#"{"health":"true"}"#)
    } else {
        // etcd answers unhealthy through Go's http.Error, which ends the
        // body with a newline.
        (StatusCode::SERVICE_UNAVAILABLE, "{\"health\":\"false\"}\n")
    };
    // etcd 3.4 sends this JSON as text/plain.
    with_content_type(status, body.to_string(), "text/plain; charset=utf-8")
}

async fn version() -> Response {
    let server = keel_api::REPORTED_ETCD_VERSION;
    let cluster = server
        .rsplit_once('.')
        .map_or(server.to_string(), |(minor, _)| format!("{minor}.0"));
    let body = serde_json::json!({ "etcdserver": server, "etcdcluster": cluster }).to_string();
    with_content_type(StatusCode::OK, body, "application/json")
}

async fn livez(State(context): State<Arc<MemberContext>>, Query(query): Query<ProbeQuery>) -> Response {
    probe("livez", &[HealthCheck::SerializableRead], &context, query).await
}

async fn readyz(State(context): State<Arc<MemberContext>>, Query(query): Query<ProbeQuery>) -> Response {
    let checks = [
        HealthCheck::NoAlarm,
        HealthCheck::LeaderKnown,
        HealthCheck::SerializableRead,
        HealthCheck::LinearizableRead,
    ];
    probe("readyz", &checks, &context, query).await
}

/// etcd 3.5's probe answer: `ok`, or `<probe> check failed`; with
/// `?verbose` one `[+]check ok` / `[-]check failed` line per check first.
async fn probe(name: &str, checks: &[HealthCheck], context: &MemberContext, query: ProbeQuery) -> Response {
    let mut lines = String::new();
    let mut all_pass = true;
    for check in checks {
        let passes = check.passes(context).await;
        all_pass &= passes;
        if passes {
            lines.push_str(&format!("[+]{} ok\n", check.name()));
        } else {
            lines.push_str(&format!("[-]{} failed: reason withheld\n", check.name()));
        }
    }
    let verdict = if all_pass {
        "ok".to_string()
    } else {
        format!("{name} check failed")
    };
    let body = if query.verbose.is_some() {
        format!("{lines}{verdict}\n")
    } else {
        format!("{verdict}\n")
    };
    let status = if all_pass {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    with_content_type(status, body, "text/plain; charset=utf-8")
}

fn with_content_type(status: StatusCode, body: String, content_type: &'static str) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
