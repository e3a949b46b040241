//! crustd's streaming server (exec, attach, port-forward) from the client side.
//!
//! Two independent clients do the protocol work in the tests: the `kubernetes` Python package
//! (WebSocket, `tests/streaming/python/streamclient.py`) and npm's `spdy-transport` (SPDY/3.1,
//! `tests/streaming/node-client/spdyclient.js`), run as subprocesses that print one JSON report.
//! What those cannot do (raw HTTP with bad tokens and paths, malformed frames, a round trip
//! timed without a process start) is done here: raw HTTP requests, WebSocket and SPDY/3.1
//! framing (with the SPDY/3 header compression dictionary), and a small synchronous SPDY and
//! WebSocket exec client.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::command;

// ---------------------------------------------------------------------------------------------
// The independent clients.

/// Which independent client speaks to crustd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// SPDY/3.1 through npm's `spdy-transport` (as kubectl before 1.30, kubelet's proxy, crictl).
    Spdy,
    /// WebSocket through the `kubernetes` Python package (as kubectl from 1.30).
    WebSocket,
}

impl Transport {
    /// Both, in the order the tests run them.
    pub const BOTH: [Transport; 2] = [Transport::Spdy, Transport::WebSocket];

    /// The transports a run covers: `CRUST_STREAM_TRANSPORT=spdy` or `websocket` narrows
    /// [`Transport::BOTH`] to one (to chase a failure); unset, both.
    pub fn selected() -> Vec<Transport> {
        match std::env::var("CRUST_STREAM_TRANSPORT").as_deref() {
            Ok("spdy") => vec![Transport::Spdy],
            Ok("websocket") => vec![Transport::WebSocket],
            _ => Self::BOTH.to_vec(),
        }
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Spdy => "SPDY (spdy-transport)",
            Transport::WebSocket => "WebSocket (kubernetes Python client)",
        }
    }
}

/// `tests/streaming`, where the client scripts are.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("streaming")
}

const INSTALL_HINT: &str =
    "install the streaming clients first: `source packaging/lib.sh && install_stream_clients`";

/// The command that runs `transport`'s client (mode and arguments still to add).
pub fn client_command(transport: Transport) -> Command {
    let dir = clients_dir();
    match transport {
        Transport::Spdy => {
            let client = dir.join("node-client");
            assert!(
                client.join("node_modules/spdy-transport").is_dir(),
                "{} has no node_modules/spdy-transport: {INSTALL_HINT}",
                client.display()
            );
            let mut command = Command::new("node");
            command.arg(client.join("spdyclient.js"));
            command
        }
        Transport::WebSocket => {
            let python = dir.join("python/.venv/bin/python");
            assert!(
                python.exists(),
                "{} is missing: {INSTALL_HINT}",
                python.display()
            );
            let mut command = Command::new(python);
            command.arg(dir.join("python/streamclient.py"));
            command
        }
    }
}

/// What a client printed: its JSON report.
#[derive(Clone)]
pub struct Report(pub Value);

impl Report {
    /// A top-level field.
    pub fn get(&self, key: &str) -> &Value {
        &self.0[key]
    }

    /// The exit code the error stream's Status gave, if it gave one.
    pub fn exit_code(&self) -> Option<i64> {
        self.0["exit_code"].as_i64()
    }

    /// What went wrong on the client's side, if anything.
    pub fn failure(&self) -> Option<&str> {
        self.0["failure"].as_str()
    }

    /// The HTTP status of the upgrade (101 when it worked).
    pub fn http_status(&self) -> Option<i64> {
        self.0["http_status"].as_i64()
    }

    /// The subprotocol crustd chose.
    pub fn protocol(&self) -> &str {
        self.0["protocol"].as_str().unwrap_or_default()
    }

    /// The start of a received stream (`stdout`, `stderr`) as text.
    pub fn text(&self, stream: &str) -> &str {
        self.0[stream]["text"].as_str().unwrap_or_default()
    }

    /// How many bytes a received stream carried.
    pub fn len(&self, stream: &str) -> u64 {
        self.0[stream]["len"].as_u64().unwrap_or(0)
    }

    /// The sha256 (hex) of all a stream carried.
    pub fn sha256(&self, stream: &str) -> &str {
        self.0[stream]["sha256"].as_str().unwrap_or_default()
    }

    /// What arrived on the error stream.
    pub fn error_text(&self) -> &str {
        self.0["error_text"].as_str().unwrap_or_default()
    }

    /// The per-connection reports of a port-forward run.
    pub fn connections(&self) -> Vec<Value> {
        self.0["connections"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl fmt::Debug for Report {
    /// The report with long texts cut, for assertion messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        for stream in ["stdout", "stderr"] {
            if let Some(text) = shown[stream]["text"].as_str() {
                if text.len() > 600 {
                    let cut: String = text.chars().take(600).collect();
                    shown[stream]["text"] = Value::String(format!("{cut}…"));
                }
            }
        }
        write!(f, "{shown}")
    }
}

/// Runs `transport`'s client in `mode` (exec, attach, portforward) on `urls` with `options`,
/// killing it after `limit`; its report.
///
/// # Panics
/// When the client cannot run or prints no JSON.
pub fn run_client(
    transport: Transport,
    mode: &str,
    urls: &[String],
    options: &[String],
    limit: Duration,
) -> Report {
    let mut command = client_command(transport);
    command.arg(mode).args(urls).args(options);
    let outcome = command::run(&mut command, None, limit);
    let line = outcome.stdout.lines().rev().find(|l| l.starts_with('{'));
    match line.map(serde_json::from_str::<Value>) {
        Some(Ok(value)) => Report(value),
        _ => panic!(
            "{} printed no report (exit {:?}):\nstdout: {}\nstderr: {}",
            transport.name(),
            outcome.code,
            outcome.stdout,
            outcome.stderr
        ),
    }
}

/// [`run_client`] off the async runtime's threads.
pub async fn client(
    transport: Transport,
    mode: &str,
    urls: &[String],
    options: &[String],
    limit: Duration,
) -> Report {
    let mode = mode.to_string();
    let urls = urls.to_vec();
    let options = options.to_vec();
    tokio::task::spawn_blocking(move || run_client(transport, &mode, &urls, &options, limit))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

// ---------------------------------------------------------------------------------------------
// Pure helpers.

/// The hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What `seq 1 N | head -c len` prints, for N large enough.
pub fn seq_output(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let mut n = 1u64;
    while out.len() < len {
        out.extend_from_slice(n.to_string().as_bytes());
        out.push(b'\n');
        n += 1;
    }
    out.truncate(len);
    out
}

/// The `host:port` and the path (with query) of an `http://` URL.
pub fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    (!authority.is_empty()).then(|| (authority.to_string(), path.to_string()))
}

/// The exit code a v4 error-stream Status carries: 0 for Success (or nothing at all),
/// the `ExitCode` cause of a `NonZeroExitCode` failure; otherwise the text as the error.
pub fn exit_code_of_status(text: &str) -> Result<i32, String> {
    if text.trim().is_empty() {
        return Ok(0);
    }
    let status: Value = serde_json::from_str(text).map_err(|_| text.to_string())?;
    if status["status"] == "Success" {
        return Ok(0);
    }
    if status["reason"] == "NonZeroExitCode" {
        let causes = status["details"]["causes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for cause in causes {
            if cause["reason"] == "ExitCode" {
                if let Some(code) = cause["message"].as_str().and_then(|m| m.parse().ok()) {
                    return Ok(code);
                }
            }
        }
    }
    Err(text.to_string())
}

/// Percentile `p` (0..=1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP.

/// An HTTP response head, and the body bytes that came with it (up to a bound).
#[derive(Debug, Clone, Default)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// Header fields, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (non-101), or the bytes already read past the head (101).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

const IO_LIMIT: Duration = Duration::from_secs(10);

fn connect(authority: &str) -> io::Result<TcpStream> {
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("no address for {authority}")))?;
    let stream = TcpStream::connect_timeout(&addr, IO_LIMIT)?;
    stream.set_read_timeout(Some(IO_LIMIT))?;
    stream.set_write_timeout(Some(IO_LIMIT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends `method path` to `authority` with `headers`; reads the response head, and for a
/// non-101 answer its body (by Content-Length, else until close, at most 64 KiB). The stream is
/// left open after a 101.
pub fn raw_request(
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<(RawResponse, TcpStream)> {
    let mut stream = connect(authority)?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before a response head: {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 * 1024 {
            return Err(io::Error::other("response head over 64 KiB"));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut response = RawResponse {
        status,
        headers,
        body: buf[head_end + 4..].to_vec(),
    };
    if status != 101 {
        let length: Option<usize> = response
            .header("content-length")
            .and_then(|v| v.parse().ok());
        let want = length.unwrap_or(64 * 1024).min(64 * 1024);
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        while response.body.len() < want {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => response.body.extend_from_slice(&chunk[..n]),
            }
        }
    }
    Ok((response, stream))
}

/// [`raw_request`] of `url` (an `http://` URL as crustd answers them).
pub fn request_url(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
) -> io::Result<(RawResponse, TcpStream)> {
    let (authority, path) =
        split_url(url).ok_or_else(|| io::Error::other(format!("not an http URL: {url}")))?;
    raw_request(&authority, method, &path, headers)
}

/// The headers of a SPDY/3.1 upgrade offering `protocols`.
pub fn spdy_upgrade_headers(protocols: &[&str]) -> Vec<(String, String)> {
    let mut headers = vec![
        ("Connection".to_string(), "Upgrade".to_string()),
        ("Upgrade".to_string(), "SPDY/3.1".to_string()),
    ];
    for p in protocols {
        headers.push(("X-Stream-Protocol-Version".to_string(), p.to_string()));
    }
    headers
}

/// The headers of a WebSocket upgrade offering `protocols`.
pub fn websocket_upgrade_headers(protocols: &[&str]) -> Vec<(String, String)> {
    let key = base64::engine::general_purpose::STANDARD.encode(rand_bytes::<16>());
    vec![
        ("Connection".to_string(), "Upgrade".to_string()),
        ("Upgrade".to_string(), "websocket".to_string()),
        ("Sec-WebSocket-Version".to_string(), "13".to_string()),
        ("Sec-WebSocket-Key".to_string(), key),
        ("Sec-WebSocket-Protocol".to_string(), protocols.join(", ")),
    ]
}

fn as_refs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Not cryptographic: WebSocket keys and masks only need to vary.
fn rand_bytes<const N: usize>() -> [u8; N] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(8) {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(Instant::now().elapsed().as_nanos());
        let bytes = hasher.finish().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    out
}

/// Reads from `stream` into `buf` once; false at end of file.
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = vec![0u8; 64 * 1024];
    let n = stream.read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

/// Whether the peer ends the connection within `limit`: end of file or a reset, after
/// reading (and dropping) whatever it still sends. `close_frame` tells what it sent last.
pub fn closes_within(stream: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "still open after {limit:?}; it sent {} bytes",
                seen.len()
            ));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(seen),
            Ok(n) => {
                if seen.len() < 1 << 20 {
                    seen.extend_from_slice(&chunk[..n]);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Ok(seen),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket framing (RFC 6455).

/// WebSocket opcodes used here.
pub mod opcode {
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Binary frame.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// One frame as encoded on the wire: a client masks (`mask` Some), a server does not.
pub fn ws_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | (opcode & 0x0f)];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsFrame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// Payload, unmasked.
    pub payload: Vec<u8>,
}

/// The first frame in `buf` and its encoded length, once all of it is there.
pub fn ws_parse(buf: &[u8]) -> Option<(WsFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let key = if masked {
        let key: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(key)
    } else {
        None
    };
    let end = at.checked_add(len)?;
    let data = buf.get(at..end)?;
    let payload = match key {
        Some(key) => data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect(),
        None => data.to_vec(),
    };
    Some((
        WsFrame {
            fin,
            opcode,
            payload,
        },
        end,
    ))
}

/// A WebSocket connection after a 101 (the client's side).
#[derive(Debug)]
pub struct WsClient {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The subprotocol crustd chose.
    pub protocol: String,
}

impl WsClient {
    /// Upgrades `url` offering `protocols`: the client, or crustd's answer when it was not 101.
    pub fn connect(url: &str, protocols: &[&str]) -> io::Result<Result<Self, RawResponse>> {
        let headers = websocket_upgrade_headers(protocols);
        let (response, stream) = request_url(url, "GET", &as_refs(&headers))?;
        if response.status != 101 {
            return Ok(Err(response));
        }
        Ok(Ok(WsClient {
            protocol: response
                .header("sec-websocket-protocol")
                .unwrap_or_default()
                .to_string(),
            buf: response.body,
            stream,
        }))
    }

    /// Sends one masked frame.
    pub fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.stream
            .write_all(&ws_frame(true, opcode, payload, Some(rand_bytes::<4>())))
    }

    /// Sends raw bytes (for malformed frames).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next frame (pings answered); None at end of file.
    pub fn next_frame(&mut self) -> io::Result<Option<WsFrame>> {
        loop {
            if let Some((frame, used)) = ws_parse(&self.buf) {
                self.buf.drain(..used);
                if frame.opcode == opcode::PING {
                    self.send(opcode::PONG, &frame.payload)?;
                    continue;
                }
                return Ok(Some(frame));
            }
            if !fill(&mut self.stream, &mut self.buf)? {
                return Ok(None);
            }
        }
    }

    /// Runs an exec whose URL this is to its end: exit code, stdout, stderr (v4/v5 binary
    /// channels, as `connect` offered them).
    pub fn run_exec(mut self) -> io::Result<ExecOutcome> {
        let mut outcome = ExecOutcome::default();
        let mut error = Vec::new();
        while let Some(frame) = self.next_frame()? {
            match frame.opcode {
                opcode::CLOSE => break,
                opcode::BINARY if !frame.payload.is_empty() => {
                    let data = &frame.payload[1..];
                    match frame.payload[0] {
                        1 => outcome.stdout.extend_from_slice(data),
                        2 => outcome.stderr.extend_from_slice(data),
                        3 => error.extend_from_slice(data),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        outcome.error_text = String::from_utf8_lossy(&error).into_owned();
        outcome.exit_code = exit_code_of_status(&outcome.error_text).ok();
        Ok(outcome)
    }
}

/// What an exec run by our own clients gave.
#[derive(Debug, Clone, Default)]
pub struct ExecOutcome {
    /// From the error stream's Status.
    pub exit_code: Option<i32>,
    /// The error stream's text.
    pub error_text: String,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

// ---------------------------------------------------------------------------------------------
// SPDY/3.1 framing.

/// The SPDY/3 header compression dictionary: length-prefixed words, then one run of text
/// (draft-mbelshe-httpbis-spdy-00, section 2.6.10.1).
pub fn spdy_dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414\
        415416417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently\
        400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error\
        501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov \
        Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,\
        image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,\
        publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
    let mut out = Vec::with_capacity(1423);
    for word in WORDS {
        out.extend_from_slice(&(word.len() as u32).to_be_bytes());
        out.extend_from_slice(word.as_bytes());
    }
    out.extend_from_slice(TAIL.as_bytes());
    out
}

/// SPDY control frame types.
pub mod spdy_type {
    /// SYN_STREAM.
    pub const SYN_STREAM: u16 = 1;
    /// SYN_REPLY.
    pub const SYN_REPLY: u16 = 2;
    /// RST_STREAM.
    pub const RST_STREAM: u16 = 3;
    /// SETTINGS.
    pub const SETTINGS: u16 = 4;
    /// PING.
    pub const PING: u16 = 6;
    /// GOAWAY.
    pub const GOAWAY: u16 = 7;
    /// HEADERS.
    pub const HEADERS: u16 = 8;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u16 = 9;
}

/// FLAG_FIN.
pub const SPDY_FIN: u8 = 0x01;

/// A control frame of `kind` (version 3).
pub fn spdy_control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80, 0x03];
    out.extend_from_slice(&kind.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(payload);
    out
}

/// A data frame on `stream`.
pub fn spdy_data(stream: u32, fin: bool, data: &[u8]) -> Vec<u8> {
    let mut out = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
    out.push(if fin { SPDY_FIN } else { 0 });
    out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(data);
    out
}

/// A WINDOW_UPDATE of `delta` for `stream` (0: the session).
pub fn spdy_window_update(stream: u32, delta: u32) -> Vec<u8> {
    let mut payload = stream.to_be_bytes().to_vec();
    payload.extend_from_slice(&delta.to_be_bytes());
    spdy_control(spdy_type::WINDOW_UPDATE, 0, &payload)
}

/// The two zlib streams of a SPDY session's header blocks (one per direction), both primed
/// with [`spdy_dictionary`].
pub struct HeaderCodec {
    compress: Compress,
    decompress: Decompress,
    dictionary: Vec<u8>,
}

impl fmt::Debug for HeaderCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HeaderCodec")
    }
}

impl Default for HeaderCodec {
    fn default() -> Self {
        let dictionary = spdy_dictionary();
        let mut compress = Compress::new(Compression::default(), true);
        compress
            .set_dictionary(&dictionary)
            .expect("zlib takes the SPDY dictionary");
        HeaderCodec {
            compress,
            decompress: Decompress::new(true),
            dictionary,
        }
    }
}

impl HeaderCodec {
    /// A header block (count, then length-prefixed names and values), compressed and flushed.
    pub fn encode(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (name, value) in headers {
            for field in [name.to_ascii_lowercase().as_bytes(), value.as_bytes()] {
                raw.extend_from_slice(&(field.len() as u32).to_be_bytes());
                raw.extend_from_slice(field);
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            out.reserve(256);
            let before_in = self.compress.total_in();
            let _ = self
                .compress
                .compress_vec(input, &mut out, FlushCompress::Sync);
            input = &input[(self.compress.total_in() - before_in) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                return out;
            }
        }
    }

    /// The fields of a compressed header block.
    pub fn decode(&mut self, block: &[u8]) -> io::Result<Vec<(String, String)>> {
        let mut raw = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            raw.reserve(4096);
            let before_in = self.decompress.total_in();
            let before_out = raw.len();
            match self
                .decompress
                .decompress_vec(input, &mut raw, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.decompress
                        .set_dictionary(&self.dictionary)
                        .map_err(io::Error::other)?;
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            input = &input[(self.decompress.total_in() - before_in) as usize..];
            if input.is_empty() && raw.len() < raw.capacity() {
                break;
            }
            if raw.len() == before_out
                && self.decompress.total_in() == before_in
                && input.is_empty()
            {
                break;
            }
        }
        parse_header_block(&raw)
    }
}

fn parse_header_block(raw: &[u8]) -> io::Result<Vec<(String, String)>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "truncated SPDY header block");
    let mut at = 0usize;
    let mut take = |n: usize| -> io::Result<&[u8]> {
        let slice = raw.get(at..at + n).ok_or_else(bad)?;
        at += n;
        Ok(slice)
    };
    let read_u32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let count = read_u32(take(4)?);
    let mut fields = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let len = read_u32(take(4)?);
        let name = String::from_utf8_lossy(take(len)?).into_owned();
        let len = read_u32(take(4)?);
        let value = String::from_utf8_lossy(take(len)?).into_owned();
        fields.push((name, value));
    }
    Ok(fields)
}

/// A decoded SPDY frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpdyFrame {
    /// DATA.
    Data {
        /// Stream id.
        stream: u32,
        /// FLAG_FIN.
        fin: bool,
        /// Payload.
        data: Vec<u8>,
    },
    /// SYN_STREAM, SYN_REPLY or HEADERS (by `kind`).
    Headers {
        /// Control frame type.
        kind: u16,
        /// Stream id.
        stream: u32,
        /// FLAG_FIN.
        fin: bool,
        /// Decoded fields.
        fields: Vec<(String, String)>,
    },
    /// RST_STREAM.
    Rst {
        /// Stream id.
        stream: u32,
        /// Status code.
        status: u32,
    },
    /// GOAWAY.
    GoAway {
        /// Last good stream id.
        last: u32,
        /// Status code.
        status: u32,
    },
    /// WINDOW_UPDATE.
    WindowUpdate {
        /// Stream id (0: session).
        stream: u32,
        /// Delta.
        delta: u32,
    },
    /// Any other control frame (SETTINGS, PING, ...).
    Control {
        /// Type.
        kind: u16,
        /// Flags.
        flags: u8,
        /// Payload.
        payload: Vec<u8>,
    },
}

/// The length of the first frame in `buf` once all of it is there.
pub fn spdy_frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 8 {
        return None;
    }
    let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize + 8;
    (buf.len() >= len).then_some(len)
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .unwrap_or(0)
}

/// Decodes one whole frame (as [`spdy_frame_len`] delimits it).
pub fn spdy_decode(frame: &[u8], codec: &mut HeaderCodec) -> io::Result<SpdyFrame> {
    let flags = frame[4];
    let payload = &frame[8..];
    if frame[0] & 0x80 == 0 {
        return Ok(SpdyFrame::Data {
            stream: be32(frame, 0) & 0x7fff_ffff,
            fin: flags & SPDY_FIN != 0,
            data: payload.to_vec(),
        });
    }
    let kind = u16::from_be_bytes([frame[2], frame[3]]);
    let stream = be32(payload, 0) & 0x7fff_ffff;
    Ok(match kind {
        spdy_type::SYN_STREAM | spdy_type::SYN_REPLY | spdy_type::HEADERS => {
            let skip = if kind == spdy_type::SYN_STREAM { 10 } else { 4 };
            SpdyFrame::Headers {
                kind,
                stream,
                fin: flags & SPDY_FIN != 0,
                fields: codec.decode(payload.get(skip..).unwrap_or_default())?,
            }
        }
        spdy_type::RST_STREAM => SpdyFrame::Rst {
            stream,
            status: be32(payload, 4),
        },
        spdy_type::GOAWAY => SpdyFrame::GoAway {
            last: stream,
            status: be32(payload, 4),
        },
        spdy_type::WINDOW_UPDATE => SpdyFrame::WindowUpdate {
            stream,
            delta: be32(payload, 4) & 0x7fff_ffff,
        },
        _ => SpdyFrame::Control {
            kind,
            flags,
            payload: payload.to_vec(),
        },
    })
}

/// A SPDY/3.1 session after a 101 (the client's side): streams opened as spdystream (kubectl)
/// opens them, data frames answered with WINDOW_UPDATEs, pings with pings.
#[derive(Debug)]
pub struct SpdyClient {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
    codec: HeaderCodec,
    next_id: u32,
    /// The subprotocol crustd chose.
    pub protocol: String,
}

impl SpdyClient {
    /// Upgrades `url` offering `protocols`: the session, or crustd's answer when it was not 101.
    pub fn connect(url: &str, protocols: &[&str]) -> io::Result<Result<Self, RawResponse>> {
        let headers = spdy_upgrade_headers(protocols);
        let (response, stream) = request_url(url, "POST", &as_refs(&headers))?;
        if response.status != 101 {
            return Ok(Err(response));
        }
        Ok(Ok(SpdyClient {
            protocol: response
                .header("x-stream-protocol-version")
                .unwrap_or_default()
                .to_string(),
            buf: response.body,
            stream,
            codec: HeaderCodec::default(),
            next_id: 1,
        }))
    }

    /// Opens a stream with `headers` (SYN_STREAM, no FIN); its id.
    pub fn open(&mut self, headers: &[(&str, &str)]) -> io::Result<u32> {
        let id = self.next_id;
        self.next_id += 2;
        let mut payload = id.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        payload.extend_from_slice(&self.codec.encode(headers));
        self.stream
            .write_all(&spdy_control(spdy_type::SYN_STREAM, 0, &payload))?;
        Ok(id)
    }

    /// Sends `data` on `stream` (small amounts: this client does not track send windows).
    pub fn send(&mut self, stream: u32, data: &[u8], fin: bool) -> io::Result<()> {
        self.stream.write_all(&spdy_data(stream, fin, data))
    }

    /// Sends raw bytes (for malformed frames).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next frame; None at end of file.
    pub fn next_frame(&mut self) -> io::Result<Option<SpdyFrame>> {
        loop {
            if let Some(len) = spdy_frame_len(&self.buf) {
                let raw: Vec<u8> = self.buf.drain(..len).collect();
                let frame = spdy_decode(&raw, &mut self.codec)?;
                match &frame {
                    SpdyFrame::Data { stream, data, .. } if !data.is_empty() => {
                        let mut updates = spdy_window_update(*stream, data.len() as u32);
                        updates.extend(spdy_window_update(0, data.len() as u32));
                        // The stream may be gone already; the session update still counts.
                        let _ = self.stream.write_all(&updates);
                    }
                    SpdyFrame::Control {
                        kind: spdy_type::PING,
                        payload,
                        ..
                    } => {
                        let _ = self
                            .stream
                            .write_all(&spdy_control(spdy_type::PING, 0, payload));
                    }
                    _ => {}
                }
                return Ok(Some(frame));
            }
            if !fill(&mut self.stream, &mut self.buf)? {
                return Ok(None);
            }
        }
    }

    /// Runs an exec (or attach) whose URL this is: opens error, stdout and (unless `tty`)
    /// stderr streams, and reads until crustd has ended them all or closed the connection.
    pub fn run_exec(mut self, tty: bool) -> io::Result<ExecOutcome> {
        let error = self.open(&[("streamtype", "error")])?;
        let stdout = self.open(&[("streamtype", "stdout")])?;
        let stderr = if tty {
            None
        } else {
            Some(self.open(&[("streamtype", "stderr")])?)
        };
        let mut open: Vec<u32> = [Some(error), Some(stdout), stderr]
            .into_iter()
            .flatten()
            .collect();
        let mut outcome = ExecOutcome::default();
        let mut error_bytes = Vec::new();
        while !open.is_empty() {
            let Some(frame) = self.next_frame()? else {
                break;
            };
            let (id, ended) = match frame {
                SpdyFrame::Data { stream, fin, data } => {
                    if stream == error {
                        error_bytes.extend_from_slice(&data);
                    } else if stream == stdout {
                        outcome.stdout.extend_from_slice(&data);
                    } else if Some(stream) == stderr {
                        outcome.stderr.extend_from_slice(&data);
                    }
                    (stream, fin)
                }
                SpdyFrame::Headers { stream, fin, .. } => (stream, fin),
                SpdyFrame::Rst { stream, .. } => (stream, true),
                SpdyFrame::GoAway { .. } => break,
                _ => (0, false),
            };
            if ended {
                open.retain(|&s| s != id);
            }
        }
        outcome.error_text = String::from_utf8_lossy(&error_bytes).into_owned();
        outcome.exit_code = exit_code_of_status(&outcome.error_text).ok();
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spdy_dictionary_is_the_specified_one() {
        let dictionary = spdy_dictionary();
        assert_eq!(dictionary.len(), 1423);
        // The digest of the dictionary npm's spdy-transport carries for SPDY/3.
        assert_eq!(
            sha256_hex(&dictionary),
            "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
        );
    }

    #[test]
    fn header_blocks_survive_our_own_zlib_streams_frame_after_frame() {
        let mut client = HeaderCodec::default();
        let mut server = HeaderCodec::default();
        for round in 0..3 {
            let requestid = round.to_string();
            let fields = [
                ("StreamType", "data"),
                ("port", "8080"),
                ("requestid", requestid.as_str()),
            ];
            let block = client.encode(&fields);
            let decoded = server.decode(&block).expect("decode");
            assert_eq!(
                decoded,
                vec![
                    ("streamtype".to_string(), "data".to_string()),
                    ("port".to_string(), "8080".to_string()),
                    ("requestid".to_string(), requestid.clone()),
                ]
            );
        }
    }

    #[test]
    fn spdy_frames_are_laid_out_as_spdy3_says() {
        let data = spdy_data(5, true, b"abc");
        assert_eq!(data, [0, 0, 0, 5, 1, 0, 0, 3, b'a', b'b', b'c']);
        let update = spdy_window_update(3, 65536);
        assert_eq!(update[..8], [0x80, 3, 0, 9, 0, 0, 0, 8]);
        assert_eq!(spdy_frame_len(&update), Some(16));
        assert_eq!(spdy_frame_len(&update[..10]), None);
        let mut codec = HeaderCodec::default();
        assert_eq!(
            spdy_decode(&update, &mut codec).expect("decode"),
            SpdyFrame::WindowUpdate {
                stream: 3,
                delta: 65536
            }
        );
        let mut sender = HeaderCodec::default();
        let mut reply = 7u32.to_be_bytes().to_vec();
        reply.extend(sender.encode(&[]));
        let frame = spdy_control(spdy_type::SYN_REPLY, SPDY_FIN, &reply);
        assert_eq!(
            spdy_decode(&frame, &mut codec).expect("decode"),
            SpdyFrame::Headers {
                kind: spdy_type::SYN_REPLY,
                stream: 7,
                fin: true,
                fields: vec![]
            }
        );
    }

    #[test]
    fn websocket_frames_round_trip_masked_and_not() {
        for len in [0usize, 5, 125, 126, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for mask in [None, Some([1, 2, 3, 4])] {
                let wire = ws_frame(true, opcode::BINARY, &payload, mask);
                let (frame, used) = ws_parse(&wire).expect("whole frame");
                assert_eq!(used, wire.len());
                assert_eq!(frame.payload, payload);
                assert_eq!(frame.opcode, opcode::BINARY);
                assert!(ws_parse(&wire[..wire.len() - 1]).is_none() || len == 0);
            }
        }
    }

    #[test]
    fn exit_codes_come_from_the_v4_status() {
        assert_eq!(exit_code_of_status(""), Ok(0));
        assert_eq!(
            exit_code_of_status(r#"{"metadata":{},"status":"Success"}"#),
            Ok(0)
        );
        let failure = r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: 137","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"137"}]}}"#;
        assert_eq!(exit_code_of_status(failure), Ok(137));
        assert!(exit_code_of_status("error: something").is_err());
    }

    #[test]
    fn seq_output_is_what_seq_prints() {
        assert_eq!(seq_output(12), b"1\n2\n3\n4\n5\n6\n");
        assert_eq!(seq_output(24), b"1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n");
        assert_eq!(seq_output(25), b"1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n1");
        assert_eq!(seq_output(64 << 20).len(), 64 << 20);
    }

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:4321/exec/abc?x=1"),
            Some(("127.0.0.1:4321".into(), "/exec/abc?x=1".into()))
        );
        assert_eq!(
            split_url("http://[::1]:80"),
            Some(("[::1]:80".into(), "/".into()))
        );
        assert_eq!(split_url("https://x/y"), None);
    }

    #[test]
    fn percentiles_pick_from_sorted_samples() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&samples, 0.95), Duration::from_millis(95));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
