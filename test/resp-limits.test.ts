/**
 * The RESP front's per-connection and per-node limits on a real node (docs/resp.md, Limits):
 * the connection cap, a command over respCommandBytesMax or respArgsMax, NOAUTH before a
 * credential, and back-pressure at respPendingRepliesMax that loses no reply.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import tls from 'node:tls'
import { startNodeProcess, terminate, type NodeProcess } from '@kvstore/testkit'
import { caPem, rootConnect } from './support/certs.js'
import { freePorts } from './support/ports.js'

interface Conn {
  socket: tls.TLSSocket
  received: () => string
  closed: () => boolean
}

function connect(port: number, asRoot: boolean): Promise<Conn> {
  return new Promise((resolve, reject) => {
    const options = asRoot ? rootConnect() : { ca: caPem() }
    const socket = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ...options })
    let text = ''
    let closed = false
    socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')))
    socket.on('close', () => (closed = true))
    socket.on('error', () => {})
    socket.once('secureConnect', () =>
      resolve({ socket, received: () => text, closed: () => closed }),
    )
    socket.once('error', reject)
  })
}

async function until(
  check: () => boolean,
  what: string,
  timeoutMs = 10_000,
  detail?: () => string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}${detail ? `: ${detail()}` : ''}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

describe('RESP limits on a node', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kv-resp-limits-'))
  let node: NodeProcess
  let port = 0
  beforeAll(async () => {
    port = await freePorts(1)
    node = await startNodeProcess([
      '--data-dir',
      dir,
      '--resp-port',
      String(port),
      '--resp-connections-max',
      '3',
      '--resp-command-bytes-max',
      '4096',
      '--resp-args-max',
      '4',
      '--resp-pending-replies-max',
      '4',
      '--resp-pending-bytes-max',
      '65536',
      '--resp-auth-timeout-ms',
      '1500',
    ])
  }, 30_000)
  afterAll(async () => {
    await terminate(node)
    rmSync(dir, { recursive: true, force: true })
  })

  it('asks for a credential first; a client certificate naming root is one', async () => {
    const anonymous = await connect(port, false)
    anonymous.socket.write('*2\r\n$3\r\nGET\r\n$1\r\na\r\n*1\r\n$4\r\nPING\r\n')
    await until(() => anonymous.received().includes('+PONG'), 'PING after NOAUTH')
    expect(anonymous.received()).toBe('-NOAUTH Authentication required.\r\n+PONG\r\n')
    anonymous.socket.destroy()
    const root = await connect(port, true)
    root.socket.write('*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\n')
    await until(
      () => root.received().includes('$1\r\n1\r\n'),
      'SET and GET',
      10_000,
      () => JSON.stringify(root.received()),
    )
    expect(root.received()).toBe('+OK\r\n$1\r\n1\r\n')
    // A pipeline's commands see each other in order: SET, GET, SET, GET of one key.
    root.socket.write(
      '*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n1\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n' +
        '*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n2\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n' +
        '*2\r\n$4\r\nINCR\r\n$1\r\nb\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n',
    )
    const after = '+OK\r\n$1\r\n1\r\n'
    const expected = `${after}+OK\r\n$1\r\n1\r\n+OK\r\n$1\r\n2\r\n:3\r\n$1\r\n3\r\n`
    await until(
      () => root.received().length >= expected.length,
      'the pipeline',
      10_000,
      () => JSON.stringify(root.received()),
    )
    expect(root.received()).toBe(expected)
    root.socket.destroy()
  })

  it('keeps every reply, in order, past respPendingRepliesMax (back-pressure)', async () => {
    const root = await connect(port, true)
    let wire = ''
    for (let i = 0; i < 300; i++)
      wire += `*3\r\n$3\r\nSET\r\n$${`p${i}`.length}\r\np${i}\r\n$${String(i).length}\r\n${i}\r\n`
    for (let i = 0; i < 300; i++) wire += `*2\r\n$3\r\nGET\r\n$${`p${i}`.length}\r\np${i}\r\n`
    root.socket.write(wire)
    const expected =
      '+OK\r\n'.repeat(300) +
      Array.from({ length: 300 }, (_, i) => `$${String(i).length}\r\n${i}\r\n`).join('')
    await until(() => root.received().length >= expected.length, 'all 600 replies', 60_000)
    expect(root.received()).toBe(expected)
    root.socket.destroy()
  }, 90_000)

  it('closes a connection whose command is over respCommandBytesMax or respArgsMax', async () => {
    const big = await connect(port, true)
    big.socket.write('*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5000\r\n')
    await until(() => big.closed(), 'the connection to close')
    expect(big.received()).toMatch(
      /^-KV_ERR_RESP_PROTOCOL Protocol error: invalid bulk length 5000; at most 4096/,
    )
    const many = await connect(port, true)
    many.socket.write('*5\r\n$3\r\nDEL\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n$1\r\nd\r\n')
    await until(() => many.closed(), 'the connection to close')
    expect(many.received()).toMatch(
      /^-KV_ERR_RESP_PROTOCOL Protocol error: a command has 5 arguments; at most 4/,
    )
  })

  it('refuses connections past respConnectionsMax with a coded error', async () => {
    const open = [await connect(port, true), await connect(port, true), await connect(port, true)]
    for (const c of open) c.socket.write('*1\r\n$4\r\nPING\r\n')
    await until(
      () => open.every((c) => c.received() === '+PONG\r\n'),
      'three connections answer',
      10_000,
      () => JSON.stringify(open.map((c) => c.received())),
    )
    const refused = await connect(port, true)
    await until(() => refused.closed(), 'the fourth connection to close')
    expect(refused.received()).toMatch(/^-KV_ERR_RESP_CONNECTIONS_TOO_MANY /)
    for (const c of open) c.socket.destroy()
  })

  it('closes a connection that has not authenticated after respAuthTimeoutMs, not one that has', async () => {
    const anonymous = await connect(port, false)
    const root = await connect(port, true)
    await until(() => anonymous.closed(), 'the anonymous connection to close', 10_000)
    expect(anonymous.received()).toMatch(
      /^-NOAUTH Authentication required within 1500 ms of connecting \(respAuthTimeoutMs\)/,
    )
    root.socket.write('*1\r\n$4\r\nPING\r\n')
    await until(() => root.received() === '+PONG\r\n', 'the certificate user still answered')
    expect(root.closed()).toBe(false)
    root.socket.destroy()
  })

  it('keeps every reply, in order, past respPendingBytesMax (back-pressure on bytes)', async () => {
    const root = await connect(port, true)
    // 60 SETs of 3,000-byte values: about 180 KB in flight at once, past the 64 KiB limit.
    const value = (i: number) => String(i % 10).repeat(3000)
    let wire = ''
    for (let i = 0; i < 60; i++)
      wire += `*3\r\n$3\r\nSET\r\n$${`q${i}`.length}\r\nq${i}\r\n$3000\r\n${value(i)}\r\n`
    wire += '*2\r\n$3\r\nGET\r\n$3\r\nq59\r\n'
    root.socket.write(wire)
    const expected = '+OK\r\n'.repeat(60) + `$3000\r\n${value(59)}\r\n`
    await until(() => root.received().length >= expected.length, 'all 61 replies', 60_000)
    expect(root.received()).toBe(expected)
    root.socket.destroy()
  }, 90_000)

  it('counts commands and the connections each limit closed on /metrics', async () => {
    const text = await (await fetch(`${node.url}/metrics`)).text()
    const value = (series: string): number => {
      const line = text.split('\n').find((l) => l.startsWith(`${series} `))
      if (line === undefined) throw new Error(`no ${series} in /metrics`)
      return Number(line.split(' ')[1])
    }
    expect(value('kv_resp_commands_total{result="ok"}')).toBeGreaterThan(600)
    expect(value('kv_resp_commands_total{result="error"}')).toBeGreaterThanOrEqual(1)
    expect(value('kv_resp_connections_closed_total{reason="protocol"}')).toBeGreaterThanOrEqual(2)
    expect(value('kv_resp_connections_closed_total{reason="connections"}')).toBeGreaterThanOrEqual(
      1,
    )
    expect(value('kv_resp_connections_closed_total{reason="auth_timeout"}')).toBeGreaterThanOrEqual(
      1,
    )
    expect(value('kv_resp_connections')).toBeGreaterThanOrEqual(0)
  })
})
