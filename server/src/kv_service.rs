//! The etcd `KV` service: request checks, then reads through the read path
//! (linearizable unless `serializable`) and writes through the write path.

use std::sync::Arc;

use keel_api::etcdserverpb::kv_server::Kv;
use keel_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use keel_api::keelpb::{write_request, write_response, WriteRequest};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::context::{mvcc_status, MemberContext};
use crate::request_checks::{check_delete, check_put, check_range};

pub struct KvService {
    context: Arc<MemberContext>,
}

impl KvService {
    pub fn new(context: Arc<MemberContext>) -> Self {
        KvService { context }
    }

    async fn write(&self, request: write_request::Request) -> Result<write_response::Response, Status> {
        let response = self
            .context
            .write_path
            .write(WriteRequest {
                request: Some(request),
            })
            .await?;
        response
            .response
            .ok_or_else(|| Status::internal("etcdserver: empty write response"))
    }
}

fn unexpected_response() -> Status {
    Status::internal("etcdserver: unexpected response kind for the request")
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let range = request.into_inner();
        self.context.limits.check_size(range.encoded_len())?;
        check_range(&range)?;
        if !range.serializable {
            self.context.read_path.linearize().await?;
        }
        let mut response = self.context.state.store().range(&range).map_err(mvcc_status)?;
        response.header = self.context.stamp(response.header);
        Ok(Response::new(response))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let put = request.into_inner();
        self.context.limits.check_size(put.encoded_len())?;
        check_put(&put)?;
        match self.write(write_request::Request::Put(put)).await? {
            write_response::Response::Put(mut response) => {
                response.header = self.context.stamp(response.header);
                Ok(Response::new(response))
            }
            _ => Err(unexpected_response()),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let delete = request.into_inner();
        self.context.limits.check_size(delete.encoded_len())?;
        check_delete(&delete)?;
        match self.write(write_request::Request::DeleteRange(delete)).await? {
            write_response::Response::DeleteRange(mut response) => {
                response.header = self.context.stamp(response.header);
                Ok(Response::new(response))
            }
            _ => Err(unexpected_response()),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let txn = request.into_inner();
        self.context.limits.check_size(txn.encoded_len())?;
        self.context.limits.check_txn(&txn)?;
        match self.write(write_request::Request::Txn(txn)).await? {
            write_response::Response::Txn(mut response) => {
                response.header = self.context.stamp(response.header);
                Ok(Response::new(response))
            }
            _ => Err(unexpected_response()),
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let compaction = request.into_inner();
        match self.write(write_request::Request::Compaction(compaction)).await? {
            write_response::Response::Compaction(mut response) => {
                response.header = self.context.stamp(response.header);
                Ok(Response::new(response))
            }
            _ => Err(unexpected_response()),
        }
    }
}
