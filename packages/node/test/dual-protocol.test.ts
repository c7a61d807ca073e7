import http2 from 'node:http2'
import { type AddressInfo, connect, type Socket } from 'node:net'
import { createDualProtocolServer } from '../src/http/dual-protocol.js'
// The router's copy of the same server (packages/router/src/server.ts keeps the two in step).
import { createDualProtocolServer as createRouterServer } from '../../router/src/server.js'
import { http2Preface, rapidResetPair } from '@kvstore/testkit'
import { startTestNode } from './helpers.js'

function openSocket(url: string): Promise<Socket> {
  const { hostname, port } = new URL(url)
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => resolve(socket))
    socket.on('error', reject)
  })
}

describe('one port for HTTP/1.1 and h2c', () => {
  it('a client that connects and sends nothing does not hold up shutdown', async () => {
    // The classification timeout is 10 s; shutdown must not wait for it.
    const t = await startTestNode(['--shutdown-timeout-ms', '60000'])
    const idle = await openSocket(t.url)
    const closed = new Promise((resolve) => idle.on('close', resolve))
    await t.stop()
    await closed
  }, 5000)

  /** Sends `bytes` one at a time, returns everything the server answered until it closed. */
  async function trickle(url: string, bytes: Buffer): Promise<string> {
    const socket = await openSocket(url)
    let response = ''
    socket.on('data', (chunk: Buffer) => (response += chunk.toString('latin1')))
    const ended = new Promise((resolve) => socket.on('close', resolve))
    for (const byte of bytes) {
      socket.write(Buffer.of(byte))
      await new Promise((resolve) => setTimeout(resolve, 1))
    }
    await ended
    return response
  }

  it.each([
    ['GET', 'GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', /\{"status":"ok"\}/],
    // PUT and POST start with "P", like the HTTP/2 preface: the sniffer must wait for more.
    [
      'PUT',
      'PUT /v1/kv/t HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi',
      /"version":1/,
    ],
  ])('classifies a %s that arrives one byte at a time', async (_method, request, expected) => {
    const t = await startTestNode()
    try {
      const response = await trickle(t.url, Buffer.from(request))
      expect(response).toMatch(/^HTTP\/1\.1 200 OK/)
      expect(response).toMatch(expected)
    } finally {
      await t.stop()
    }
  })

  it('classifies an HTTP/2 preface that arrives one byte at a time', async () => {
    const t = await startTestNode()
    try {
      const socket = await openSocket(t.url)
      let answered = Buffer.alloc(0)
      socket.on('data', (chunk: Buffer) => (answered = Buffer.concat([answered, chunk])))
      // The client preface, then an empty SETTINGS frame.
      for (const byte of http2Preface()) {
        socket.write(Buffer.of(byte))
        await new Promise((resolve) => setTimeout(resolve, 1))
      }
      await new Promise((resolve) => setTimeout(resolve, 100))
      // The server answers with its own SETTINGS frame (type 4).
      expect(answered.length).toBeGreaterThanOrEqual(9)
      expect(answered[3]).toBe(4)
      socket.destroy()
    } finally {
      await t.stop()
    }
  })

  it('survives a client that resets the connection before sending anything', async () => {
    const t = await startTestNode()
    try {
      const socket = await openSocket(t.url)
      socket.resetAndDestroy()
      const res = await fetch(`${t.url}/health`)
      expect(res.status).toBe(200)
    } finally {
      await t.stop()
    }
  })
})

describe.each([
  ['node', createDualProtocolServer],
  ['router', createRouterServer],
] as const)("HTTP/2 rapid reset on the %s's client port", (_name, createServer) => {
  it('a stream cancelled in the same read as its HEADERS is never routed', async () => {
    const seen: string[] = []
    const refused: string[] = []
    const server = createServer(
      (req, res) => {
        seen.push(req.url ?? '')
        res.end('ok')
      },
      {
        requestTimeoutMs: 5000,
        keepAliveTimeoutMs: 5000,
        connectionsMax: 100,
        h2StreamsMax: 1000,
        headerBytesMax: 16 * 1024,
        tls: null,
        connectionsPerIpMax: 100,
        headersTimeoutMs: 5000,
        tlsHandshakeTimeoutMs: 5000,
        h2ResetsPerSecondMax: 200,
        onRefused: (reason) => refused.push(reason),
      },
    )
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const { port } = server.address() as AddressInfo
    try {
      const socket = await openSocket(`http://127.0.0.1:${port}`)
      socket.on('data', () => {})
      const closed = new Promise((resolve) => socket.on('close', resolve))
      const frames = [http2Preface()]
      // 50 streams opened (HEADERS with END_STREAM and END_HEADERS) and cancelled at once, in
      // one write, as a rapid-reset client does.
      for (let stream = 1; stream <= 99; stream += 2) frames.push(rapidResetPair(stream, 'http'))
      socket.write(Buffer.concat(frames))
      await new Promise((resolve) => setTimeout(resolve, 200))
      socket.destroy()
      await closed
      // A client that does not cancel is served.
      const session = http2.connect(`http://127.0.0.1:${port}`)
      const body = await new Promise<string>((resolve, reject) => {
        const req = session.request({ ':path': '/after' })
        let text = ''
        req.setEncoding('utf8')
        req.on('data', (chunk: string) => (text += chunk))
        req.on('end', () => resolve(text))
        req.on('error', reject)
        req.end()
      })
      session.close()
      expect(body).toBe('ok')
      // Only the request that was not cancelled reached the handler (each cancelled one was
      // routed before, and answered to nobody).
      expect(seen).toEqual(['/after'])
      expect(refused).toEqual([])
    } finally {
      server.closeAllConnections()
      server.destroyHttp2Sessions()
      await new Promise((resolve) => server.close(resolve))
    }
  })
})
