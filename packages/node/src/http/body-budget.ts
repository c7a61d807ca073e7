/**
 * A budget for request bodies in flight, all connections together: a request whose body would
 * pass `inflightBodyBytesMax` is refused with 503 KV_ERR_OVERLOADED and Retry-After before a
 * byte of it is read. Each request takes its Content-Length (or, without one, its route's body
 * limit) from the budget when it arrives and gives it back when its response is done, so many
 * connections sending large bodies at once cannot grow the node without bound.
 *
 * Registered after authentication: a request that is refused as unauthenticated never holds
 * any of the budget.
 */
import type { FastifyInstance, onRequestHookHandler } from 'fastify'
import { KvError } from '@kvstore/protocol/errors'
import { withRouteHook } from './route-hooks.js'
import { stopUnreadBody } from './unread-body.js'

export interface BodyBudget {
  /** Bytes of bodies held now. */
  readonly inflightBytes: number
}

export function registerBodyBudget(
  app: FastifyInstance,
  options: { bytesMax: number; bodyLimitDefault: number; onRefused?: () => void },
): BodyBudget {
  const budget = { inflightBytes: 0 }
  /** The onRequest hook of a route whose body limit is `limit`. */
  const budgeted =
    (limit: number): onRequestHookHandler =>
    (request, reply, done) => {
      const method = request.method
      const length = request.headers['content-length']
      let bytes: number
      if (length !== undefined) {
        const declared = Number(length)
        bytes = Number.isSafeInteger(declared) && declared >= 0 ? Math.min(declared, limit) : limit
      } else {
        bytes = method === 'GET' || method === 'HEAD' || method === 'DELETE' ? 0 : limit
      }
      if (bytes === 0) {
        done()
        return
      }
      if (budget.inflightBytes + bytes > options.bytesMax) {
        options.onRefused?.()
        stopUnreadBody(request, reply)
        void reply.header('retry-after', '1')
        reply.send(
          new KvError(
            'KV_ERR_OVERLOADED',
            `${budget.inflightBytes} bytes of request bodies are in flight; this one (${bytes} bytes) would pass the limit of ${options.bytesMax}`,
            { inflightBodyBytesMax: options.bytesMax },
          ),
        )
        return
      }
      budget.inflightBytes += bytes
      let released = false
      const release = () => {
        if (released) return
        released = true
        budget.inflightBytes -= bytes
      }
      reply.raw.once('finish', release)
      reply.raw.once('close', release)
      done()
    }
  // Each route gets its own hook, its body limit read once; after authentication's, since
  // both are added in the order they were registered.
  app.addHook('onRoute', (route) => {
    route.onRequest = withRouteHook(
      route.onRequest,
      budgeted(route.bodyLimit ?? options.bodyLimitDefault),
    )
  })
  // A request that matches no route has the server's body limit.
  const unmatched = budgeted(options.bodyLimitDefault)
  app.addHook('onRequest', (request, reply, done) => {
    if (request.is404) unmatched.call(app, request, reply, done)
    else done()
  })
  return budget
}
