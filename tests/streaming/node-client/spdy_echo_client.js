// An independent SPDY/3.1 client for crustd's SPDY session test (manager/src/streaming/spdy):
// node's spdy-transport, which does flow control, over a plain TCP connection to the echo
// server the Rust test starts. It opens several streams with headers, sends each a known
// pattern (one stream over 1 MiB, beyond every 64 KiB window), half-closes, and checks that
// the server echoes every byte back and then ends the stream.
//
// usage: node spdy_echo_client.js <port>; exit 0 when every stream came back whole.
'use strict'

const net = require('net')
const transport = require('spdy-transport')

const port = Number(process.argv[2])
const sizes = [0, 1, 70000, 1536 * 1024, 300000]

function pattern (index, size) {
  const data = Buffer.alloc(size)
  for (let i = 0; i < size; i++) data[i] = (i * 7 + index * 13) & 0xff
  return data
}

function fail (message) {
  console.error('spdy_echo_client: ' + message)
  process.exit(1)
}

setTimeout(() => fail('timed out'), 60000).unref()

const socket = net.connect(port, '127.0.0.1', () => {
  const connection = transport.connection.create(socket, {
    protocol: 'spdy',
    isServer: false,
    // A small receive window: the server must honour it and wait for our WINDOW_UPDATEs.
    windowSize: 65536
  })
  connection.start(3.1)
  connection.on('error', (err) => fail('connection: ' + err.message))

  let pending = sizes.length
  let sent = 0
  let received = 0
  sizes.forEach((size, index) => {
    const data = pattern(index, size)
    connection.request({
      method: 'POST',
      path: '/echo',
      host: 'localhost',
      headers: { streamtype: 'echo-' + index, 'X-Size': String(size) }
    }, (err, stream) => {
      if (err) fail('request ' + index + ': ' + err.message)
      const chunks = []
      stream.on('response', (status) => {
        if (status !== 200) fail('stream ' + index + ': status ' + status)
      })
      stream.on('data', (chunk) => chunks.push(chunk))
      stream.on('error', (e) => fail('stream ' + index + ': ' + e.message))
      stream.on('end', () => {
        const echoed = Buffer.concat(chunks)
        if (!echoed.equals(data)) {
          fail('stream ' + index + ': echoed ' + echoed.length + ' bytes, sent ' + size)
        }
        received += echoed.length
        if (--pending === 0) {
          console.log(JSON.stringify({ streams: sizes.length, sent, received }))
          connection.end(() => socket.destroy())
          process.exit(0)
        }
      })
      sent += size
      stream.end(data)
    })
  })
})
socket.on('error', (err) => fail('socket: ' + err.message))
