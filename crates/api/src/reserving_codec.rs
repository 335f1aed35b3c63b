//! The gRPC codec of every generated keel and etcd service and client:
//! prost messages, as `tonic::codec::ProstCodec` encodes them, except that
//! each message's whole length is reserved in tonic's buffer before it is
//! written. tonic's buffer otherwise grows by doubling while a large
//! message (a Range over many keys, a Watch response carrying a pull's
//! events) is written into it, copying what it already holds at every
//! step. The bytes on the wire are the same.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder, ProstCodec};
use tonic::Status;

/// Encodes `T` and decodes `U` (the names tonic's generated code expects).
#[derive(Debug, Clone, Copy)]
pub struct ReservingProstCodec<T, U> {
    _messages: PhantomData<(T, U)>,
}

impl<T, U> Default for ReservingProstCodec<T, U> {
    fn default() -> Self {
        ReservingProstCodec {
            _messages: PhantomData,
        }
    }
}

impl<T, U> Codec for ReservingProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ReservingEncoder<T>;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> ReservingEncoder<T> {
        ReservingEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::default())
    }
}

/// Writes a message after reserving its encoded length.
#[derive(Debug, Clone, Copy)]
pub struct ReservingEncoder<T> {
    _message: PhantomData<T>,
}

impl<T> Default for ReservingEncoder<T> {
    fn default() -> Self {
        ReservingEncoder {
            _message: PhantomData,
        }
    }
}

impl<T: Message> Encoder for ReservingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, message: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(message.encoded_len());
        message.encode_raw(buf);
        Ok(())
    }
}
