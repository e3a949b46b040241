#!/usr/bin/env python3
"""A WebSocket client of crustd's streaming server built on the `kubernetes` package (PyPI):
its own `WSClient` for exec and attach and its own `PortForward` for port-forward, pointed at
the URL a CRI Exec/Attach/PortForward call answered (http becomes ws).

The tests run it as a subprocess; it prints one JSON object on stdout and exits 0 whenever it
could print one (failures are fields of that object).

  streamclient.py exec|attach URL [--stdin] [--tty] [--protocol P]... [--steps JSON]
                  [--timeout S] [--keep BYTES]
  streamclient.py portforward --port N URL [URL...] [--bytes B] [--timeout S]

--steps is the same JSON array the SPDY client takes:
  {"resize":[W,H]}  {"stdin":"text"}  {"stdin_bytes":N}  {"close_stdin":true}
  {"wait":"text"}  {"wait_bytes":N}  {"sleep":S} (still reading)  {"stall":S} (not reading)
  {"disconnect":true} (drop the connection without a close frame)

Port-forward: one WebSocket per URL (each URL carries its own token), the port named as
kubelet's server takes it (`?port=N`, not the API server's `?ports=`), and B bytes sent and
read back through each, concurrently; an echo server is expected behind the port.
"""

import argparse
import hashlib
import json
import os
import socket
import sys
import threading
import time
from urllib.parse import urlencode, urlparse, urlunparse

from kubernetes.client import Configuration
from kubernetes.stream import ws_client
from websocket import WebSocketBadStatusException, WebSocketException

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4


class Sink:
    """Keeps the first `keep` bytes, the length and a running sha256 of what arrives."""

    def __init__(self, keep):
        self.keep = keep
        self.kept = bytearray()
        self.len = 0
        self.hash = hashlib.sha256()
        self.first_at = None

    def add(self, data, now):
        if not data:
            return
        if self.first_at is None:
            self.first_at = now
        self.len += len(data)
        self.hash.update(data)
        if len(self.kept) < self.keep:
            self.kept += data[: self.keep - len(self.kept)]

    def report(self, started):
        return {
            "len": self.len,
            "sha256": self.hash.hexdigest(),
            "text": self.kept.decode("utf-8", "replace"),
            "truncated": self.len > len(self.kept),
            "first_ms": None if self.first_at is None else int((self.first_at - started) * 1000),
        }


def pattern_chunk(_index, size):
    """Bytes to send: random, so that a lost, repeated or reordered chunk changes the digest
    the receiving side computes (as the SPDY client's)."""
    return os.urandom(size)


def ws_url(url, query=None):
    parts = list(urlparse(url))
    parts[0] = {"http": "ws", "https": "wss"}.get(parts[0], parts[0])
    if query:
        parts[4] = "&".join(p for p in (parts[4], urlencode(query)) if p)
    return urlunparse(parts)


def configuration():
    config = Configuration()
    config.verify_ssl = False
    return config


def headers_for(protocols):
    # Without a header WSClient offers its own list (v5 then v4 in this version).
    return {"sec-websocket-protocol": ",".join(protocols)} if protocols else None


def exit_code_of(error_text):
    if not error_text:
        return 0, None
    try:
        status = json.loads(error_text)
    except ValueError:
        return None, None
    if status.get("status") == "Success":
        return 0, status
    causes = (status.get("details") or {}).get("causes") or []
    codes = [c.get("message") for c in causes if c.get("reason") == "ExitCode"]
    if status.get("reason") == "NonZeroExitCode" and codes:
        return int(codes[0]), status
    return None, status


def remotecommand(args):
    started = time.time()
    result = {"transport": "websocket", "mode": args.mode, "offered": args.protocol or None}
    try:
        client = ws_client.WSClient(
            configuration(), ws_url(args.url), headers_for(args.protocol), False, binary=True
        )
    except WebSocketBadStatusException as e:
        result["http_status"] = e.status_code
        result["body"] = (e.resp_body or b"").decode("utf-8", "replace")
        result["failure"] = "upgrade refused with HTTP %s" % e.status_code
        return result
    except OSError as e:
        result["http_status"] = None
        result["failure"] = "connect: %s" % e
        return result
    result["http_status"] = 101
    result["protocol"] = client.subprotocol
    # WSClient.update() keeps reading while more frames are already waiting, so under a process
    # that writes without pause (`yes`) it never returns; one batch per call keeps the steps
    # (wait_bytes, disconnect) running.
    client._frames_immediately_available = lambda: False
    out, err, errors = Sink(args.keep), Sink(args.keep), Sink(1 << 20)
    stdin_hash = hashlib.sha256()
    stdin_len = [0]
    deadline = started + args.timeout
    lock = threading.Lock()

    def pump(timeout):
        client.update(timeout=timeout)
        now = time.time()
        for channel, sink in ((STDOUT, out), (STDERR, err), (ERROR, errors)):
            sink.add(client.read_channel(channel), now)

    def until(pred):
        while not pred():
            if not client.is_open() or time.time() > deadline:
                return False
            pump(0.05)
        return True

    writer = None
    failure = []

    def write_bytes(total):
        sent, i = 0, 0
        try:
            while sent < total:
                chunk = pattern_chunk(i, min(64 * 1024, total - sent))
                i += 1
                with lock:
                    stdin_hash.update(chunk)
                    stdin_len[0] += len(chunk)
                client.write_channel(STDIN, chunk)
                sent += len(chunk)
        except Exception as e:  # the connection went away under the writer
            failure.append("stdin writer: %s" % e)

    steps = []
    disconnected = False
    connection_error = None
    try:
        for step in args.steps:
            t = time.time()
            ok = None
            if "resize" in step:
                w, h = step["resize"]
                client.write_channel(RESIZE, json.dumps({"Width": w, "Height": h}).encode())
            elif "stdin" in step:
                data = step["stdin"].encode()
                stdin_hash.update(data)
                stdin_len[0] += len(data)
                client.write_channel(STDIN, data)
            elif "stdin_bytes" in step:
                writer = threading.Thread(target=write_bytes, args=(step["stdin_bytes"],), daemon=True)
                writer.start()
            elif step.get("close_stdin"):
                if writer is not None:
                    while writer.is_alive() and client.is_open() and time.time() < deadline:
                        pump(0.05)
                    writer.join(timeout=max(0, deadline - time.time()))
                # v5 only: WSClient ignores this on v4, which has no way to say it.
                client.close_channel(STDIN)
            elif "wait" in step:
                needle = step["wait"].encode()
                ok = until(lambda: needle in out.kept)
            elif "wait_bytes" in step:
                ok = until(lambda: out.len >= step["wait_bytes"])
            elif "sleep" in step:
                end = time.time() + step["sleep"]
                while time.time() < end and client.is_open():
                    pump(min(0.05, max(0, end - time.time())))
            elif "stall" in step:
                time.sleep(step["stall"])
            elif step.get("disconnect"):
                client.sock.shutdown()
                disconnected = True
                break
            else:
                raise ValueError("unknown step %r" % step)
            steps.append({"step": step, "ms": int((time.time() - t) * 1000), "ok": ok})
            if ok is False:
                break
    except (OSError, WebSocketException) as e:
        # crustd ended the connection under a step: what it sent before still counts.
        connection_error = "step: %s" % e
    if not disconnected:
        if writer is not None:
            writer.join(timeout=max(0, deadline - time.time()))
        try:
            if not until(lambda: False) and client.is_open():
                result["failure"] = "timed out after %s s waiting for the connection to close" % args.timeout
        except (OSError, WebSocketException) as e:
            connection_error = connection_error or "reading: %s" % e
        client.close()
    # What the last update buffered after the close frame.
    for channel, sink in ((STDOUT, out), (STDERR, err), (ERROR, errors)):
        sink.add(client.read_channel(channel), time.time())
    error_text = errors.kept.decode("utf-8", "replace")
    result["exit_code"], result["status"] = exit_code_of(error_text)
    result["error_text"] = error_text
    result["stdout"] = out.report(started)
    result["stderr"] = err.report(started)
    result["stdin"] = {"len": stdin_len[0], "sha256": stdin_hash.hexdigest()}
    result["steps"] = steps
    result["disconnected"] = disconnected
    if connection_error:
        failure.append(connection_error)
    if failure:
        result["connection_error"] = "; ".join(failure)
    result["elapsed_ms"] = int((time.time() - started) * 1000)
    return result


def forward_one(index, url, args, report):
    r = {"index": index, "sent": 0, "received": 0}
    report[index] = r
    try:
        websocket = ws_client.create_websocket(
            configuration(), ws_url(url, [("port", str(args.port))]), headers_for(args.protocol)
        )
    except WebSocketBadStatusException as e:
        r["http_status"] = e.status_code
        r["failure"] = "upgrade refused with HTTP %s" % e.status_code
        return
    except OSError as e:
        r["failure"] = "connect: %s" % e
        return
    r["http_status"] = 101
    r["protocol"] = websocket.subprotocol
    forward = ws_client.PortForward(websocket, [args.port])
    sock = forward.socket(args.port)
    sent_hash, got_hash = hashlib.sha256(), hashlib.sha256()
    t0 = time.time()
    # PortForward's proxy thread reads all the application offers into one buffer and then
    # sends that buffer with a blocking send, reading nothing meanwhile. Against an echo server
    # behind a server with bounded buffers (crustd, kubelet) an unbounded lead of the sender
    # deadlocks the two; the sender here stays at most --in-flight bytes ahead of the reader.
    progress = threading.Condition()

    def send():
        i = 0
        try:
            while r["sent"] < args.bytes:
                with progress:
                    progress.wait_for(lambda: r["sent"] - r["received"] <= args.in_flight, timeout=args.timeout)
                chunk = pattern_chunk(index * 1000003 + i, min(256 * 1024, args.bytes - r["sent"]))
                i += 1
                sent_hash.update(chunk)
                sock.sendall(chunk)
                r["sent"] += len(chunk)
        except OSError as e:
            r["send_error"] = str(e)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sock.settimeout(args.timeout)
    try:
        while r["received"] < args.bytes:
            data = sock.recv(1 << 20)
            if not data:
                break
            got_hash.update(data)
            with progress:
                r["received"] += len(data)
                progress.notify()
    except OSError as e:
        r["failure"] = "receive: %s" % e
    sender.join(timeout=5)
    r["ms"] = int((time.time() - t0) * 1000)
    r["sent_sha256"] = sent_hash.hexdigest()
    r["received_sha256"] = got_hash.hexdigest()
    error = forward.error(args.port)
    r["error_text"] = error or ""
    if r["received"] < args.bytes and "failure" not in r:
        r["failure"] = "connection ended after %d of %d bytes" % (r["received"], args.bytes)
    forward.close()


def portforward(args):
    started = time.time()
    report = [None] * len(args.urls)
    threads = [
        threading.Thread(target=forward_one, args=(i, url, args, report), daemon=True)
        for i, url in enumerate(args.urls)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0, started + args.timeout + 10 - time.time()))
    result = {"transport": "websocket", "mode": "portforward", "connections": report}
    result["elapsed_ms"] = int((time.time() - started) * 1000)
    total = sum(r["received"] for r in report if r)
    result["mib_per_s"] = total / (1 << 20) / max(1e-6, time.time() - started)
    if any(t.is_alive() for t in threads):
        result["failure"] = "timed out after %s s" % args.timeout
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["exec", "attach", "portforward"])
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--stdin", action="store_true", help="accepted for the SPDY client's sake")
    parser.add_argument("--tty", action="store_true", help="accepted for the SPDY client's sake")
    parser.add_argument("--no-stdout", action="store_true")
    parser.add_argument("--no-stderr", action="store_true")
    parser.add_argument("--protocol", action="append", default=[])
    parser.add_argument("--steps", type=json.loads, default=[])
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--keep", type=int, default=1 << 20)
    parser.add_argument("--port", type=int)
    parser.add_argument("--bytes", type=int, default=1 << 20)
    parser.add_argument("--in-flight", type=int, default=4 << 20)
    args = parser.parse_args()
    try:
        if args.mode == "portforward":
            if args.port is None:
                parser.error("portforward needs --port")
            result = portforward(args)
        else:
            args.url = args.urls[0]
            result = remotecommand(args)
    except Exception as e:  # printed as a field, so the test shows what the client saw
        import traceback

        result = {"transport": "websocket", "mode": args.mode, "failure": "client error: %s" % e,
                  "trace": traceback.format_exc()}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    # Daemon threads (PortForward's proxy) must not hold the exit.
    os._exit(0)


if __name__ == "__main__":
    main()
