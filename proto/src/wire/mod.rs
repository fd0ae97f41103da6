//! Peer-to-peer frames: what two peers say to each other inside the encrypted stream.
//!
//! A frame is `len: u32 BE` (the bytes after this field), `type: u8`, then the body; integers are
//! big-endian, ids are 32 raw bytes, strings are UTF-8 with a length prefix. The byte-by-byte
//! layout is in `docs/protocol.md`. Frames encode into any [`BufMut`] and decode from a
//! [`BytesMut`] that a transport fills; decoding never allocates more than the frame cap.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::admission::{ADMISSION_LEN, Admission};
use crate::ids::{FileId, Sha256Hash};
use crate::manifest::{MAX_CHUNK_SIZE, MAX_CHUNKS, MAX_NAME_LEN, Manifest};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest frame body (type byte included): a whole chunk of the largest size plus headers.
pub const MAX_FRAME_LEN: u32 = MAX_CHUNK_SIZE + 1024;
/// Largest `Manifest` frame body (type byte included): [`MAX_CHUNKS`] chunk hashes and chain
/// values, the fixed fields and the longest name. Only manifests may exceed [`MAX_FRAME_LEN`].
pub const MAX_MANIFEST_FRAME_LEN: u32 =
    (1 + 32 + 8 + 4 + 32 + 2 + MAX_NAME_LEN as u64 + 4 + 4 + 64 * MAX_CHUNKS) as u32;
/// Longest agent name or message text, in bytes.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// Why bytes are not a valid frame. Any of these ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("frame of {0} bytes is over the {MAX_FRAME_LEN}-byte cap")]
    TooLarge(u32),
    #[error("empty frame (no type byte)")]
    Empty,
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    #[error("{0} frame is truncated")]
    Truncated(&'static str),
    #[error("{0} frame has {1} trailing bytes")]
    Trailing(&'static str, usize),
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
    #[error("{what} of {len} is over the limit of {max}")]
    Limit {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

/// Why a chunk request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    /// This peer does not know the file.
    UnknownFile,
    /// This peer does not have the chunk (yet).
    NotAvailable,
    /// Too many requests in flight or over the upload limit; retry later or elsewhere.
    Busy,
    /// The request makes no sense (index out of range…).
    BadRequest,
    /// The file is private and the requester sent no valid admission for it
    /// ([`Frame::Admission`]): ask the tracker for the file's peers (which admits) and retry.
    NotAdmitted,
    /// Any other code, kept as sent.
    Other(u8),
}

impl RejectCode {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::UnknownFile,
            2 => Self::NotAvailable,
            3 => Self::Busy,
            4 => Self::BadRequest,
            5 => Self::NotAdmitted,
            other => Self::Other(other),
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            Self::UnknownFile => 1,
            Self::NotAvailable => 2,
            Self::Busy => 3,
            Self::BadRequest => 4,
            Self::NotAdmitted => 5,
            Self::Other(v) => v,
        }
    }
}

/// One message between peers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// Sent when idle so dead connections are noticed.
    KeepAlive,
    /// First frame each way: versions spoken and the software's name.
    Hello {
        version: u16,
        min_version: u16,
        agent: String,
    },
    /// Asks for a file's manifest.
    ManifestRequest { file_id: FileId },
    /// A file's manifest (checked by the receiver against the id and Merkle root).
    Manifest(Manifest),
    /// Which chunks of a file the sender has (MSB first).
    Bitfield {
        file_id: FileId,
        chunk_count: u32,
        bits: Bytes,
    },
    /// The sender now has one more chunk.
    Have { file_id: FileId, index: u32 },
    /// Asks for one chunk; several may be in flight, told apart by `request_id`.
    Request {
        request_id: u32,
        file_id: FileId,
        index: u32,
    },
    /// A chunk's bytes, answering `request_id`.
    Chunk {
        request_id: u32,
        file_id: FileId,
        index: u32,
        data: Bytes,
    },
    /// A request that will not be answered with data.
    Reject {
        request_id: u32,
        code: RejectCode,
        message: String,
    },
    /// The requester no longer wants `request_id`.
    Cancel { request_id: u32 },
    /// A fatal error; the sender closes the connection after it.
    Error { code: u8, message: String },
    /// The tracker's admission of the sender to a private file, sent before asking for it (and
    /// again, renewed, before it expires).
    Admission(Admission),
}

mod tag {
    pub const KEEP_ALIVE: u8 = 0x00;
    pub const HELLO: u8 = 0x01;
    pub const MANIFEST_REQUEST: u8 = 0x02;
    pub const MANIFEST: u8 = 0x03;
    pub const BITFIELD: u8 = 0x04;
    pub const HAVE: u8 = 0x05;
    pub const REQUEST: u8 = 0x06;
    pub const CHUNK: u8 = 0x07;
    pub const REJECT: u8 = 0x08;
    pub const CANCEL: u8 = 0x09;
    pub const ERROR: u8 = 0x0a;
    pub const ADMISSION: u8 = 0x0b;
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn clipped(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_str(dst: &mut impl BufMut, s: &str, max: usize) {
    let s = clipped(s, max);
    dst.put_u16(s.len() as u16);
    dst.put_slice(s.as_bytes());
}

/// Bytes of a `Chunk` frame before its data: length prefix, type, request id, file id, index.
pub const CHUNK_HEADER_LEN: usize = 4 + 1 + 4 + 32 + 4;

/// The first [`CHUNK_HEADER_LEN`] bytes of a `Chunk` frame carrying `data_len` bytes, for a
/// sender that places the data itself (read from disk straight into its send buffer);
/// [`Frame::encode`] writes the same bytes.
pub fn chunk_header(
    request_id: u32,
    file_id: FileId,
    index: u32,
    data_len: usize,
) -> [u8; CHUNK_HEADER_LEN] {
    let mut h = [0u8; CHUNK_HEADER_LEN];
    let mut dst = &mut h[..];
    dst.put_u32((CHUNK_HEADER_LEN - 4 + data_len) as u32);
    dst.put_u8(tag::CHUNK);
    dst.put_u32(request_id);
    dst.put_slice(&file_id.0);
    dst.put_u32(index);
    h
}

impl Frame {
    /// The type byte.
    pub fn tag(&self) -> u8 {
        match self {
            Self::KeepAlive => tag::KEEP_ALIVE,
            Self::Hello { .. } => tag::HELLO,
            Self::ManifestRequest { .. } => tag::MANIFEST_REQUEST,
            Self::Manifest(_) => tag::MANIFEST,
            Self::Bitfield { .. } => tag::BITFIELD,
            Self::Have { .. } => tag::HAVE,
            Self::Request { .. } => tag::REQUEST,
            Self::Chunk { .. } => tag::CHUNK,
            Self::Reject { .. } => tag::REJECT,
            Self::Cancel { .. } => tag::CANCEL,
            Self::Error { .. } => tag::ERROR,
            Self::Admission(_) => tag::ADMISSION,
        }
    }

    /// Bytes the body takes (without the length prefix and type byte).
    fn body_len(&self) -> usize {
        match self {
            Self::KeepAlive => 0,
            Self::Hello { agent, .. } => 6 + clipped(agent, MAX_MESSAGE_LEN).len(),
            Self::ManifestRequest { .. } => 32,
            Self::Manifest(m) => {
                32 + 8
                    + 4
                    + 32
                    + 2
                    + clipped(&m.name, MAX_NAME_LEN).len()
                    + 4
                    + 32 * m.chunk_hashes.len()
                    + 4
                    + 32 * m.chain.len()
            }
            Self::Bitfield { bits, .. } => 32 + 4 + bits.len(),
            Self::Have { .. } => 36,
            Self::Request { .. } => 40,
            Self::Chunk { data, .. } => 40 + data.len(),
            Self::Reject { message, .. } => 4 + 1 + 2 + clipped(message, MAX_MESSAGE_LEN).len(),
            Self::Cancel { .. } => 4,
            Self::Error { message, .. } => 1 + 2 + clipped(message, MAX_MESSAGE_LEN).len(),
            Self::Admission(_) => ADMISSION_LEN,
        }
    }

    /// Appends the encoded frame. Strings over their limits are cut on a character boundary.
    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u32(1 + self.body_len() as u32);
        dst.put_u8(self.tag());
        match self {
            Self::KeepAlive => {}
            Self::Hello {
                version,
                min_version,
                agent,
            } => {
                dst.put_u16(*version);
                dst.put_u16(*min_version);
                put_str(dst, agent, MAX_MESSAGE_LEN);
            }
            Self::ManifestRequest { file_id } => dst.put_slice(&file_id.0),
            Self::Manifest(m) => {
                dst.put_slice(&m.id.0);
                dst.put_u64(m.size);
                dst.put_u32(m.chunk_size);
                dst.put_slice(&m.merkle_root.0);
                put_str(dst, &m.name, MAX_NAME_LEN);
                dst.put_u32(m.chunk_hashes.len() as u32);
                for h in &m.chunk_hashes {
                    dst.put_slice(&h.0);
                }
                dst.put_u32(m.chain.len() as u32);
                for v in &m.chain {
                    dst.put_slice(&v.0);
                }
            }
            Self::Bitfield {
                file_id,
                chunk_count,
                bits,
            } => {
                dst.put_slice(&file_id.0);
                dst.put_u32(*chunk_count);
                dst.put_slice(bits);
            }
            Self::Have { file_id, index } => {
                dst.put_slice(&file_id.0);
                dst.put_u32(*index);
            }
            Self::Request {
                request_id,
                file_id,
                index,
            } => {
                dst.put_u32(*request_id);
                dst.put_slice(&file_id.0);
                dst.put_u32(*index);
            }
            Self::Chunk {
                request_id,
                file_id,
                index,
                data,
            } => {
                dst.put_slice(&chunk_header(*request_id, *file_id, *index, data.len())[5..]);
                dst.put_slice(data);
            }
            Self::Reject {
                request_id,
                code,
                message,
            } => {
                dst.put_u32(*request_id);
                dst.put_u8(code.as_u8());
                put_str(dst, message, MAX_MESSAGE_LEN);
            }
            Self::Cancel { request_id } => dst.put_u32(*request_id),
            Self::Error { code, message } => {
                dst.put_u8(*code);
                put_str(dst, message, MAX_MESSAGE_LEN);
            }
            Self::Admission(a) => dst.put_slice(&a.to_bytes()),
        }
    }

    /// The encoded frame as bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(5 + self.body_len());
        self.encode(&mut buf);
        buf.freeze()
    }

    /// Takes one whole frame off the front of `src`, or returns `Ok(None)` (consuming nothing)
    /// when more bytes are needed. Chunk data is split off `src` without copying.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        let Some(total) = Self::frame_len(src)? else {
            return Ok(None);
        };
        if src.len() < total {
            // Room for the whole frame at once, up to a chunk frame's size: a long manifest
            // grows the buffer as its bytes arrive, so a header alone reserves no more.
            let want = total.min(4 + MAX_FRAME_LEN as usize);
            src.reserve(want.saturating_sub(src.len()));
            return Ok(None);
        }
        src.advance(4);
        let mut body = src.split_to(total - 4);
        let tag = body.get_u8();
        decode_body(tag, &mut body).map(Some)
    }

    /// How many bytes the frame at the front of `src` takes in all (its length prefix
    /// included), once enough of it is there to tell; checks the size caps. Lets a transport
    /// wait for a whole frame before handing it to [`Frame::decode`].
    pub fn frame_len(src: &[u8]) -> Result<Option<usize>, WireError> {
        let [a, b, c, d, ..] = *src else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([a, b, c, d]);
        if len > MAX_FRAME_LEN {
            // Only a manifest may be longer; its type byte tells.
            match src.get(4) {
                None => return Ok(None),
                Some(&tag::MANIFEST) if len <= MAX_MANIFEST_FRAME_LEN => {}
                Some(_) => return Err(WireError::TooLarge(len)),
            }
        }
        if len == 0 {
            return Err(WireError::Empty);
        }
        Ok(Some(4 + len as usize))
    }
}

struct Reader<'a> {
    buf: &'a mut BytesMut,
    what: &'static str,
}

impl Reader<'_> {
    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.buf.len() < n {
            Err(WireError::Truncated(self.what))
        } else {
            Ok(())
        }
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }

    fn id32(&mut self) -> Result<[u8; 32], WireError> {
        self.need(32)?;
        let mut out = [0u8; 32];
        self.buf.copy_to_slice(&mut out);
        Ok(out)
    }

    /// A `u32` count (`what`, at most [`MAX_CHUNKS`]) and that many ids. The count is checked
    /// against the bytes present before allocating for it.
    fn ids(&mut self, what: &'static str) -> Result<Vec<Sha256Hash>, WireError> {
        let count = self.u32()? as usize;
        if count as u64 > MAX_CHUNKS {
            return Err(WireError::Limit {
                what,
                len: count,
                max: MAX_CHUNKS as usize,
            });
        }
        self.need(count * 32)?;
        (0..count).map(|_| self.id32().map(Sha256Hash)).collect()
    }

    fn string(&mut self, max: usize, what: &'static str) -> Result<String, WireError> {
        let len = self.u16()? as usize;
        if len > max {
            return Err(WireError::Limit { what, len, max });
        }
        self.need(len)?;
        let bytes = self.buf.split_to(len);
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Utf8(what))
    }

    fn rest(&mut self) -> Bytes {
        self.buf.split().freeze()
    }

    fn done(self) -> Result<(), WireError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(WireError::Trailing(self.what, n)),
        }
    }
}

fn decode_body(tag: u8, body: &mut BytesMut) -> Result<Frame, WireError> {
    let what = match tag {
        tag::KEEP_ALIVE => "keep-alive",
        tag::HELLO => "hello",
        tag::MANIFEST_REQUEST => "manifest request",
        tag::MANIFEST => "manifest",
        tag::BITFIELD => "bitfield",
        tag::HAVE => "have",
        tag::REQUEST => "request",
        tag::CHUNK => "chunk",
        tag::REJECT => "reject",
        tag::CANCEL => "cancel",
        tag::ERROR => "error",
        tag::ADMISSION => "admission",
        other => return Err(WireError::UnknownType(other)),
    };
    let mut r = Reader { buf: body, what };
    let frame = match tag {
        tag::KEEP_ALIVE => Frame::KeepAlive,
        tag::HELLO => Frame::Hello {
            version: r.u16()?,
            min_version: r.u16()?,
            agent: r.string(MAX_MESSAGE_LEN, "agent")?,
        },
        tag::MANIFEST_REQUEST => Frame::ManifestRequest {
            file_id: FileId(r.id32()?),
        },
        tag::MANIFEST => {
            let id = FileId(r.id32()?);
            let size = r.u64()?;
            let chunk_size = r.u32()?;
            let merkle_root = Sha256Hash(r.id32()?);
            let name = r.string(MAX_NAME_LEN, "file name")?;
            let chunk_hashes = r.ids("chunk count")?;
            let chain = r.ids("chain length")?;
            Frame::Manifest(Manifest {
                id,
                name,
                size,
                chunk_size,
                chunk_hashes,
                merkle_root,
                chain,
            })
        }
        tag::BITFIELD => {
            let file_id = FileId(r.id32()?);
            let chunk_count = r.u32()?;
            if u64::from(chunk_count) > MAX_CHUNKS {
                return Err(WireError::Limit {
                    what: "chunk count",
                    len: chunk_count as usize,
                    max: MAX_CHUNKS as usize,
                });
            }
            let want = (chunk_count as usize).div_ceil(8);
            r.need(want)?;
            let bits = r.buf.split_to(want).freeze();
            Frame::Bitfield {
                file_id,
                chunk_count,
                bits,
            }
        }
        tag::HAVE => Frame::Have {
            file_id: FileId(r.id32()?),
            index: r.u32()?,
        },
        tag::REQUEST => Frame::Request {
            request_id: r.u32()?,
            file_id: FileId(r.id32()?),
            index: r.u32()?,
        },
        tag::CHUNK => Frame::Chunk {
            request_id: r.u32()?,
            file_id: FileId(r.id32()?),
            index: r.u32()?,
            data: r.rest(),
        },
        tag::REJECT => Frame::Reject {
            request_id: r.u32()?,
            code: RejectCode::from_u8(r.u8()?),
            message: r.string(MAX_MESSAGE_LEN, "reject message")?,
        },
        tag::CANCEL => Frame::Cancel {
            request_id: r.u32()?,
        },
        tag::ADMISSION => {
            r.need(ADMISSION_LEN)?;
            let bytes = r.buf.split_to(ADMISSION_LEN);
            // The length is right, and nothing else is checked here.
            Frame::Admission(Admission::from_bytes(&bytes).map_err(|_| WireError::Truncated(what))?)
        }
        _ => Frame::Error {
            code: r.u8()?,
            message: r.string(MAX_MESSAGE_LEN, "error message")?,
        },
    };
    r.done()?;
    Ok(frame)
}

#[cfg(test)]
mod tests;
