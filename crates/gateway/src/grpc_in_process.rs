//! Calls the member's gRPC services in-process, as a gRPC client would over
//! the wire: length-prefixed protobuf frames in, frames and a `grpc-status`
//! (in the headers for an immediate failure, else in the trailers) out.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use tonic::body::BoxBody;
use tonic::service::Routes;
use tonic::{Code, Status};
use tower::ServiceExt;

/// gRPC's frame prefix: a compression flag and a big-endian length.
const FRAME_PREFIX_LEN: usize = 5;

/// One protobuf message as a gRPC frame (uncompressed).
pub(crate) fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(FRAME_PREFIX_LEN + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(message);
    frame.freeze()
}

/// Starts a call of `grpc_path` with `request_frames` as its request
/// stream; `authorization` is passed on as gRPC metadata.
pub(crate) async fn start_call(
    grpc_services: Routes,
    grpc_path: &str,
    authorization: Option<http::HeaderValue>,
    request_frames: BoxBody,
) -> Result<GrpcAnswer, Status> {
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(grpc_path)
        .version(http::Version::HTTP_2)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers");
    if let Some(token) = authorization {
        request = request.header(http::header::AUTHORIZATION, token);
    }
    let request = request
        .body(request_frames)
        .map_err(|e| Status::internal(format!("gateway: building the gRPC request: {e}")))?;
    let response = grpc_services
        .oneshot(request)
        .await
        .map_err(|error| Status::internal(format!("gateway: calling the member's services: {error}")))?;
    // A call that fails before answering carries its status in the headers.
    if let Some(status) = Status::from_header_map(response.headers()) {
        if status.code() != Code::Ok {
            return Err(status);
        }
    }
    Ok(GrpcAnswer {
        body: response.into_body(),
        buffer: BytesMut::new(),
    })
}

/// The answer of a call: its messages, then its final status.
pub(crate) struct GrpcAnswer {
    body: BoxBody,
    buffer: BytesMut,
}

impl GrpcAnswer {
    /// The next response message; `None` once the call ended well; the
    /// call's status when it ended with an error.
    pub(crate) async fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if let Some(message) = self.take_buffered_message()? {
                return Ok(Some(message));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buffer.extend_from_slice(&data),
                    Err(frame) => {
                        if let Some(status) = frame.trailers_ref().and_then(Status::from_header_map) {
                            if status.code() != Code::Ok {
                                return Err(status);
                            }
                        }
                    }
                },
                Some(Err(status)) => return Err(status),
                None if self.buffer.is_empty() => return Ok(None),
                None => return Err(Status::internal("gateway: the answer ended inside a message")),
            }
        }
    }

    fn take_buffered_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buffer.len() < FRAME_PREFIX_LEN {
            return Ok(None);
        }
        if self.buffer[0] != 0 {
            return Err(Status::internal("gateway: a compressed answer was not asked for"));
        }
        let length =
            u32::from_be_bytes([self.buffer[1], self.buffer[2], self.buffer[3], self.buffer[4]]) as usize;
        if self.buffer.len() < FRAME_PREFIX_LEN + length {
            return Ok(None);
        }
        self.buffer.advance(FRAME_PREFIX_LEN);
        Ok(Some(self.buffer.split_to(length).freeze()))
    }
}
