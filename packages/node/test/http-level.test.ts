/**
 * Errors raised by Node's HTTP parser, below fastify, still answer with the error catalog.
 * These go through real sockets, since fastify.inject skips the parser.
 */
import { connect } from 'node:net'
import { errorOf, startTestNode, type TestNode } from './helpers.js'

let t: TestNode
beforeAll(async () => {
  t = await startTestNode(['--request-timeout-ms', '1000'])
})
afterAll(async () => {
  await t.stop()
})

/** Writes raw bytes, returns the raw answer once the server closes or `waitMs` passes. */
function raw(bytes: string | Buffer, waitMs = 3000): Promise<string> {
  const { hostname, port } = new URL(t.url)
  return new Promise((resolve, reject) => {
    let answer = ''
    const socket = connect(Number(port), hostname, () => socket.write(bytes))
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')))
    socket.on('error', reject)
    socket.on('close', () => resolve(answer))
    setTimeout(() => {
      socket.destroy()
      resolve(answer)
    }, waitMs)
  })
}

function parse(answer: string): { status: number; body: string } {
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1])
  return { status, body: answer.slice(answer.indexOf('\r\n\r\n') + 4) }
}

it.each([
  ['a malformed request line', 'GET\r\n\r\n', 400, 'KV_ERR_BAD_REQUEST'],
  [
    'a non-numeric Content-Length',
    'PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n',
    400,
    'KV_ERR_BAD_REQUEST',
  ],
  [
    'Content-Length with Transfer-Encoding',
    'PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n',
    400,
    'KV_ERR_BAD_REQUEST',
  ],
  [
    'headers over 64 KiB',
    `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(70_000)}\r\n\r\n`,
    431,
    'KV_ERR_HEADERS_TOO_LARGE',
  ],
  [
    'an unsupported Expect',
    'PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nExpect: coffee\r\nContent-Length: 1\r\n\r\nx',
    417,
    'KV_ERR_EXPECTATION_FAILED',
  ],
])('%s -> %i %s', async (_name, request, status, code) => {
  const before = t.node.store.appliedLsn
  const answer = parse(await raw(request))
  expect(answer.status).toBe(status)
  expect(errorOf(answer.body).code).toBe(code)
  expect(t.node.store.appliedLsn).toBe(before)
})

it('a request that never finishes arriving times out with KV_ERR_REQUEST_TIMEOUT', async () => {
  const answer = parse(
    await raw('PUT /v1/kv/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc', 5000),
  )
  expect(answer.status).toBe(408)
  expect(errorOf(answer.body).code).toBe('KV_ERR_REQUEST_TIMEOUT')
})

it('Expect: 100-continue works as usual', async () => {
  const answer = await raw(
    'PUT /v1/kv/cont HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi',
  )
  expect(answer).toMatch(/^HTTP\/1\.1 100 Continue/)
  expect(answer).toMatch(/HTTP\/1\.1 200 OK/)
})
