/**
 * Clients that misbehave at the protocol level must not hurt anyone else. These run against a
 * real node process so that a hang fails the test (through timeouts) instead of stalling it.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { connect, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startNodeProcess, type NodeProcess } from './support/node-process.js'

let dir: string
let node: NodeProcess

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kv-slow-'))
  node = await startNodeProcess(['--data-dir', join(dir, 'data')])
})
afterAll(async () => {
  process.kill(node.pid, 'SIGTERM')
  await node.exited
  await rm(dir, { recursive: true, force: true })
})

function openSocket(): Promise<Socket> {
  const { hostname, port } = new URL(node.url)
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => resolve(socket))
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
  const socket = await openSocket()
  let answer = ''
  socket.on('data', (chunk: Buffer) => (answer += chunk.toString()))
  const closed = new Promise((resolve) => socket.on('close', resolve))
  socket.write('GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n')
  await closed
  expect(answer).toMatch(/^HTTP\/1\.1 400 /)
  expect(answer).toMatch(/"code":"KV_ERR_BAD_REQUEST"/)
  await healthy()
})
