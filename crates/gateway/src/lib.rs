//! etcd's HTTP/JSON gateway: every v3 RPC a member serves over gRPC, also
//! served as JSON over HTTP/1.1 and HTTP/2 on the same port, under `/v3/`
//! and etcd 3.4's older `/v3beta/`, as etcd 3.4's grpc-gateway serves it.
//!
//! Nothing here implements an RPC: a JSON request is translated to its
//! protobuf message ([`json_messages`], pbjson's proto3 JSON mapping with
//! proto field names), handed to the member's own gRPC services in-process
//! (the same `Routes` the gRPC listener serves), and the answer translated
//! back. So the gateway can never answer differently from gRPC, and each
//! RPC a later issue adds is one line in [`rpc_table`].

// tonic::Status is the error of every gRPC call the gateway makes.
#![allow(clippy::result_large_err)]

mod grpc_in_process;
mod http_answers;
mod rpc_table;
mod streaming_calls;
mod unary_calls;

pub mod json_messages;

use std::sync::Arc;

use axum::routing::{on, MethodFilter};
use tonic::service::Routes;

/// What the gateway needs besides the gRPC services it calls.
#[derive(Debug, Clone, Copy)]
pub struct GatewaySettings {
    /// The member's `--max-request-bytes`: a JSON body may be larger than
    /// the protobuf it becomes (base64), so the gateway reads up to about
    /// twice this and the gRPC service enforces the limit on the protobuf.
    pub max_request_bytes: usize,
}

impl GatewaySettings {
    fn json_body_limit(&self) -> usize {
        self.max_request_bytes.saturating_mul(2).saturating_add(1 << 20)
    }
}

/// What a client port serves: the gRPC services at their method paths, the
/// gateway at `/v3/...` and `/v3beta/...`, and the member's own HTTP
/// endpoints (`other_http_routes`, e.g. `/health`); none overlap. An
/// unknown path answers as gRPC would to a gRPC request (UNIMPLEMENTED),
/// and 404 to anything else, as etcd does. The gateway calls
/// `gateway_calls`: the same services, which the caller may wrap (the
/// server counts them in its gRPC metrics, as etcd's gateway's calls reach
/// its gRPC server over a connection of their own).
pub fn client_port_routes(
    grpc_services: Routes,
    gateway_calls: Routes,
    settings: GatewaySettings,
    other_http_routes: axum::Router,
) -> Routes {
    let gateway = gateway_router(gateway_calls, settings);
    let router = grpc_services
        .into_axum_router()
        .merge(gateway)
        .merge(other_http_routes)
        .fallback(|request: axum::extract::Request| async move { http_answers::unknown_path(&request) });
    Routes::from(router)
}

/// The gateway's routes (`/v3/...` and `/v3beta/...`), each calling
/// `grpc_services`.
fn gateway_router(grpc_services: Routes, settings: GatewaySettings) -> axum::Router {
    let grpc_services = Arc::new(grpc_services);
    let mut router = axum::Router::new();
    for rpc in rpc_table::GATEWAY_RPCS {
        for prefix in ["/v3", "/v3beta"] {
            for path in rpc.http_paths {
                let grpc_services = grpc_services.clone();
                let handler = move |request: axum::extract::Request| {
                    let grpc_services = Routes::clone(&grpc_services);
                    async move { answer(rpc, grpc_services, settings, request).await }
                };
                router = router
                    .route(&format!("{prefix}{path}"), on(MethodFilter::POST, handler))
                    .route(
                        &format!("{prefix}{path}"),
                        on(MethodFilter::OPTIONS, || async { http_answers::preflight() }),
                    );
            }
        }
    }
    router
}

async fn answer(
    rpc: &'static rpc_table::GatewayRpc,
    grpc_services: Routes,
    settings: GatewaySettings,
    request: axum::extract::Request,
) -> axum::response::Response {
    match rpc.shape {
        rpc_table::RpcShape::Unary => unary_calls::answer(rpc, grpc_services, settings, request).await,
        rpc_table::RpcShape::ServerStreaming | rpc_table::RpcShape::BidiStreaming => {
            streaming_calls::answer(rpc, grpc_services, settings, request).await
        }
    }
}
