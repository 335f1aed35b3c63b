//! Repairs the HTTP/2 `:authority` that etcd 3.4's client sends for
//! per-endpoint calls (`etcdctl endpoint status --cluster`, any maintenance
//! call on an `http://host:port` endpoint): it sends the whole URL,
//! `http://127.0.0.1:2379`, which is not an authority, and Rust's h2 server
//! refuses such a stream with PROTOCOL_ERROR where etcd's Go server accepts it.
//!
//! Invariant: the repair never changes the length of anything. In a literal
//! `:authority` value inside a client HEADERS frame, the `://` of a URL is
//! replaced by `k--` (`httpk--127.0.0.1:2379`, a valid host:port). Both are
//! three octets, and in HPACK's Huffman code both take 7+6+6 bits, so the
//! frame length, the string length and the HPACK dynamic-table sizes on both
//! ends stay equal, and later indexed references to the entry stay in step.
//! Every other byte passes through unchanged; a header block the parser does
//! not understand is passed through as it is (h2 then judges it as before).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_read_buf;
use tonic::transport::server::Connected;

/// HTTP/2's client connection preface; a connection that starts otherwise
/// is HTTP/1.1 (the JSON gateway) and passes through untouched.
const CLIENT_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const CLIENT_PREFACE_LEN: usize = CLIENT_PREFACE.len();
const FRAME_HEADER_LEN: usize = 9;
const FRAME_TYPE_HEADERS: u8 = 0x1;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// `:authority` in HPACK's static table.
const AUTHORITY_STATIC_INDEX: u64 = 1;
/// Largest HEADERS frame held back for repair; larger ones pass untouched.
const MAX_HELD_FRAME: usize = 1 << 20;

enum Position {
    Preface {
        remaining: usize,
    },
    FrameHeader,
    HeadersPayload {
        length: usize,
        flags: u8,
    },
    PassThrough {
        remaining: usize,
    },
    /// Not HTTP/2: every byte passes through.
    NotHttp2,
}

/// A client connection whose inbound bytes get the `:authority` repair.
pub struct AuthorityRepairingStream<S> {
    inner: S,
    /// Bytes read from `inner` and not yet handed to the reader.
    pending: BytesMut,
    /// How many bytes at the front of `pending` may be handed out.
    releasable: usize,
    position: Position,
    eof: bool,
}

impl<S> AuthorityRepairingStream<S> {
    pub fn new(inner: S) -> Self {
        AuthorityRepairingStream {
            inner,
            pending: BytesMut::with_capacity(16 * 1024),
            releasable: 0,
            position: Position::Preface {
                remaining: CLIENT_PREFACE_LEN,
            },
            eof: false,
        }
    }

    /// Advances over the unreleased bytes, repairing complete HEADERS frames.
    fn advance(&mut self) {
        loop {
            let available = self.pending.len() - self.releasable;
            match self.position {
                Position::NotHttp2 => {
                    self.releasable += available;
                    return;
                }
                Position::Preface { remaining } if available > 0 => {
                    let seen = CLIENT_PREFACE_LEN - remaining;
                    let step = remaining.min(available);
                    let arrived = &self.pending[self.releasable..self.releasable + step];
                    if arrived != &CLIENT_PREFACE[seen..seen + step] {
                        self.position = Position::NotHttp2;
                        continue;
                    }
                    self.releasable += step;
                    self.position = if step == remaining {
                        Position::FrameHeader
                    } else {
                        Position::Preface {
                            remaining: remaining - step,
                        }
                    };
                    if step < remaining {
                        return;
                    }
                }
                Position::Preface { .. } => return,
                Position::PassThrough { remaining } => {
                    let step = remaining.min(available);
                    self.releasable += step;
                    if step == remaining {
                        self.position = Position::FrameHeader;
                    } else {
                        self.position = Position::PassThrough {
                            remaining: remaining - step,
                        };
                        return;
                    }
                }
                Position::FrameHeader => {
                    if available < FRAME_HEADER_LEN {
                        return;
                    }
                    let header = &self.pending[self.releasable..self.releasable + FRAME_HEADER_LEN];
                    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                    let (frame_type, flags) = (header[3], header[4]);
                    self.releasable += FRAME_HEADER_LEN;
                    self.position = if frame_type == FRAME_TYPE_HEADERS && length <= MAX_HELD_FRAME {
                        Position::HeadersPayload { length, flags }
                    } else {
                        Position::PassThrough { remaining: length }
                    };
                }
                Position::HeadersPayload { length, flags } => {
                    if available < length {
                        return;
                    }
                    let start = self.releasable;
                    repair_headers_payload(&mut self.pending[start..start + length], flags);
                    self.releasable += length;
                    self.position = Position::FrameHeader;
                }
            }
        }
    }
}

/// Repairs the `:authority` literals of one HEADERS frame payload in place.
fn repair_headers_payload(payload: &mut [u8], flags: u8) {
    let mut start = 0;
    let mut end = payload.len();
    if flags & FLAG_PADDED != 0 {
        let Some(&padding) = payload.first() else { return };
        start += 1;
        end = end.saturating_sub(padding as usize);
    }
    if flags & FLAG_PRIORITY != 0 {
        start += 5;
    }
    if start < end {
        repair_header_block(&mut payload[start..end]);
    }
}

/// Walks an HPACK header block fragment, repairing `:authority` literals;
/// stops quietly at anything it cannot parse (e.g. a block continued in a
/// CONTINUATION frame).
pub fn repair_header_block(block: &mut [u8]) {
    let mut at = 0;
    while at < block.len() {
        let first = block[at];
        let prefix_bits = if first & 0x80 != 0 {
            // Indexed field: nothing literal to repair.
            match decode_integer(block, at, 7) {
                Some((_, next)) => {
                    at = next;
                    continue;
                }
                None => return,
            }
        } else if first & 0x40 != 0 {
            6
        } else if first & 0x20 != 0 {
            // Dynamic table size update.
            match decode_integer(block, at, 5) {
                Some((_, next)) => {
                    at = next;
                    continue;
                }
                None => return,
            }
        } else {
            4
        };
        let Some((index, after_index)) = decode_integer(block, at, prefix_bits) else {
            return;
        };
        at = after_index;
        let is_authority = if index == 0 {
            let Some((name, after_name)) = string_at(block, at) else {
                return;
            };
            let literal_authority = !name.huffman && &block[name.start..name.end] == b":authority";
            at = after_name;
            literal_authority
        } else {
            index == AUTHORITY_STATIC_INDEX
        };
        let Some((value, after_value)) = string_at(block, at) else {
            return;
        };
        if is_authority {
            repair_authority_value(&mut block[value.start..value.end], value.huffman);
        }
        at = after_value;
    }
}

struct StringSpan {
    huffman: bool,
    start: usize,
    end: usize,
}

fn string_at(block: &[u8], at: usize) -> Option<(StringSpan, usize)> {
    let huffman = *block.get(at)? & 0x80 != 0;
    let (length, start) = decode_integer(block, at, 7)?;
    let end = start.checked_add(usize::try_from(length).ok()?)?;
    if end > block.len() {
        return None;
    }
    Some((StringSpan { huffman, start, end }, end))
}

/// HPACK's prefixed integer (RFC 7541 §5.1) at `at`; returns it and the
/// position after it.
fn decode_integer(block: &[u8], at: usize, prefix_bits: u32) -> Option<(u64, usize)> {
    let mask = (1u16 << prefix_bits) as u8 - 1;
    let mut value = u64::from(*block.get(at)? & mask);
    let mut next = at + 1;
    if value < u64::from(mask) {
        return Some((value, next));
    }
    let mut shift = 0;
    loop {
        let byte = *block.get(next)?;
        next += 1;
        value = value.checked_add(u64::from(byte & 0x7f).checked_shl(shift)?)?;
        if byte & 0x80 == 0 {
            return Some((value, next));
        }
        shift += 7;
        if shift > 56 {
            return None;
        }
    }
}

/// `http://host:port` -> `httpk--host:port`, in place, same length in
/// octets and (for a Huffman-coded value) in bits.
fn repair_authority_value(value: &mut [u8], huffman: bool) {
    if !huffman {
        replace_url_separator(value);
        return;
    }
    let mut decoded = Vec::with_capacity(value.len() * 2);
    if httlib_huffman::decode(value, &mut decoded, httlib_huffman::DecoderSpeed::FourBits).is_err() {
        return;
    }
    if !replace_url_separator(&mut decoded) {
        return;
    }
    let mut encoded = Vec::with_capacity(value.len());
    if httlib_huffman::encode(&decoded, &mut encoded).is_ok() && encoded.len() == value.len() {
        value.copy_from_slice(&encoded);
    }
}

fn replace_url_separator(text: &mut [u8]) -> bool {
    match text.windows(3).position(|window| window == b"://") {
        Some(at) => {
            text[at..at + 3].copy_from_slice(b"k--");
            true
        }
        None => false,
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRepairingStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.releasable > 0 {
                let count = this.releasable.min(out.remaining());
                out.put_slice(&this.pending[..count]);
                this.pending.advance(count);
                this.releasable -= count;
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // A truncated frame at end of stream: hand over what is left.
                let count = this.pending.len().min(out.remaining());
                out.put_slice(&this.pending[..count]);
                this.pending.advance(count);
                return Poll::Ready(Ok(()));
            }
            this.pending.reserve(16 * 1024);
            match poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.pending) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(_)) => this.advance(),
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRepairingStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityRepairingStream<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    fn literal_authority_block(value: &[u8], huffman: bool) -> Vec<u8> {
        // ":method: POST" (static index 3), then a literal with incremental
        // indexing whose name is static index 1 (:authority).
        let mut block = vec![0x83, 0x41];
        let encoded = if huffman {
            let mut out = Vec::new();
            httlib_huffman::encode(value, &mut out).expect("encode");
            out
        } else {
            value.to_vec()
        };
        assert!(encoded.len() < 127);
        block.push(if huffman { 0x80 } else { 0 } | encoded.len() as u8);
        block.extend(encoded);
        block.push(0x86); // ":scheme: http" indexed
        block
    }

    fn decoded_authority(block: &[u8], huffman: bool) -> Vec<u8> {
        let length = (block[2] & 0x7f) as usize;
        let value = &block[3..3 + length];
        if !huffman {
            return value.to_vec();
        }
        let mut out = Vec::new();
        httlib_huffman::decode(value, &mut out, httlib_huffman::DecoderSpeed::FourBits).expect("decode");
        out
    }

    #[test]
    fn a_url_authority_becomes_a_host_port_of_the_same_length_raw_and_huffman_coded() {
        for huffman in [false, true] {
            let original = literal_authority_block(b"http://127.0.0.1:40719", huffman);
            let mut block = original.clone();
            repair_header_block(&mut block);
            assert_eq!(block.len(), original.len());
            assert_eq!(
                decoded_authority(&block, huffman),
                b"httpk--127.0.0.1:40719",
                "huffman={huffman}"
            );
            assert_eq!(block.last(), original.last(), "the fields after it are untouched");
        }
    }

    #[test]
    fn a_valid_authority_and_other_fields_pass_unchanged() {
        for huffman in [false, true] {
            let original = literal_authority_block(b"127.0.0.1:2379", huffman);
            let mut block = original.clone();
            repair_header_block(&mut block);
            assert_eq!(block, original);
        }
        let mut garbage = vec![0x7f, 0xff, 0xff];
        repair_header_block(&mut garbage);
        assert_eq!(garbage, vec![0x7f, 0xff, 0xff]);
    }

    #[test]
    fn padded_and_prioritised_headers_frames_are_repaired() {
        let block = literal_authority_block(b"http://h:1", false);
        let mut payload = vec![2u8, 0, 0, 0, 0, 16];
        payload.extend(&block);
        payload.extend([0, 0]);
        repair_headers_payload(&mut payload, FLAG_PADDED | FLAG_PRIORITY);
        assert_eq!(decoded_authority(&payload[6..], false), b"httpk--h:1");
    }

    #[tokio::test]
    async fn the_stream_repairs_headers_split_across_reads_and_passes_everything_else() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let block = literal_authority_block(b"http://127.0.0.1:2379", true);
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
        wire.extend([0, 0, block.len() as u8, FRAME_TYPE_HEADERS, 0x4, 0, 0, 0, 1]);
        wire.extend(&block);
        wire.extend([0, 0, 3, 0, 1, 0, 0, 0, 1, b'a', b'b', b'c']); // DATA
        let sent = wire.clone();
        let sender = tokio::spawn(async move {
            let mut client = TcpStream::connect(address).await.expect("connect");
            for chunk in sent.chunks(5) {
                client.write_all(chunk).await.expect("write");
                client.flush().await.expect("flush");
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        });
        let (accepted, _) = listener.accept().await.expect("accept");
        let mut repaired = AuthorityRepairingStream::new(accepted);
        let mut received = Vec::new();
        repaired.read_to_end(&mut received).await.expect("read");
        sender.await.expect("sender");
        assert_eq!(received.len(), wire.len());
        let headers_at = 24 + 9 + 9;
        assert_eq!(&received[..headers_at], &wire[..headers_at]);
        assert_eq!(
            decoded_authority(&received[headers_at..], true),
            b"httpk--127.0.0.1:2379"
        );
        let after = headers_at + block.len();
        assert_eq!(&received[after..], &wire[after..]);
    }

    #[tokio::test]
    async fn an_http1_connection_passes_through_even_where_its_bytes_look_like_a_headers_frame() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        // 24 octets of an HTTP/1.1 request line where HTTP/2's preface would
        // be, then octets that read as a HEADERS frame with a URL authority.
        let mut wire = b"POST /v3/kv/range HTTP/1".to_vec();
        let block = literal_authority_block(b"http://127.0.0.1:2379", false);
        wire.extend([0, 0, block.len() as u8, FRAME_TYPE_HEADERS, 0x4, 0, 0, 0, 1]);
        wire.extend(&block);
        let sent = wire.clone();
        let sender = tokio::spawn(async move {
            let mut client = TcpStream::connect(address).await.expect("connect");
            client.write_all(&sent).await.expect("write");
        });
        let (accepted, _) = listener.accept().await.expect("accept");
        let mut passed = AuthorityRepairingStream::new(accepted);
        let mut received = Vec::new();
        passed.read_to_end(&mut received).await.expect("read");
        sender.await.expect("sender");
        assert_eq!(received, wire);
    }
}
