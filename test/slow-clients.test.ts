/**
 * Clients that misbehave at the protocol level must not hurt anyone else. These run against a
 * real node process so that a hang fails the test (through timeouts) instead of stalling it:
 * over TLS, as shipped, and in plaintext on loopback (where the first bytes pick HTTP/1.1 or
 * h2c).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { connect, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect as tlsConnect } from 'node:tls'
import { type NodeProcess, startNodeProcess } from '@kvstore/testkit'
import { caPem } from './support/certs.js'

describe.each([
  ['over TLS', true],
  ['in plaintext on loopback', false],
] as const)('a node %s', (_name, tls) => {
  let dir: string
  let node: NodeProcess

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kv-slow-'))
    node = await startNodeProcess(
      ['--data-dir', join(dir, 'data'), '--tls-handshake-timeout-ms', '1000'],
      15_000,
      { tls },
    )
  })
  afterAll(async () => {
    process.kill(node.pid, 'SIGTERM')
    await node.exited
    await rm(dir, { recursive: true, force: true })
  })

  /** A raw TCP socket (its bytes go unencrypted, whatever the port speaks). */
  function openSocket(): Promise<Socket> {
    const { hostname, port } = new URL(node.url)
    return new Promise((resolve, reject) => {
      const socket = connect(Number(port), hostname, () => resolve(socket))
      socket.on('error', reject)
    })
  }

  /** A socket that speaks HTTP/1.1 as the port expects it: over TLS when the node serves it. */
  function openHttp1(): Promise<Socket> {
    if (!tls) return openSocket()
    const { hostname, port } = new URL(node.url)
    return new Promise((resolve, reject) => {
      const socket = tlsConnect(
        { host: hostname, port: Number(port), ca: caPem(), ALPNProtocols: ['http/1.1'] },
        () => resolve(socket),
      )
      socket.on('error', reject)
    })
  }

  async function healthy(): Promise<void> {
    for (let i = 0; i < 20; i++) {
      const res = await fetch(`${node.url}/health`, { signal: AbortSignal.timeout(2000) })
      expect(res.status).toBe(200)
    }
  }

  it('a client that sends only "P" (maybe HTTP/2, maybe PUT) and waits leaves the node serving', async () => {
    const stalled = await openSocket()
    stalled.write('P')
    const stalled2 = await openSocket()
    stalled2.write('PR')
    await healthy()
    stalled.destroy()
    stalled2.destroy()
  })

  it('a client that sends "PR" and closes is dropped', async () => {
    const socket = await openSocket()
    const closed = new Promise((resolve) => socket.on('close', resolve))
    socket.end('PR')
    await closed
    await healthy()
  })

  it('malformed HTTP gets an error from the catalog', async () => {
    const socket = await openHttp1()
    let answer = ''
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString()))
    const closed = new Promise((resolve) => socket.on('close', resolve))
    socket.write('GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n')
    await closed
    expect(answer).toMatch(/^HTTP\/1\.1 400 /)
    expect(answer).toMatch(/"code":"KV_ERR_BAD_REQUEST"/)
    await healthy()
  })

  it('a client that connects and never speaks is closed, and the node keeps serving', async () => {
    const socket = await openSocket()
    const closed = new Promise((resolve) => socket.on('close', resolve))
    socket.on('error', () => {})
    await healthy()
    // TLS: the handshake timeout (1 s here); plaintext: the headers timeout (10 s by default).
    await closed
  }, 20_000)
})
