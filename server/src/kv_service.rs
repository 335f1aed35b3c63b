//! The etcd `KV` service: request checks, then reads through the read path
//! (linearizable unless `serializable`) and writes, once the space quota
//! admits them (`space_quota.rs`), through the write path.

use std::sync::Arc;

use keel_api::etcdserverpb::kv_server::Kv;
use keel_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use keel_api::keelpb::{write_request, write_response, WriteRequest};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::auth_check::{self, Caller};
use crate::context::{mvcc_status, MemberContext};
use crate::request_checks::{check_delete, check_put, check_range};

pub struct KvService {
    context: Arc<MemberContext>,
}

impl KvService {
    pub fn new(context: Arc<MemberContext>) -> Self {
        KvService { context }
    }

    /// Sends one write through the write path and answers it with its own
    /// response kind, its header stamped with this member's identity.
    async fn write<W: KvWrite>(&self, request: W, caller: &Caller) -> Result<Response<W::Response>, Status> {
        let request = request.into_write();
        crate::space_quota::admit(&self.context, &request).await?;
        let written = self
            .context
            .node
            .write(WriteRequest {
                checked_auth_revision: caller.checked_revision(),
                request: Some(request),
            })
            .await?
            .response
            .ok_or_else(|| Status::internal("etcdserver: empty write response"))?;
        let mut response = W::answer(written)
            .ok_or_else(|| Status::internal("etcdserver: unexpected response kind for the request"))?;
        let header = W::header(&mut response);
        *header = self.context.stamp(header.take());
        Ok(Response::new(response))
    }
}

/// A KV request that goes through the write path, and the response kind
/// that answers it.
trait KvWrite {
    type Response;
    fn into_write(self) -> write_request::Request;
    fn answer(response: write_response::Response) -> Option<Self::Response>;
    fn header(response: &mut Self::Response) -> &mut Option<ResponseHeader>;
}

/// `KvWrite` for a request and response that share one variant name.
macro_rules! kv_write {
    ($request:ty => $response:ty, $variant:ident) => {
        impl KvWrite for $request {
            type Response = $response;

            fn into_write(self) -> write_request::Request {
                write_request::Request::$variant(self)
            }

            fn answer(response: write_response::Response) -> Option<$response> {
                match response {
                    write_response::Response::$variant(response) => Some(response),
                    _ => None,
                }
            }

            fn header(response: &mut $response) -> &mut Option<ResponseHeader> {
                &mut response.header
            }
        }
    };
}

kv_write!(PutRequest => PutResponse, Put);
kv_write!(DeleteRangeRequest => DeleteRangeResponse, DeleteRange);
kv_write!(TxnRequest => TxnResponse, Txn);
kv_write!(CompactionRequest => CompactionResponse, Compaction);

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.context.limits.check_size(request.get_ref().encoded_len())?;
        check_range(request.get_ref())?;
        // Linearize first, then check the permission against the auth state
        // the read sees (as etcd): a follower never serves a linearizable
        // read on a permission revoked before the read began.
        if !request.get_ref().serializable {
            self.context.node.linearize().await?;
        }
        let caller = Caller::of(&self.context, &request)?;
        let range = request.into_inner();
        caller.check(
            &self.context,
            keel_auth::Access::Read,
            &range.key,
            &range.range_end,
        )?;
        let mut response = self
            .context
            .node
            .state()
            .store()
            .range(&range)
            .map_err(mvcc_status)?;
        response.header = self.context.stamp(response.header);
        Ok(Response::new(response))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = Caller::of(&self.context, &request)?;
        let put = request.into_inner();
        self.context.limits.check_size(put.encoded_len())?;
        check_put(&put)?;
        auth_check::check_put(&caller, &self.context, &put)?;
        self.write(put, &caller).await
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let caller = Caller::of(&self.context, &request)?;
        let delete = request.into_inner();
        self.context.limits.check_size(delete.encoded_len())?;
        check_delete(&delete)?;
        auth_check::check_delete(&caller, &self.context, &delete)?;
        self.write(delete, &caller).await
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let caller = Caller::of(&self.context, &request)?;
        let txn = request.into_inner();
        self.context.limits.check_size(txn.encoded_len())?;
        self.context.limits.check_txn(&txn)?;
        auth_check::check_txn(&caller, &self.context, &txn)?;
        self.write(txn, &caller).await
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // etcd 3.4 lets any user compact (no permission check).
        let caller = Caller::of(&self.context, &request)?;
        let compaction = request.into_inner();
        self.write(compaction, &caller).await
    }
}
