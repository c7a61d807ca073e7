/**
 * The bare fastify server of the compare suite: the ceiling of Node's HTTP on this machine.
 * One route, `GET /v1/kv/*` answering a fixed `--value-bytes` body (the size of a read of the
 * store), no logger, no storage. It prints `{"port":N}` once it listens on 127.0.0.1 and stops
 * on SIGTERM.
 *
 *   node packages/bench/dist/hello-server.js --value-bytes 100
 *       plain HTTP, no auth: the ceiling of Node's HTTP
 *   node packages/bench/dist/hello-server.js --value-bytes 100 --certs-dir DIR --bearer-token T
 *       the like-for-like ceiling of a store node as shipped: HTTPS with member n1's certificate
 *       from DIR (made by `kv certs init`, as the nodes use it; client certificates asked for
 *       but optional, as a node does), and every request checked for `Authorization: Bearer T`
 *       in an onRequest hook the way a node checks a token it has seen before (header parsed
 *       with the same expression, the token looked up in a map, its expiry checked), answering
 *       401 otherwise.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import Fastify, { type FastifyInstance } from 'fastify'

const { values } = parseArgs({
  options: {
    'value-bytes': { type: 'string', default: '100' },
    'certs-dir': { type: 'string' },
    'bearer-token': { type: 'string' },
  },
})
const body = Buffer.alloc(Number(values['value-bytes']), 'v')
const certsDir = values['certs-dir']
const app: FastifyInstance = (
  certsDir === undefined
    ? Fastify({ logger: false })
    : Fastify({
        logger: false,
        https: {
          cert: readFileSync(join(certsDir, 'n1.crt')),
          key: readFileSync(join(certsDir, 'n1.key')),
          ca: readFileSync(join(certsDir, 'ca.crt')),
          requestCert: true,
          rejectUnauthorized: false,
        },
      })
) as FastifyInstance

const token = values['bearer-token']
if (token !== undefined) {
  // What a node keeps for a token it has verified once: its user and expiry.
  const checked = new Map([[token, { user: 'root', expiresAtMs: Date.now() + 86_400_000 }]])
  const unauthorized = JSON.stringify({
    error: { code: 'KV_ERR_UNAUTHENTICATED', message: 'send "Authorization: Bearer <token>"' },
  })
  app.addHook('onRequest', (request, reply, done) => {
    const header = request.headers.authorization
    const match = header === undefined ? null : /^Bearer\s+(\S+)\s*$/i.exec(header)
    const claims = match === null ? undefined : checked.get(match[1] as string)
    if (claims === undefined || claims.expiresAtMs <= Date.now()) {
      void reply.code(401).type('application/json; charset=utf-8').send(unauthorized)
      return
    }
    done()
  })
}

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
