//! stream-bench: what crustd's streaming server costs. Starts a private crustd with one pod
//! (a sleeping container and an echo server, busybox `nc -ll -e cat`), then measures
//!
//! - exec round trip: CRI Exec of `true`, upgrade, streams, exit status, p50/p95 over N execs,
//!   over SPDY and WebSocket with crust's own client, next to ExecSync;
//! - port-forward throughput (MiB/s each way through the echo server): SPDY through npm's
//!   spdy-transport, WebSocket through the `kubernetes` Python client, next to plain TCP to the
//!   same echo server by the pod's IP and a TCP echo on loopback.
//!
//! `--quick` (CI) uses small counts. Prints a table; removes everything it started.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crust_proto::cri::*;
use crust_tests::cri::{self, Client};
use crust_tests::crustd::WithImage;
use crust_tests::streaming::{self, SpdyClient, Transport, WsClient, opcode, percentile};

const MIB: usize = 1 << 20;
const ECHO_PORT: u16 = 8080;

struct Sizes {
    execs: usize,
    /// MiB through one connection.
    single_mib: usize,
    /// Connections of the concurrent run, and MiB through each.
    connections: usize,
    each_mib: usize,
}

fn sizes_from_args() -> Result<Sizes, String> {
    let mut sizes = Sizes {
        execs: 200,
        single_mib: 256,
        connections: 20,
        each_mib: 32,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => {
                sizes = Sizes {
                    execs: 20,
                    single_mib: 16,
                    connections: 4,
                    each_mib: 4,
                }
            }
            "--execs" => {
                sizes.execs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--execs takes a number")?
            }
            "--mib" => {
                sizes.single_mib = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--mib takes a number")?
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(sizes)
}

struct Latency {
    name: String,
    p50: Duration,
    p95: Duration,
}

struct Throughput {
    name: String,
    mib_per_s: f64,
}

async fn exec_url(client: &mut Client, id: &str) -> Result<String, String> {
    client
        .exec(ExecRequest {
            container_id: id.into(),
            cmd: vec!["true".into()],
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().url)
        .map_err(|e| format!("Exec: {e}"))
}

/// N round trips of `one`; p50 and p95.
async fn time_execs<F, Fut>(name: &str, n: usize, mut one: F) -> Result<Latency, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    one().await?; // warm-up
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        one().await?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(Latency {
        name: name.to_string(),
        p50: percentile(&times, 0.5),
        p95: percentile(&times, 0.95),
    })
}

async fn streamed_exec(client: &mut Client, id: &str, spdy: bool) -> Result<(), String> {
    let url = exec_url(client, id).await?;
    let outcome = tokio::task::spawn_blocking(move || -> Result<_, String> {
        if spdy {
            SpdyClient::connect(&url, &["v4.channel.k8s.io"])
                .map_err(|e| e.to_string())?
                .map_err(|r| format!("upgrade answered {}", r.status))?
                .run_exec(false)
                .map_err(|e| e.to_string())
        } else {
            WsClient::connect(&url, &["v5.channel.k8s.io", "v4.channel.k8s.io"])
                .map_err(|e| e.to_string())?
                .map_err(|r| format!("upgrade answered {}", r.status))?
                .run_exec()
                .map_err(|e| e.to_string())
        }
    })
    .await
    .map_err(|e| e.to_string())??;
    match outcome.exit_code {
        Some(0) => Ok(()),
        _ => Err(format!("exec of true: {outcome:?}")),
    }
}

/// `bytes` written to and read back from an echo server at `addr`; MiB/s each way.
fn tcp_echo(addr: &str, bytes: usize) -> Result<f64, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let send = std::thread::spawn(move || -> std::io::Result<()> {
        let chunk = vec![0x5au8; 256 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            writer.write_all(&chunk[..n])?;
            left -= n;
        }
        Ok(())
    });
    let mut got = 0;
    let mut buf = vec![0u8; 256 * 1024];
    while got < bytes {
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("echo ended after {got} of {bytes} bytes"));
        }
        got += n;
    }
    send.join()
        .map_err(|_| "writer panicked".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(bytes as f64 / MIB as f64 / started.elapsed().as_secs_f64())
}

/// A loopback echo server for the baseline; its address.
fn loopback_echo() -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut out) = conn.try_clone() else {
                    return;
                };
                let mut conn = conn;
                let _ = std::io::copy(&mut conn, &mut out);
            });
        }
    });
    Ok(addr.to_string())
}

async fn forward_urls(client: &mut Client, pod: &str, n: usize) -> Result<Vec<String>, String> {
    let mut urls = Vec::new();
    for _ in 0..n {
        let url = client
            .port_forward(PortForwardRequest {
                pod_sandbox_id: pod.into(),
                port: vec![i32::from(ECHO_PORT)],
            })
            .await
            .map_err(|e| format!("PortForward: {e}"))?
            .into_inner()
            .url;
        urls.push(url);
    }
    Ok(urls)
}

/// A port-forward through `transport`'s client: `connections` × `mib` MiB; MiB/s each way.
async fn forward(
    client: &mut Client,
    pod: &str,
    transport: Transport,
    connections: usize,
    mib: usize,
) -> Result<f64, String> {
    let urls = match transport {
        Transport::Spdy => forward_urls(client, pod, 1).await?,
        Transport::WebSocket => forward_urls(client, pod, connections).await?,
    };
    let mut options = vec![
        "--port".to_string(),
        ECHO_PORT.to_string(),
        "--bytes".to_string(),
        (mib * MIB).to_string(),
        "--timeout".to_string(),
        "600".to_string(),
    ];
    if transport == Transport::Spdy {
        options.extend(["--connections".to_string(), connections.to_string()]);
    }
    let started = Instant::now();
    let report = streaming::client(
        transport,
        "portforward",
        &urls,
        &options,
        Duration::from_secs(660),
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(failure) = report.failure() {
        return Err(format!("{}: {failure}: {report:?}", transport.name()));
    }
    for c in report.connections() {
        let exact = c["received"].as_u64() == Some((mib * MIB) as u64)
            && c["received_sha256"] == c["sent_sha256"];
        if !exact {
            return Err(format!("{}: not byte-exact: {c}", transport.name()));
        }
    }
    // The client's own clock (transfers only), not its start-up.
    let elapsed_ms = report
        .get("elapsed_ms")
        .as_f64()
        .unwrap_or(seconds * 1000.0);
    Ok((connections * mib) as f64 / (elapsed_ms / 1000.0))
}

/// `bytes` through the echo server over a WebSocket port-forward at `url`, sent from one
/// thread in 32 KiB messages while this one counts what comes back; MiB/s each way.
fn raw_websocket_forward(url: &str, bytes: usize) -> Result<f64, String> {
    let url = format!("{url}?port={ECHO_PORT}");
    let mut socket = WsClient::connect(&url, &["v4.channel.k8s.io"])
        .map_err(|e| format!("raw port-forward: {e}"))?
        .map_err(|r| format!("raw port-forward: HTTP {}", r.status))?;
    let mut sending = socket
        .stream
        .try_clone()
        .map_err(|e| format!("raw port-forward: {e}"))?;
    const CHUNK: usize = 32 * 1024;
    let started = Instant::now();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut message = vec![0x5a_u8; CHUNK + 1];
        message[0] = 0; // the data channel of the first port
        let frame = streaming::ws_frame(true, opcode::BINARY, &message, Some([7, 1, 3, 9]));
        for _ in 0..bytes.div_ceil(CHUNK) {
            sending.write_all(&frame)?;
        }
        Ok(())
    });
    let expected = bytes.div_ceil(CHUNK) * CHUNK;
    let mut received = 0;
    // Each channel's first message starts with its port (2 bytes).
    let mut announced = false;
    while received < expected {
        let frame = socket
            .next_frame()
            .map_err(|e| format!("raw port-forward: {e}"))?
            .ok_or_else(|| format!("raw port-forward: closed after {received} bytes"))?;
        match (frame.opcode, frame.payload.split_first()) {
            (opcode::BINARY, Some((0, data))) => {
                let data = if announced {
                    data
                } else {
                    &data[2.min(data.len())..]
                };
                announced = true;
                received += data.len();
            }
            (opcode::BINARY, Some((1, error))) if error.len() > 2 => {
                return Err(format!(
                    "raw port-forward: {}",
                    String::from_utf8_lossy(&error[2..])
                ));
            }
            (opcode::CLOSE, _) => return Err("raw port-forward: closed early".into()),
            _ => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    sender
        .join()
        .map_err(|_| "raw port-forward: the sender panicked".to_string())?
        .map_err(|e| format!("raw port-forward: send: {e}"))?;
    Ok(expected as f64 / MIB as f64 / seconds)
}

async fn run(sizes: &Sizes) -> Result<(Vec<Latency>, Vec<Throughput>), String> {
    let setup = WithImage::start(false).await?;
    let mut client = setup.crustd.runtime().await;
    let config = cri::pod_config("stream-bench", "default", setup.logs.path());
    let pod = cri::run_pod(&mut client, &config)
        .await
        .map_err(|e| format!("run pod: {e}"))?;
    let start = |name: &str, command: &[&str]| {
        cri::container_config(name, &setup.image, command, &format!("{name}.log"))
    };
    let sleeper = start("sleeper", &["sleep", "3600"]);
    let port = ECHO_PORT.to_string();
    let echo = start("echo", &["nc", "-ll", "-p", &port, "-e", "cat"]);
    let sleeper = cri::create_and_start(&mut client, &pod, &config, sleeper)
        .await
        .map_err(|e| format!("start sleeper: {e}"))?;
    let echo = cri::create_and_start(&mut client, &pod, &config, echo)
        .await
        .map_err(|e| format!("start echo: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out) = cri::sh(&mut client, &echo, "netstat -ltn")
            .await
            .map_err(|e| format!("netstat: {e}"))?;
        if out.contains(&format!(":{ECHO_PORT} ")) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the echo server does not listen: {out}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pod_ip = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .map_err(|e| format!("pod status: {e}"))?
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();

    let mut latencies = Vec::new();
    let n = sizes.execs;
    latencies.push(
        time_execs(&format!("exec `true`, SPDY/3.1 ({n}×)"), n, || {
            let mut client = client.clone();
            let id = sleeper.clone();
            async move { streamed_exec(&mut client, &id, true).await }
        })
        .await?,
    );
    latencies.push(
        time_execs(&format!("exec `true`, WebSocket v5 ({n}×)"), n, || {
            let mut client = client.clone();
            let id = sleeper.clone();
            async move { streamed_exec(&mut client, &id, false).await }
        })
        .await?,
    );
    latencies.push(
        time_execs(&format!("ExecSync `true`, no stream ({n}×)"), n, || {
            let mut client = client.clone();
            let id = sleeper.clone();
            async move {
                cri::exec(&mut client, &id, &["true"], 10)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        })
        .await?,
    );

    let mut rates = Vec::new();
    let (one, k, each) = (sizes.single_mib, sizes.connections, sizes.each_mib);
    for (transport, connections, mib) in [
        (Transport::Spdy, 1, one),
        (Transport::Spdy, k, each),
        (Transport::WebSocket, 1, one),
        (Transport::WebSocket, k, each),
    ] {
        let label = match transport {
            Transport::Spdy => "port-forward, SPDY/3.1 (spdy-transport)",
            Transport::WebSocket => "port-forward, WebSocket (kubernetes Python)",
        };
        rates.push(Throughput {
            name: format!("{label}, {connections} × {mib} MiB"),
            mib_per_s: forward(&mut client, &pod, transport, connections, mib).await?,
        });
    }
    // crustd's own cost, without a client language in the way: our raw WebSocket client.
    let url = forward_urls(&mut client, &pod, 1)
        .await?
        .pop()
        .ok_or("no port-forward URL")?;
    let bytes = one * MIB;
    let rate = tokio::task::spawn_blocking(move || raw_websocket_forward(&url, bytes))
        .await
        .map_err(|e| e.to_string())??;
    rates.push(Throughput {
        name: format!("port-forward, WebSocket (crust's raw client), 1 × {one} MiB"),
        mib_per_s: rate,
    });
    if !pod_ip.is_empty() {
        let addr = format!("{pod_ip}:{ECHO_PORT}");
        let bytes = one * MIB;
        let rate = tokio::task::spawn_blocking(move || tcp_echo(&addr, bytes))
            .await
            .map_err(|e| e.to_string())??;
        rates.push(Throughput {
            name: format!("plain TCP to the pod's echo server, 1 × {one} MiB"),
            mib_per_s: rate,
        });
    }
    let loopback = loopback_echo()?;
    let bytes = one * MIB;
    let rate = tokio::task::spawn_blocking(move || tcp_echo(&loopback, bytes))
        .await
        .map_err(|e| e.to_string())??;
    rates.push(Throughput {
        name: format!("plain TCP loopback echo (baseline), 1 × {one} MiB"),
        mib_per_s: rate,
    });
    cri::remove_all_pods(&mut client)
        .await
        .map_err(|e| format!("remove pods: {e}"))?;
    Ok((latencies, rates))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let sizes = match sizes_from_args() {
        Ok(sizes) => sizes,
        Err(why) => {
            eprintln!("stream-bench: {why}");
            return ExitCode::from(2);
        }
    };
    match run(&sizes).await {
        Ok((latencies, rates)) => {
            println!("{:<48} {:>10} {:>10}", "round trip", "p50", "p95");
            for l in &latencies {
                println!(
                    "{:<48} {:>7.2} ms {:>7.2} ms",
                    l.name,
                    l.p50.as_secs_f64() * 1000.0,
                    l.p95.as_secs_f64() * 1000.0
                );
            }
            println!();
            println!("{:<64} {:>14}", "throughput", "MiB/s each way");
            for r in &rates {
                println!("{:<64} {:>14.0}", r.name, r.mib_per_s);
            }
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("stream-bench: {why}");
            ExitCode::FAILURE
        }
    }
}
