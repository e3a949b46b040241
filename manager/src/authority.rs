//! Accepting gRPC clients that send a unix socket's path as the HTTP/2 `:authority`.
//!
//! kubelet and crictl up to 1.26 dial the CRI socket with grpc-go's passthrough target, so
//! every request carries `:authority: /run/crust/crustd.sock`. That is not a valid authority,
//! and the HTTP/2 server under tonic (h2) resets such streams with PROTOCOL_ERROR. containerd,
//! in Go, takes it. So crustd reads each client connection through [`AuthorityFix`]: the
//! client's header blocks are decoded, an invalid `:authority` becomes `localhost`, and the
//! block is encoded again (with this connection's own HPACK state) before h2 sees it. Every
//! other frame, and everything crustd sends, passes through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame h2 accepts before settings say otherwise (SETTINGS_MAX_FRAME_SIZE).
const MAX_FRAME: usize = 16_384;
/// Largest frame read from a client (h2 allows 16 KiB unless it says more); a bigger length
/// is a broken or hostile peer, refused before it is buffered.
const MAX_INCOMING_FRAME: usize = 1 << 20;
/// Largest header block gathered from HEADERS and CONTINUATION frames.
const MAX_HEADER_BLOCK: usize = 1 << 20;
const REPLACEMENT: &[u8] = b"localhost";

/// The client-to-server byte stream of one HTTP/2 connection, with header blocks rewritten.
pub struct Rewriter {
    preface_seen: usize,
    pending: Vec<u8>,
    /// A header block whose CONTINUATION frames are still coming: stream, flags, fragments.
    open_block: Option<(u32, u8, Vec<u8>)>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        Self {
            preface_seen: 0,
            pending: Vec::new(),
            open_block: None,
            decoder: Decoder::new(),
            encoder: Encoder::new(),
        }
    }
}

fn broken(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

impl Rewriter {
    /// Takes bytes from the client and appends what h2 should read to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        // The connection preface passes as it is (nothing of it once it has passed).
        let take = (PREFACE.len() - self.preface_seen).min(input.len());
        out.extend_from_slice(&input[..take]);
        self.preface_seen += take;
        let input = &input[take..];
        self.pending.extend_from_slice(input);
        let mut at = 0;
        while self.pending.len() - at >= FRAME_HEADER {
            let header = &self.pending[at..at + FRAME_HEADER];
            // A 24-bit big-endian length.
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            if length > MAX_INCOMING_FRAME {
                return Err(broken(format!("frame of {length} bytes")));
            }
            if self.pending.len() - at < FRAME_HEADER + length {
                break;
            }
            let kind = header[3];
            let flags = header[4];
            let stream =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            let payload = &self.pending[at + FRAME_HEADER..at + FRAME_HEADER + length];
            match kind {
                HEADERS => {
                    let fragment = header_fragment(flags, payload)?;
                    self.begin_block(stream, flags, fragment.to_vec(), out)?;
                }
                CONTINUATION => {
                    let Some((open, _, block)) = self.open_block.as_mut() else {
                        return Err(broken("CONTINUATION without HEADERS"));
                    };
                    if *open != stream {
                        return Err(broken("CONTINUATION on another stream"));
                    }
                    block.extend_from_slice(payload);
                    if block.len() > MAX_HEADER_BLOCK {
                        return Err(broken("header block too large"));
                    }
                    if flags & END_HEADERS != 0 {
                        self.finish_block(out)?;
                    }
                }
                _ => {
                    if self.open_block.is_some() {
                        return Err(broken("frame inside a header block"));
                    }
                    out.extend_from_slice(&self.pending[at..at + FRAME_HEADER + length]);
                }
            }
            at += FRAME_HEADER + length;
        }
        self.pending.drain(..at);
        Ok(())
    }

    fn begin_block(
        &mut self,
        stream: u32,
        flags: u8,
        fragment: Vec<u8>,
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        if self.open_block.is_some() {
            return Err(broken("HEADERS inside a header block"));
        }
        self.open_block = Some((stream, flags, fragment));
        if flags & END_HEADERS != 0 {
            self.finish_block(out)?;
        }
        Ok(())
    }

    fn finish_block(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let Some((stream, flags, block)) = self.open_block.take() else {
            return Ok(());
        };
        let mut headers = self
            .decoder
            .decode(&block)
            .map_err(|e| broken(format!("header block: {e}")))?;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority"
                && http::uri::Authority::try_from(value.as_slice()).is_err()
            {
                *value = REPLACEMENT.to_vec();
            }
        }
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut first = true;
        // An empty block still needs its HEADERS frame.
        if encoded.is_empty() {
            write_frame(
                out,
                HEADERS,
                (flags & END_STREAM) | END_HEADERS,
                stream,
                &[],
            );
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let end = if last { END_HEADERS } else { 0 };
            if first {
                write_frame(out, HEADERS, (flags & END_STREAM) | end, stream, chunk);
                first = false;
            } else {
                write_frame(out, CONTINUATION, end, stream, chunk);
            }
        }
        Ok(())
    }
}

/// The header block fragment of a HEADERS payload, without padding and priority.
fn header_fragment(flags: u8, payload: &[u8]) -> io::Result<&[u8]> {
    let mut body = payload;
    let mut padding = 0;
    if flags & PADDED != 0 {
        let (&pad, rest) = body
            .split_first()
            .ok_or_else(|| broken("empty padded HEADERS"))?;
        padding = usize::from(pad);
        body = rest;
    }
    if flags & PRIORITY != 0 {
        body = body
            .get(5..)
            .ok_or_else(|| broken("short HEADERS priority"))?;
    }
    let end = body
        .len()
        .checked_sub(padding)
        .ok_or_else(|| broken("HEADERS padding longer than the frame"))?;
    Ok(&body[..end])
}

fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let length = payload.len();
    out.extend_from_slice(&[
        (length >> 16) as u8,
        (length >> 8) as u8,
        length as u8,
        kind,
        flags,
    ]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A connection whose incoming bytes go through a [`Rewriter`].
#[derive(Debug)]
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    ready: Vec<u8>,
    offset: usize,
}

impl<S> AuthorityFix<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: Rewriter::default(),
            ready: Vec::new(),
            offset: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.offset < this.ready.len() {
                let take = (this.ready.len() - this.offset).min(buf.remaining());
                buf.put_slice(&this.ready[this.offset..this.offset + take]);
                this.offset += take;
                if this.offset == this.ready.len() {
                    this.ready.clear();
                    this.offset = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut scratch = [0u8; 8192];
            let mut read = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => this.rewriter.feed(read.filled(), &mut this.ready)?,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's opening: preface, SETTINGS, then a request whose header block is split
    /// over HEADERS (padded, with priority) and CONTINUATION, then DATA.
    fn client_bytes(encoder: &mut Encoder<'static>, authority: &[u8]) -> Vec<u8> {
        let block = encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.ImageService/ListImages"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
        ]);
        let mut bytes = PREFACE.to_vec();
        write_frame(&mut bytes, 0x4, 0, 0, &[]);
        let (head, tail) = block.split_at(block.len() / 2);
        let mut payload = vec![2u8]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        payload.extend_from_slice(head);
        payload.extend_from_slice(&[0, 0]);
        write_frame(&mut bytes, HEADERS, PADDED | PRIORITY, 1, &payload);
        write_frame(&mut bytes, CONTINUATION, END_HEADERS, 1, tail);
        write_frame(&mut bytes, 0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]);
        bytes
    }

    /// Reads frames back: (type, flags, stream, payload).
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(bytes.starts_with(PREFACE));
        let mut rest = &bytes[PREFACE.len()..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let length =
                usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            frames.push((rest[3], rest[4], stream, rest[9..9 + length].to_vec()));
            rest = &rest[9 + length..];
        }
        frames
    }

    fn rewrite_in_pieces(bytes: &[u8], piece: usize) -> Vec<u8> {
        let mut rewriter = Rewriter::default();
        let mut out = Vec::new();
        for chunk in bytes.chunks(piece) {
            rewriter.feed(chunk, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        for piece in [1, 7, 4096] {
            let mut client = Encoder::new();
            let mut bytes = client_bytes(&mut client, b"/run/crust/crustd.sock");
            // A second request reuses the client's dynamic table entries.
            let second = client.encode([
                (&b":method"[..], &b"POST"[..]),
                (b":scheme", b"http"),
                (b":path", b"/runtime.v1.ImageService/ListImages"),
                (b":authority", b"/run/crust/crustd.sock"),
            ]);
            write_frame(&mut bytes, HEADERS, END_HEADERS, 3, &second);
            let out = rewrite_in_pieces(&bytes, piece);
            let frames = frames(&out);
            let kinds: Vec<(u8, u32)> = frames.iter().map(|f| (f.0, f.2)).collect();
            assert_eq!(kinds, [(0x4, 0), (HEADERS, 1), (0x0, 1), (HEADERS, 3)]);
            let mut server = Decoder::new();
            for (index, frame) in [&frames[1], &frames[3]].into_iter().enumerate() {
                assert_eq!(frame.1 & (END_HEADERS | PADDED | PRIORITY), END_HEADERS);
                let headers = server.decode(&frame.3).unwrap();
                let authority = headers.iter().find(|(n, _)| n == b":authority").unwrap();
                assert_eq!(authority.1, b"localhost", "request {index}");
                let path = headers.iter().find(|(n, _)| n == b":path").unwrap();
                assert_eq!(path.1, b"/runtime.v1.ImageService/ListImages");
            }
            assert_eq!(frames[2], (0x0, END_STREAM, 1, vec![0, 0, 0, 0, 0]));
        }
    }

    #[test]
    fn frames_of_any_length_up_to_the_limit_pass_whole() {
        // 300 bytes: the length's middle byte counts.
        for length in [300, MAX_INCOMING_FRAME] {
            let mut bytes = PREFACE.to_vec();
            write_frame(&mut bytes, 0x0, END_STREAM, 1, &vec![7u8; length]);
            let out = rewrite_in_pieces(&bytes, 4096);
            assert_eq!(
                out, bytes,
                "a DATA frame of {length} bytes passes untouched"
            );
        }
        let mut bytes = PREFACE.to_vec();
        write_frame(&mut bytes, 0x0, 0, 1, &vec![7u8; MAX_INCOMING_FRAME + 1]);
        let error = Rewriter::default()
            .feed(&bytes, &mut Vec::new())
            .expect_err("one byte over the limit");
        assert!(
            error.to_string().contains("frame of 1048577 bytes"),
            "{error}"
        );
    }

    /// A request's header block with `:authority` set to a socket path and, to make it big,
    /// a header of `padding` bytes.
    fn request_block(client: &mut Encoder<'static>, padding: usize) -> Vec<u8> {
        let big = vec![b'x'; padding];
        client.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.RuntimeService/Version"),
            (b":authority", b"/run/crust/crustd.sock"),
            (b"x-padding", big.as_slice()),
        ])
    }

    #[test]
    fn rewritten_headers_keep_end_stream_and_end_their_block() {
        for (asked, expected) in [
            (END_HEADERS, END_HEADERS),
            (END_HEADERS | END_STREAM, END_HEADERS | END_STREAM),
        ] {
            let mut client = Encoder::new();
            let mut bytes = PREFACE.to_vec();
            write_frame(
                &mut bytes,
                HEADERS,
                asked,
                1,
                &request_block(&mut client, 10),
            );
            let out = rewrite_in_pieces(&bytes, 4096);
            let frames = frames(&out);
            assert_eq!(frames.len(), 1);
            assert_eq!(
                (frames[0].0, frames[0].1),
                (HEADERS, expected),
                "asked {asked:#x}"
            );
        }
    }

    #[test]
    fn an_empty_header_block_still_has_its_frame_with_end_stream_kept_and_padding_gone() {
        // A padded HEADERS frame with a pad length of 0 and no header at all.
        for (asked, expected) in [
            (END_HEADERS | PADDED, END_HEADERS),
            (END_HEADERS | END_STREAM | PADDED, END_HEADERS | END_STREAM),
        ] {
            let mut bytes = PREFACE.to_vec();
            write_frame(&mut bytes, HEADERS, asked, 1, &[0]);
            let out = rewrite_in_pieces(&bytes, 4096);
            assert_eq!(
                frames(&out),
                [(HEADERS, expected, 1, vec![])],
                "asked {asked:#x}"
            );
        }
    }

    #[test]
    fn a_block_bigger_than_a_frame_is_sent_as_headers_and_continuations() {
        let mut client = Encoder::new();
        let block = request_block(&mut client, 40_000);
        let mut bytes = PREFACE.to_vec();
        // The client's own block in three pieces: HEADERS, CONTINUATION, CONTINUATION.
        let (first, rest) = block.split_at(10_000);
        let (second, third) = rest.split_at(10_000);
        write_frame(&mut bytes, HEADERS, END_STREAM, 1, first);
        write_frame(&mut bytes, CONTINUATION, 0, 1, second);
        write_frame(&mut bytes, CONTINUATION, END_HEADERS, 1, third);
        let out = rewrite_in_pieces(&bytes, 1000);
        let frames = frames(&out);
        let shape: Vec<(u8, u8, usize)> = frames.iter().map(|f| (f.0, f.1, f.3.len())).collect();
        assert_eq!(shape.len(), 3, "{shape:?}");
        assert_eq!(shape[0], (HEADERS, END_STREAM, MAX_FRAME));
        assert_eq!(shape[1], (CONTINUATION, 0, MAX_FRAME));
        assert_eq!((shape[2].0, shape[2].1), (CONTINUATION, END_HEADERS));
        let block: Vec<u8> = frames.iter().flat_map(|f| f.3.clone()).collect();
        let headers = Decoder::new().decode(&block).unwrap();
        assert!(headers.contains(&(b":authority".to_vec(), b"localhost".to_vec())));
        assert!(
            headers
                .iter()
                .any(|(n, v)| n == b"x-padding" && v.len() == 40_000)
        );
    }

    #[test]
    fn a_header_block_may_grow_to_its_limit_and_no_further() {
        let mut rewriter = Rewriter::default();
        let mut bytes = PREFACE.to_vec();
        write_frame(&mut bytes, HEADERS, 0, 1, &[0u8; 16]);
        let mut left = MAX_HEADER_BLOCK - 16;
        while left > 0 {
            let piece = left.min(MAX_FRAME);
            write_frame(&mut bytes, CONTINUATION, 0, 1, &vec![0u8; piece]);
            left -= piece;
        }
        rewriter
            .feed(&bytes, &mut Vec::new())
            .expect("a block of exactly the limit is still open");
        let mut one_more = Vec::new();
        write_frame(&mut one_more, CONTINUATION, 0, 1, &[0u8]);
        let error = rewriter.feed(&one_more, &mut Vec::new()).expect_err("over");
        assert!(
            error.to_string().contains("header block too large"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_connection_reads_through_the_rewriter_to_its_end() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut client = Encoder::new();
        let bytes = client_bytes(&mut client, b"/run/crust/crustd.sock");
        let expected = rewrite_in_pieces(&bytes, bytes.len());
        let (mut writer, reader) = tokio::io::duplex(64);
        let mut fixed = AuthorityFix::new(reader);
        let sending = tokio::spawn(async move {
            writer.write_all(&bytes).await.unwrap();
            // Dropped: the connection ends.
        });
        let mut got = Vec::new();
        let mut buffer = [0u8; 7];
        loop {
            let n = fixed.read(&mut buffer).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buffer[..n]);
        }
        sending.await.unwrap();
        assert_eq!(got, expected, "read in 7-byte pieces, then end of stream");
    }

    #[tokio::test]
    async fn what_the_server_writes_passes_through_untouched() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut peer, inner) = tokio::io::duplex(1024);
        // A buffered inner stream: what is written reaches the peer only when it is flushed.
        let mut fixed = AuthorityFix::new(tokio::io::BufWriter::new(inner));
        fixed.write_all(b"server frames").await.unwrap();
        fixed.flush().await.unwrap();
        let mut got = [0u8; 13];
        tokio::time::timeout(std::time::Duration::from_secs(5), peer.read_exact(&mut got))
            .await
            .expect("flushed through to the peer")
            .unwrap();
        assert_eq!(&got, b"server frames");
        fixed.write_all(b" and the end").await.unwrap();
        fixed.shutdown().await.unwrap();
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        assert_eq!(
            rest, b" and the end",
            "written whole, then the end of the stream"
        );
    }

    #[test]
    fn the_rewriter_shows_what_it_holds() {
        let mut rewriter = Rewriter::default();
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&[0, 0, 5, 0x0, 0]);
        rewriter.feed(&bytes, &mut Vec::new()).unwrap();
        assert_eq!(format!("{rewriter:?}"), "Rewriter { pending: 5 }");
    }

    #[test]
    fn a_valid_authority_is_left_alone() {
        let mut client = Encoder::new();
        let out = rewrite_in_pieces(&client_bytes(&mut client, b"localhost:1234"), 100);
        let headers = Decoder::new().decode(&frames(&out)[1].3).unwrap();
        assert!(headers.contains(&(b":authority".to_vec(), b"localhost:1234".to_vec())));
    }

    #[test]
    fn broken_streams_are_refused() {
        let refused = |bytes: &[u8], why: &str| {
            let error = Rewriter::default()
                .feed(bytes, &mut Vec::new())
                .expect_err(why);
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{why}");
            error.to_string()
        };
        let mut bytes = PREFACE.to_vec();
        write_frame(&mut bytes, CONTINUATION, END_HEADERS, 1, b"x");
        assert!(refused(&bytes, "stray CONTINUATION").contains("CONTINUATION without HEADERS"));
        let mut bytes = PREFACE.to_vec();
        write_frame(&mut bytes, HEADERS, END_HEADERS | PADDED, 1, &[9, 1]);
        refused(&bytes, "padding longer than the frame");
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, HEADERS, 0, 0, 0, 0, 1]);
        assert!(refused(&bytes, "a 16 MiB frame").contains("frame of"));
    }
}
