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
})
