//! SPDY/3 frames on the wire: the 8-byte common header, the control frames' bodies and data
//! frames. Pure encoding and decoding; header blocks stay compressed here (their zlib context
//! belongs to the session, see `headers.rs`).

use std::io;

/// The only version spoken.
pub const VERSION: u16 = 3;
/// Bytes of the common header every frame starts with.
pub const HEADER_LEN: usize = 8;
/// The length field is 24 bits.
pub const MAX_LENGTH: usize = 0x00ff_ffff;

pub const FLAG_FIN: u8 = 0x01;
/// SYN_STREAM only: the sender will not receive on this stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// SETTINGS only.
pub const FLAG_CLEAR_SETTINGS: u8 = 0x01;

pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_SETTINGS: u16 = 4;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
pub const TYPE_HEADERS: u16 = 8;
pub const TYPE_WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

/// The SETTINGS id the session looks at (the rest are advisory and ignored).
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// Stream ids and window deltas are 31 bits.
pub const ID_MASK: u32 = 0x7fff_ffff;

/// What the first 8 bytes of a frame say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    Data {
        stream_id: u32,
        flags: u8,
        length: usize,
    },
    Control {
        version: u16,
        kind: u16,
        flags: u8,
        length: usize,
    },
}

impl Head {
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Head {
        let first = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let flags = bytes[4];
        let length =
            usize::from(bytes[5]) << 16 | usize::from(bytes[6]) << 8 | usize::from(bytes[7]);
        if first & 0x8000_0000 != 0 {
            Head::Control {
                version: ((first >> 16) & 0x7fff) as u16,
                kind: (first & 0xffff) as u16,
                flags,
                length,
            }
        } else {
            Head::Data {
                stream_id: first,
                flags,
                length,
            }
        }
    }

    pub fn length(&self) -> usize {
        match *self {
            Head::Data { length, .. } | Head::Control { length, .. } => length,
        }
    }
}

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

/// A decoded frame. `block` fields are compressed header blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream_id: u32,
        fin: bool,
        data: Vec<u8>,
    },
    SynStream {
        stream_id: u32,
        associated_id: u32,
        priority: u8,
        flags: u8,
        block: Vec<u8>,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        block: Vec<u8>,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        clear: bool,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        block: Vec<u8>,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    /// A control frame type this version does not define: the spec says to ignore it.
    Unknown {
        kind: u16,
    },
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed SPDY frame: {what}"),
    )
}

fn be32(bytes: &[u8], at: usize) -> io::Result<u32> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| malformed("too short"))
}

/// Decodes the body of a control frame whose header was `kind`/`flags`. The version is the
/// caller's to check (it decides what to do with other versions).
pub fn decode_control(kind: u16, flags: u8, body: &[u8]) -> io::Result<Frame> {
    let exact = |len: usize| {
        if body.len() == len {
            Ok(())
        } else {
            Err(malformed("wrong length for its type"))
        }
    };
    let frame = match kind {
        TYPE_SYN_STREAM => {
            let stream_id = be32(body, 0)? & ID_MASK;
            let associated_id = be32(body, 4)? & ID_MASK;
            let priority = *body.get(8).ok_or_else(|| malformed("too short"))? >> 5;
            if body.len() < 10 {
                return Err(malformed("too short"));
            }
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                flags,
                block: body[10..].to_vec(),
            }
        }
        TYPE_SYN_REPLY | TYPE_HEADERS => {
            let stream_id = be32(body, 0)? & ID_MASK;
            let fin = flags & FLAG_FIN != 0;
            let block = body[4..].to_vec();
            if kind == TYPE_SYN_REPLY {
                Frame::SynReply {
                    stream_id,
                    fin,
                    block,
                }
            } else {
                Frame::Headers {
                    stream_id,
                    fin,
                    block,
                }
            }
        }
        TYPE_RST_STREAM => {
            exact(8)?;
            Frame::RstStream {
                stream_id: be32(body, 0)? & ID_MASK,
                status: be32(body, 4)?,
            }
        }
        TYPE_SETTINGS => {
            let count = be32(body, 0)? as usize;
            // Checked before allocating: `count` comes from the peer.
            if body.len() != 4 + count.saturating_mul(8) {
                return Err(malformed("SETTINGS entry count does not match its length"));
            }
            let entries = body[4..]
                .chunks_exact(8)
                .map(|e| Setting {
                    flags: e[0],
                    id: u32::from_be_bytes([0, e[1], e[2], e[3]]),
                    value: u32::from_be_bytes([e[4], e[5], e[6], e[7]]),
                })
                .collect();
            Frame::Settings {
                clear: flags & FLAG_CLEAR_SETTINGS != 0,
                entries,
            }
        }
        TYPE_PING => {
            exact(4)?;
            Frame::Ping { id: be32(body, 0)? }
        }
        TYPE_GOAWAY => {
            exact(8)?;
            Frame::GoAway {
                last_good_id: be32(body, 0)? & ID_MASK,
                status: be32(body, 4)?,
            }
        }
        TYPE_WINDOW_UPDATE => {
            exact(8)?;
            Frame::WindowUpdate {
                stream_id: be32(body, 0)? & ID_MASK,
                delta: be32(body, 4)? & ID_MASK,
            }
        }
        kind => Frame::Unknown { kind },
    };
    Ok(frame)
}

/// Decodes one whole frame from the front of `buf`: `Ok(None)` when `buf` does not hold all of
/// it yet, else the frame and how many bytes it took. Control frames of another version are an
/// error. The session reads data frames piecewise instead (to bound memory); this is for tests
/// and for clients.
#[cfg_attr(not(test), allow(dead_code))]
pub fn decode(buf: &[u8]) -> io::Result<Option<(Frame, usize)>> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let head = Head::parse(head);
    let total = HEADER_LEN + head.length();
    let Some(body) = buf.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    let frame = match head {
        Head::Data {
            stream_id, flags, ..
        } => Frame::Data {
            stream_id,
            fin: flags & FLAG_FIN != 0,
            data: body.to_vec(),
        },
        Head::Control {
            version,
            kind,
            flags,
            ..
        } => {
            if version != VERSION {
                return Err(malformed("unsupported version"));
            }
            decode_control(kind, flags, body)?
        }
    };
    Ok(Some((frame, total)))
}

fn put_control_head(out: &mut Vec<u8>, kind: u16, flags: u8, length: usize) {
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    put_flags_length(out, flags, length);
}

fn put_flags_length(out: &mut Vec<u8>, flags: u8, length: usize) {
    // Callers keep `length` within 24 bits (data is chunked, header blocks are bounded).
    let length = (length.min(MAX_LENGTH)) as u32;
    out.push(flags);
    out.extend_from_slice(&length.to_be_bytes()[1..]);
}

/// Appends the header of a data frame carrying `length` bytes.
pub fn put_data_head(out: &mut Vec<u8>, stream_id: u32, fin: bool, length: usize) {
    out.extend_from_slice(&(stream_id & ID_MASK).to_be_bytes());
    put_flags_length(out, if fin { FLAG_FIN } else { 0 }, length);
}

fn fin_flag(fin: bool) -> u8 {
    if fin { FLAG_FIN } else { 0 }
}

/// Appends the encoding of `frame` to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    match frame {
        Frame::Data {
            stream_id,
            fin,
            data,
        } => {
            put_data_head(out, *stream_id, *fin, data.len());
            out.extend_from_slice(data);
        }
        Frame::SynStream {
            stream_id,
            associated_id,
            priority,
            flags,
            block,
        } => {
            put_control_head(out, TYPE_SYN_STREAM, *flags, 10 + block.len());
            out.extend_from_slice(&(stream_id & ID_MASK).to_be_bytes());
            out.extend_from_slice(&(associated_id & ID_MASK).to_be_bytes());
            out.push(priority << 5);
            out.push(0); // slot: unused in 3.1
            out.extend_from_slice(block);
        }
        Frame::SynReply {
            stream_id,
            fin,
            block,
        } => {
            put_control_head(out, TYPE_SYN_REPLY, fin_flag(*fin), 4 + block.len());
            out.extend_from_slice(&(stream_id & ID_MASK).to_be_bytes());
            out.extend_from_slice(block);
        }
        Frame::Headers {
            stream_id,
            fin,
            block,
        } => {
            put_control_head(out, TYPE_HEADERS, fin_flag(*fin), 4 + block.len());
            out.extend_from_slice(&(stream_id & ID_MASK).to_be_bytes());
            out.extend_from_slice(block);
        }
        Frame::RstStream { stream_id, status } => {
            put_control_head(out, TYPE_RST_STREAM, 0, 8);
            out.extend_from_slice(&(stream_id & ID_MASK).to_be_bytes());
            out.extend_from_slice(&status.to_be_bytes());
        }
        Frame::Settings { clear, entries } => {
            let flags = if *clear { FLAG_CLEAR_SETTINGS } else { 0 };
            put_control_head(out, TYPE_SETTINGS, flags, 4 + 8 * entries.len());
            out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
            for entry in entries {
                out.push(entry.flags);
                out.extend_from_slice(&entry.id.to_be_bytes()[1..]);
                out.extend_from_slice(&entry.value.to_be_bytes());
            }
        }
        Frame::Ping { id } => {
            put_control_head(out, TYPE_PING, 0, 4);
            out.extend_from_slice(&id.to_be_bytes());
        }
        Frame::GoAway {
            last_good_id,
            status,
        } => {
            put_control_head(out, TYPE_GOAWAY, 0, 8);
            out.extend_from_slice(&(last_good_id & ID_MASK).to_be_bytes());
            out.extend_from_slice(&status.to_be_bytes());
        }
        Frame::WindowUpdate { stream_id, delta } => {
            put_control_head(out, TYPE_WINDOW_UPDATE, 0, 8);
            out.extend_from_slice(&(stream_id & ID_MASK).to_be_bytes());
            out.extend_from_slice(&(delta & ID_MASK).to_be_bytes());
        }
        // Nothing to say about a type we do not know; only decoding produces it.
        Frame::Unknown { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_frame() -> Vec<Frame> {
        vec![
            Frame::Data {
                stream_id: 5,
                fin: false,
                data: b"hello".to_vec(),
            },
            Frame::Data {
                stream_id: 0x7fff_ffff,
                fin: true,
                data: Vec::new(),
            },
            Frame::SynStream {
                stream_id: 1,
                associated_id: 0,
                priority: 7,
                flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
                block: vec![1, 2, 3],
            },
            Frame::SynReply {
                stream_id: 3,
                fin: true,
                block: vec![9; 40],
            },
            Frame::RstStream {
                stream_id: 7,
                status: rst::CANCEL,
            },
            Frame::Settings {
                clear: true,
                entries: vec![
                    Setting {
                        flags: 1,
                        id: SETTINGS_INITIAL_WINDOW_SIZE,
                        value: 1 << 20,
                    },
                    Setting {
                        flags: 0,
                        id: 0x00ab_cdef,
                        value: u32::MAX,
                    },
                ],
            },
            Frame::Settings {
                clear: false,
                entries: Vec::new(),
            },
            Frame::Ping { id: 0xdead_beef },
            Frame::GoAway {
                last_good_id: 11,
                status: goaway::PROTOCOL_ERROR,
            },
            Frame::Headers {
                stream_id: 9,
                fin: false,
                block: vec![0; 3],
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 0x7fff_ffff,
            },
        ]
    }

    #[test]
    fn every_frame_type_round_trips() {
        for frame in every_frame() {
            let mut wire = Vec::new();
            encode(&frame, &mut wire);
            let (decoded, used) = decode(&wire).unwrap().unwrap();
            assert_eq!(decoded, frame);
            assert_eq!(used, wire.len());
            // Every proper prefix is "not yet", never an error or a panic.
            for cut in 0..wire.len() {
                assert!(
                    decode(&wire[..cut]).unwrap().is_none(),
                    "{frame:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn known_bytes_of_a_ping_and_a_data_frame() {
        let mut wire = Vec::new();
        encode(&Frame::Ping { id: 1 }, &mut wire);
        assert_eq!(wire, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
        wire.clear();
        encode(
            &Frame::Data {
                stream_id: 3,
                fin: true,
                data: vec![0xaa],
            },
            &mut wire,
        );
        assert_eq!(wire, [0, 0, 0, 3, 1, 0, 0, 1, 0xaa]);
    }

    #[test]
    fn unknown_control_types_decode_as_unknown_and_other_versions_fail() {
        let wire = [0x80, 3, 0x0f, 0x00, 0, 0, 0, 2, 1, 2];
        assert_eq!(
            decode(&wire).unwrap().unwrap(),
            (Frame::Unknown { kind: 0x0f00 }, 10)
        );
        let v2_ping = [0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1];
        assert!(decode(&v2_ping).is_err());
    }

    #[test]
    fn wrong_lengths_are_errors() {
        // PING of 3 bytes, RST of 9, WINDOW_UPDATE of 4, SYN_STREAM of 9, SYN_REPLY of 3,
        // SETTINGS claiming two entries but carrying one.
        let cases: [&[u8]; 6] = [
            &[0x80, 3, 0, 6, 0, 0, 0, 3, 0, 0, 1],
            &[0x80, 3, 0, 3, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 1, 0],
            &[0x80, 3, 0, 9, 0, 0, 0, 4, 0, 0, 0, 1],
            &[0x80, 3, 0, 1, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0],
            &[0x80, 3, 0, 2, 0, 0, 0, 3, 0, 0, 1],
            &[
                0x80, 3, 0, 4, 0, 0, 0, 12, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 1, 0,
            ],
        ];
        for wire in cases {
            assert!(decode(wire).is_err(), "{wire:?}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A deterministic pseudo-random byte soup, decoded at every offset.
        let mut state = 0x1234_5678_u32;
        let soup: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 24) as u8
            })
            .collect();
        for start in 0..soup.len() {
            let _ = decode(&soup[start..]);
            if let Some(kind_bytes) = soup.get(start..start + 2) {
                let kind = u16::from_be_bytes([kind_bytes[0], kind_bytes[1]]) % 12;
                let _ = decode_control(
                    kind,
                    soup[start],
                    &soup[start..(start + 40).min(soup.len())],
                );
            }
        }
    }
}
