//! SPDY/3 name/value header blocks and their zlib compression.
//!
//! A block is a 32-bit pair count, then per pair a 32-bit length and the name, a 32-bit length
//! and the value (several values of one name are joined by NUL). Every block of a connection
//! direction is one zlib stream primed with the SPDY/3 dictionary, each block ending in a sync
//! flush: so there is one [`Deflater`] and one [`Inflater`] per connection, used in wire order.

use std::io;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dictionary::DICTIONARY;

/// Largest decompressed header block accepted: kubectl's blocks are a few hundred bytes; this
/// stops a small compressed frame from inflating into a lot of memory.
pub const MAX_BLOCK: usize = 256 * 1024;

fn bad_block(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad SPDY header block: {what}"),
    )
}

/// Serialises `headers` into an uncompressed block. Names are lowercased (SPDY/3 requires it).
fn serialise(headers: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Parses an uncompressed block. A value holding several NUL-separated values becomes several
/// pairs. Names are lowercased rather than refused: lookups are case-insensitive anyway.
fn parse(block: &[u8]) -> io::Result<Vec<(String, String)>> {
    let mut at: usize = 0;
    let mut take = |len: usize| -> io::Result<&[u8]> {
        let piece = block
            .get(at..at.saturating_add(len))
            .ok_or_else(|| bad_block("truncated"))?;
        at += len;
        Ok(piece)
    };
    let be32 = |bytes: &[u8]| u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let count = be32(take(4)?);
    let mut headers = Vec::new();
    for _ in 0..count {
        let len = be32(take(4)?);
        let name = std::str::from_utf8(take(len)?).map_err(|_| bad_block("name is not UTF-8"))?;
        if name.is_empty() {
            return Err(bad_block("empty name"));
        }
        let name = name.to_ascii_lowercase();
        let len = be32(take(4)?);
        let value = std::str::from_utf8(take(len)?).map_err(|_| bad_block("value is not UTF-8"))?;
        for part in value.split('\0') {
            headers.push((name.clone(), part.to_owned()));
        }
    }
    if at != block.len() {
        return Err(bad_block("bytes after the last pair"));
    }
    Ok(headers)
}

/// Compresses the header blocks this end sends.
pub struct Deflater {
    zlib: Compress,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater").finish_non_exhaustive()
    }
}

impl Deflater {
    pub fn new() -> io::Result<Deflater> {
        let mut zlib = Compress::new(Compression::default(), true);
        zlib.set_dictionary(&DICTIONARY).map_err(io::Error::other)?;
        Ok(Deflater { zlib })
    }

    /// The compressed block for `headers`, ending at a sync flush so the peer can decode it
    /// without waiting for more.
    pub fn compress(&mut self, headers: &[(String, String)]) -> io::Result<Vec<u8>> {
        let plain = serialise(headers);
        let mut out = Vec::with_capacity(plain.len() / 2 + 64);
        let start_in = self.zlib.total_in();
        loop {
            let consumed = (self.zlib.total_in() - start_in) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            self.zlib
                .compress_vec(&plain[consumed..], &mut out, FlushCompress::Sync)
                .map_err(io::Error::other)?;
            let consumed = (self.zlib.total_in() - start_in) as usize;
            // Done once all input is in and the flush left room to spare (a full output buffer
            // may mean zlib has more to emit).
            if consumed == plain.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// Decompresses the header blocks the peer sends.
pub struct Inflater {
    zlib: Decompress,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").finish_non_exhaustive()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater::new()
    }
}

impl Inflater {
    pub fn new() -> Inflater {
        Inflater {
            zlib: Decompress::new(true),
        }
    }

    /// Decodes one compressed block. Any error leaves the zlib context unusable: the session
    /// must end.
    pub fn decompress(&mut self, compressed: &[u8]) -> io::Result<Vec<(String, String)>> {
        let mut plain = Vec::with_capacity(1024);
        let start_in = self.zlib.total_in();
        loop {
            if plain.len() == plain.capacity() {
                if plain.len() >= MAX_BLOCK {
                    return Err(bad_block("too large"));
                }
                plain.reserve(plain.capacity().min(MAX_BLOCK - plain.len()));
            }
            let consumed = (self.zlib.total_in() - start_in) as usize;
            let (before_in, before_out) = (self.zlib.total_in(), self.zlib.total_out());
            let status = match self.zlib.decompress_vec(
                &compressed[consumed..],
                &mut plain,
                FlushDecompress::Sync,
            ) {
                Ok(status) => status,
                // The stream's header names the dictionary it wants; only ours will do.
                Err(error) if error.needs_dictionary().is_some() => {
                    self.zlib
                        .set_dictionary(&DICTIONARY)
                        .map_err(|_| bad_block("not the SPDY/3 dictionary"))?;
                    continue;
                }
                Err(error) => return Err(bad_block(&format!("zlib: {error}"))),
            };
            if status == Status::StreamEnd {
                // The peer ended its zlib stream: its later blocks could not be decoded.
                return Err(bad_block("zlib stream ended"));
            }
            let consumed = (self.zlib.total_in() - start_in) as usize;
            // All input taken and room left over: zlib has emitted everything it can.
            if consumed == compressed.len() && plain.len() < plain.capacity() {
                break;
            }
            if self.zlib.total_in() == before_in && self.zlib.total_out() == before_out {
                return Err(bad_block("zlib made no progress"));
            }
        }
        parse(&plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_dictionary_is_the_spdy3_one() {
        // The id a zlib stream primed with it carries: Adler-32 of the dictionary.
        let (mut a, mut b) = (1u32, 0u32);
        for byte in DICTIONARY {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(b << 16 | a, 0xe3c6_a7c2);
        assert!(DICTIONARY.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
    }

    #[test]
    fn blocks_round_trip_across_frames_in_one_context() {
        let mut deflater = Deflater::new().unwrap();
        let mut inflater = Inflater::new();
        let blocks = [
            pairs(&[("streamtype", "error"), (":status", "200")]),
            pairs(&[]),
            pairs(&[("streamtype", "stdout"), ("x-long", &"y".repeat(70_000))]),
            pairs(&[
                ("streamtype", "stdout"),
                ("port", "8080"),
                ("requestid", "0"),
            ]),
        ];
        let mut sizes = Vec::new();
        for block in &blocks {
            let compressed = deflater.compress(block).unwrap();
            sizes.push(compressed.len());
            assert_eq!(&inflater.decompress(&compressed).unwrap(), block);
        }
        // The shared context is really shared: a block repeating an earlier one's names costs
        // less than the first one did.
        let again = deflater.compress(&blocks[0]).unwrap();
        assert!(again.len() < sizes[0], "{} vs {}", again.len(), sizes[0]);
        assert_eq!(inflater.decompress(&again).unwrap(), blocks[0]);
    }

    #[test]
    fn a_block_out_of_order_fails_instead_of_decoding_wrongly() {
        let mut deflater = Deflater::new().unwrap();
        let _first = deflater.compress(&pairs(&[("a", "b")])).unwrap();
        let second = deflater.compress(&pairs(&[("a", "b")])).unwrap();
        // A fresh inflater never saw the zlib header: the second block alone is garbage.
        assert!(Inflater::new().decompress(&second).is_err());
    }

    #[test]
    fn names_are_lowercased_and_nul_joined_values_split() {
        let mut raw = Vec::new();
        raw.extend_from_slice(&1u32.to_be_bytes());
        raw.extend_from_slice(&4u32.to_be_bytes());
        raw.extend_from_slice(b"Port");
        raw.extend_from_slice(&8u32.to_be_bytes());
        raw.extend_from_slice(b"80\x008080\0");
        assert_eq!(
            parse(&raw).unwrap(),
            pairs(&[("port", "80"), ("port", "8080"), ("port", "")])
        );
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let cases: [&[u8]; 5] = [
            &[0, 0],
            &[0, 0, 0, 1, 0, 0, 0, 9, b'a'],
            &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0xff, 0xff, 0xff, 0xff],
            &[0, 0, 0, 0, 1],
        ];
        for raw in cases {
            assert!(parse(raw).is_err(), "{raw:?}");
        }
        assert!(Inflater::new().decompress(b"not zlib at all").is_err());
        assert!(Inflater::new().decompress(&[]).is_err());
    }

    #[test]
    fn a_compressed_bomb_is_refused() {
        let mut deflater = Deflater::new().unwrap();
        let huge = pairs(&[("x", &"a".repeat(MAX_BLOCK * 2))]);
        let compressed = deflater.compress(&huge).unwrap();
        assert!(compressed.len() < 10_000);
        assert!(Inflater::new().decompress(&compressed).is_err());
    }

    #[test]
    fn garbage_after_a_good_block_never_panics() {
        let mut deflater = Deflater::new().unwrap();
        let good = deflater.compress(&pairs(&[("a", "b")])).unwrap();
        let mut state = 7u32;
        for len in 0..200 {
            let mut inflater = Inflater::new();
            inflater.decompress(&good).unwrap();
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (state >> 16) as u8
                })
                .collect();
            let _ = inflater.decompress(&junk);
        }
    }
}
