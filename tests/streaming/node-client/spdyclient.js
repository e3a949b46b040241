#!/usr/bin/env node
// A SPDY/3.1 client of crustd's streaming server built on npm's `spdy-transport`, as kubectl
// talks to kubelet: an HTTP/1.1 request upgraded to `SPDY/3.1`, then one SPDY stream per
// `streamtype` (remotecommand) or an error and a data stream per `requestid` (port-forward).
// The tests run it as a subprocess; it prints one JSON object on stdout and exits 0 whenever
// it could print one (failures are fields of that object).
//
//   spdyclient.js exec|attach URL [--tty] [--stdin] [--no-stdout] [--no-stderr]
//                 [--protocol P]... [--steps JSON] [--timeout S] [--keep BYTES] [--method M]
//   spdyclient.js portforward URL --port N [--connections K] [--bytes B] [--timeout S]
//   spdyclient.js exec-loop [--protocol P]...   (URLs on stdin, one JSON line per URL)
//
// --steps is a JSON array run in order once the streams are open:
//   {"resize":[W,H]}  {"stdin":"text"}  {"stdin_bytes":N}  {"close_stdin":true}
//   {"wait":"text"}   (stdout contains it)   {"wait_bytes":N}   {"sleep":S} (still reading)
//   {"stall":S} (stop reading for S seconds)   {"disconnect":true} (drop the connection now)
'use strict'

const crypto = require('crypto')
const http = require('http')
const readline = require('readline')
const transport = require('spdy-transport')

const REMOTECOMMAND = ['v4.channel.k8s.io', 'v3.channel.k8s.io', 'v2.channel.k8s.io', 'channel.k8s.io']
const PORTFORWARD = ['portforward.k8s.io']

function parseArgs (argv) {
  const opts = {
    mode: argv[0],
    url: null,
    tty: false,
    stdin: false,
    stdout: true,
    stderr: true,
    protocols: [],
    steps: [],
    timeout: 60,
    keep: 1 << 20,
    method: 'POST',
    port: null,
    connections: 1,
    bytes: 1 << 20,
    chunk: 32 * 1024,
    window: 1 << 20
  }
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i]
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`)
      return argv[++i]
    }
    switch (a) {
      case '--tty': opts.tty = true; break
      case '--stdin': opts.stdin = true; break
      case '--no-stdout': opts.stdout = false; break
      case '--no-stderr': opts.stderr = false; break
      case '--protocol': opts.protocols.push(next()); break
      case '--steps': opts.steps = JSON.parse(next()); break
      case '--timeout': opts.timeout = Number(next()); break
      case '--keep': opts.keep = Number(next()); break
      case '--method': opts.method = next(); break
      case '--port': opts.port = Number(next()); break
      case '--connections': opts.connections = Number(next()); break
      case '--bytes': opts.bytes = Number(next()); break
      case '--chunk': opts.chunk = Number(next()); break
      case '--window': opts.window = Number(next()); break
      default:
        if (a.startsWith('--')) throw new Error(`unknown option ${a}`)
        opts.url = a
    }
  }
  return opts
}

// A byte sink that keeps the first `keep` bytes, the length and a running sha256.
class Sink {
  constructor (keep) {
    this.keep = keep
    this.kept = []
    this.keptLen = 0
    this.len = 0
    this.hash = crypto.createHash('sha256')
    this.text = ''
    this.firstAt = null
  }

  add (chunk, now) {
    if (this.firstAt === null) this.firstAt = now
    this.len += chunk.length
    this.hash.update(chunk)
    if (this.keptLen < this.keep) {
      const part = chunk.subarray(0, this.keep - this.keptLen)
      this.kept.push(part)
      this.keptLen += part.length
      this.text += part.toString('latin1')
    }
  }

  report (started) {
    return {
      len: this.len,
      sha256: this.hash.copy().digest('hex'),
      text: Buffer.concat(this.kept).toString('utf8'),
      truncated: this.len > this.keptLen,
      first_ms: this.firstAt === null ? null : this.firstAt - started
    }
  }
}

// Upgrades `url` to SPDY/3.1 offering `protocols`; resolves with the socket or the HTTP answer.
function upgrade (url, protocols, method) {
  return new Promise((resolve) => {
    const req = http.request(url, {
      method,
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'SPDY/3.1',
        'X-Stream-Protocol-Version': protocols
      }
    })
    req.on('upgrade', (res, socket, head) => {
      if (head && head.length) socket.unshift(head)
      resolve({ status: res.statusCode, headers: res.headers, socket })
    })
    req.on('response', (res) => {
      const body = []
      res.on('data', (d) => body.push(d))
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(body).toString('utf8') }))
      res.on('error', (e) => resolve({ status: res.statusCode, headers: res.headers, error: String(e) }))
    })
    req.on('error', (e) => resolve({ status: null, error: String(e) }))
    req.end()
  })
}

function connect (socket, opts) {
  const conn = transport.connection.create(socket, {
    protocol: 'spdy',
    isServer: false,
    windowSize: opts.window,
    maxChunk: opts.chunk
  })
  conn.start(3.1)
  return conn
}

// Opens a stream with `headers`, as spdystream (kubectl) does: SYN_STREAM with no FIN. Resolves
// once the SYN_STREAM is on its way: spdy-transport sends a stream's SYN_STREAM on its first
// write otherwise, and a later stream written first would go out with a higher id ahead of
// earlier ones, which SPDY forbids.
function openStream (conn, headers) {
  return new Promise((resolve, reject) => {
    const stream = conn.request({ method: 'POST', path: '/', headers }, (err) => {
      if (err) reject(err)
      else resolve(stream)
    })
    // kubelet's SPDY server (and so crustd) replies to a SYN_STREAM with a SYN_REPLY carrying
    // no `:status`; spdy-transport would reset the stream for that, so the reply is taken as
    // plain headers instead.
    stream._spdyState.needResponse = false
  })
}

function exitCodeOf (errorText, protocol) {
  if (!errorText) return { exit_code: 0, status: null }
  if (protocol === 'v4.channel.k8s.io') {
    let status
    try { status = JSON.parse(errorText) } catch (e) { return { exit_code: null, status: null } }
    if (status.status === 'Success') return { exit_code: 0, status }
    const causes = (status.details && status.details.causes) || []
    const cause = causes.find((c) => c.reason === 'ExitCode')
    if (status.reason === 'NonZeroExitCode' && cause) return { exit_code: Number(cause.message), status }
    return { exit_code: null, status }
  }
  return { exit_code: null, status: null }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// Bytes to send: random, so that a lost, repeated or reordered chunk changes the digest the
// receiving side computes. The index only tells chunks apart in a debugger.
function patternChunk (_index, size) {
  return crypto.randomBytes(size)
}

async function remotecommand (opts) {
  const started = Date.now()
  const protocols = opts.protocols.length ? opts.protocols : REMOTECOMMAND
  const result = { transport: 'spdy', mode: opts.mode, offered: protocols }
  const up = await upgrade(opts.url, protocols, opts.method)
  result.http_status = up.status
  if (up.status !== 101) {
    result.body = up.body
    result.failure = up.error || `upgrade refused with HTTP ${up.status}`
    return result
  }
  result.protocol = up.headers['x-stream-protocol-version'] || null
  const conn = connect(up.socket, opts)
  const out = new Sink(opts.keep)
  const err = new Sink(opts.keep)
  const errorSink = new Sink(1 << 20)
  const stdinSent = crypto.createHash('sha256')
  let stdinLen = 0
  let connError = null
  let closed = false
  conn.on('error', (e) => { connError = connError || String(e) })
  up.socket.setMaxListeners(0)
  up.socket.on('close', () => { closed = true })

  const streams = {}
  const ended = {}
  const waiters = []
  const wake = () => { for (const w of waiters.splice(0)) w() }
  const changed = () => new Promise((resolve) => waiters.push(resolve))
  const open = async (type, sink) => {
    const s = await openStream(conn, { streamtype: type })
    streams[type] = s
    s.on('error', (e) => { connError = connError || `${type}: ${e}` })
    if (sink) {
      ended[type] = false
      s.on('data', (d) => { sink.add(d, Date.now()); wake() })
      s.on('end', () => { ended[type] = true; wake() })
    }
    return s
  }
  // In kubectl's order, each after the one before.
  await open('error', errorSink)
  if (opts.stdin) await open('stdin')
  if (opts.stdout) await open('stdout', out)
  if (opts.stderr && !opts.tty) await open('stderr', err)
  if (opts.tty) await open('resize')
  up.socket.on('close', wake)

  const deadline = started + opts.timeout * 1000
  const until = async (pred) => {
    while (!pred()) {
      if (closed || Date.now() > deadline) return false
      await Promise.race([changed(), sleep(50)])
    }
    return true
  }
  const allEnded = () => Object.values(ended).every(Boolean)
  let disconnected = false
  const stepTimes = []
  let writer = Promise.resolve()

  for (const step of opts.steps) {
    const t = Date.now()
    if (step.resize) {
      if (!streams.resize) throw new Error('resize needs --tty')
      streams.resize.write(JSON.stringify({ Width: step.resize[0], Height: step.resize[1] }))
    } else if (step.stdin !== undefined) {
      const b = Buffer.from(step.stdin, 'utf8')
      stdinSent.update(b); stdinLen += b.length
      streams.stdin.write(b)
    } else if (step.stdin_bytes !== undefined) {
      const total = step.stdin_bytes
      const s = streams.stdin
      writer = writer.then(async () => {
        let sent = 0
        let i = 0
        while (sent < total && !closed) {
          const chunk = patternChunk(i++, Math.min(64 * 1024, total - sent))
          stdinSent.update(chunk); stdinLen += chunk.length; sent += chunk.length
          if (!s.write(chunk)) await new Promise((resolve) => { s.once('drain', resolve); up.socket.once('close', resolve) })
        }
      })
    } else if (step.close_stdin) {
      await writer
      streams.stdin.end()
    } else if (step.wait !== undefined) {
      step.ok = await until(() => out.text.includes(step.wait))
    } else if (step.wait_bytes !== undefined) {
      step.ok = await until(() => out.len >= step.wait_bytes)
    } else if (step.sleep !== undefined) {
      await sleep(step.sleep * 1000)
    } else if (step.stall !== undefined) {
      for (const s of Object.values(streams)) s.pause()
      await sleep(step.stall * 1000)
      for (const s of Object.values(streams)) s.resume()
    } else if (step.disconnect) {
      up.socket.destroy()
      disconnected = true
      break
    } else {
      throw new Error(`unknown step ${JSON.stringify(step)}`)
    }
    stepTimes.push({ step, ms: Date.now() - t, ok: step.ok })
    if (step.ok === false) break
  }
  if (!disconnected) {
    await writer
    const done = await until(allEnded)
    if (!done && !closed) result.failure = `timed out after ${opts.timeout} s waiting for the streams to end`
    up.socket.destroy()
  }
  const errorText = errorSink.report(started).text
  Object.assign(result, exitCodeOf(errorText, result.protocol))
  result.error_text = errorText
  result.stdout = out.report(started)
  result.stderr = err.report(started)
  result.stdin = { len: stdinLen, sha256: stdinSent.digest('hex') }
  result.steps = stepTimes
  result.disconnected = disconnected
  result.connection_error = connError
  result.elapsed_ms = Date.now() - started
  return result
}

async function portforward (opts) {
  const started = Date.now()
  const protocols = opts.protocols.length ? opts.protocols : PORTFORWARD
  const result = { transport: 'spdy', mode: 'portforward', offered: protocols }
  const up = await upgrade(opts.url, protocols, opts.method)
  result.http_status = up.status
  if (up.status !== 101) {
    result.body = up.body
    result.failure = up.error || `upgrade refused with HTTP ${up.status}`
    return result
  }
  result.protocol = up.headers['x-stream-protocol-version'] || null
  const conn = connect(up.socket, opts)
  let connError = null
  conn.on('error', (e) => { connError = connError || String(e) })
  let closed = false
  up.socket.setMaxListeners(0)
  up.socket.on('close', () => { closed = true })

  const openPair = async (requestId) => {
    const headers = { port: String(opts.port), requestid: String(requestId) }
    const errorStream = await openStream(conn, Object.assign({ streamtype: 'error' }, headers))
    // As kubectl: nothing is ever written on the error stream.
    errorStream.end()
    const data = await openStream(conn, Object.assign({ streamtype: 'data' }, headers))
    return [errorStream, data]
  }
  const transfer = (requestId, errorStream, data) => new Promise((resolve) => {
    const r = { requestid: requestId, sent: 0, received: 0, error_text: '' }
    const sentHash = crypto.createHash('sha256')
    const gotHash = crypto.createHash('sha256')
    let t0 = null
    let finished = false
    const finish = (why) => {
      if (finished) return
      finished = true
      r.sent_sha256 = sentHash.digest('hex')
      r.received_sha256 = gotHash.digest('hex')
      r.ms = t0 === null ? null : Date.now() - t0
      if (why) r.failure = why
      data.end()
      resolve(r)
    }
    errorStream.on('data', (d) => { r.error_text += d.toString('utf8') })
    errorStream.on('error', () => {})
    errorStream.on('end', () => { if (r.error_text) setTimeout(() => finish('error stream: ' + r.error_text), 100) })
    data.on('error', (e) => finish(String(e)))
    data.on('data', (d) => {
      gotHash.update(d)
      r.received += d.length
      if (r.received >= opts.bytes) finish()
    })
    data.on('end', () => finish(r.received >= opts.bytes ? null : 'data stream ended early'))
    const send = async () => {
      t0 = Date.now()
      let i = 0
      while (r.sent < opts.bytes && !finished && !closed) {
        const chunk = patternChunk(requestId * 1000003 + i++, Math.min(64 * 1024, opts.bytes - r.sent))
        sentHash.update(chunk)
        r.sent += chunk.length
        if (!data.write(chunk)) await new Promise((resolve) => { data.once('drain', resolve); up.socket.once('close', resolve) })
      }
    }
    send()
    if (opts.bytes === 0) setTimeout(() => finish(), 500)
  })

  const timer = setTimeout(() => { result.failure = `timed out after ${opts.timeout} s`; up.socket.destroy() }, opts.timeout * 1000)
  // Stream pairs opened one after the other (ids rising); each transfer starts once its
  // pair is open, so they all run at once.
  const runs = []
  for (let i = 0; i < opts.connections && !closed; i++) {
    const [errorStream, data] = await openPair(i)
    runs.push(transfer(i, errorStream, data))
  }
  const results = await Promise.race([
    Promise.all(runs),
    new Promise((resolve) => up.socket.on('close', () => setTimeout(() => resolve(null), 200)))
  ])
  clearTimeout(timer)
  result.elapsed_ms = Date.now() - started
  result.connections = results || []
  if (!results) result.failure = result.failure || 'connection closed before every transfer finished'
  result.connection_error = connError
  const total = (results || []).reduce((a, r) => a + r.received, 0)
  result.mib_per_s = total / (1 << 20) / (result.elapsed_ms / 1000)
  up.socket.destroy()
  return result
}

// URLs on stdin, one exec each (streams error+stdout+stderr), one JSON line each: for the
// benchmark's round-trip latency without a process start per exec.
async function execLoop (opts) {
  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    if (!line.trim()) continue
    const t = process.hrtime.bigint()
    const r = await remotecommand(Object.assign({}, opts, { url: line.trim(), mode: 'exec', steps: [] }))
    r.round_trip_us = Number((process.hrtime.bigint() - t) / 1000n)
    process.stdout.write(JSON.stringify(r) + '\n')
  }
}

async function main () {
  let opts
  try {
    opts = parseArgs(process.argv.slice(2))
  } catch (e) {
    process.stderr.write(`spdyclient: ${e.message}\n`)
    process.exit(2)
  }
  let result
  if (opts.mode === 'exec-loop') {
    await execLoop(opts)
    return
  }
  if (!opts.url) {
    process.stderr.write('spdyclient: a URL is needed\n')
    process.exit(2)
  }
  try {
    if (opts.mode === 'exec' || opts.mode === 'attach') {
      result = await remotecommand(opts)
    } else if (opts.mode === 'portforward') {
      if (!opts.port) throw new Error('portforward needs --port')
      result = await portforward(opts)
    } else {
      process.stderr.write(`spdyclient: unknown mode ${opts.mode}\n`)
      process.exit(2)
    }
  } catch (e) {
    result = { transport: 'spdy', mode: opts.mode, failure: `client error: ${e && e.stack ? e.stack : e}` }
  }
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0))
}

main()
