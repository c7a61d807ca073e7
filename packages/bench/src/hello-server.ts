/**
 * The bare fastify server of the compare suite: the ceiling of Node's HTTP on this machine.
 * Plain HTTP on 127.0.0.1, one route, `GET /v1/kv/*` answering a fixed `--value-bytes` body
 * (the size of a read of the store), no logger, no storage, no auth. It prints
 * `{"port":N}` once it listens and stops on SIGTERM.
 *
 *   node packages/bench/dist/hello-server.js --value-bytes 100
 */
import { parseArgs } from 'node:util'
import Fastify from 'fastify'

const { values } = parseArgs({ options: { 'value-bytes': { type: 'string', default: '100' } } })
const body = Buffer.alloc(Number(values['value-bytes']), 'v')
const app = Fastify({ logger: false })
app.get('/v1/kv/*', (_request, reply) => {
  void reply.type('application/octet-stream').send(body)
})
await app.listen({ host: '127.0.0.1', port: 0 })
const address = app.server.address()
process.stdout.write(
  `${JSON.stringify({ port: typeof address === 'object' && address !== null ? address.port : 0 })}\n`,
)
process.once('SIGTERM', () => {
  void app.close().then(() => process.exit(0))
})
