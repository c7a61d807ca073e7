/**
 * Builds the fastify application: one port for HTTP/1.1 and h2c, raw-bytes bodies, stable
 * error codes, metrics per route, and refusal of new requests while shutting down.
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import { KvError } from '@kvstore/protocol/errors'
import type { AppContext } from './context.js'
import { createDualProtocolServer, type DualProtocolServer } from './dual-protocol.js'
import { registerErrorHandling, sendError } from './errors.js'
import { registerBatchRoutes } from './routes/batch.js'
import { registerKvRoutes } from './routes/kv.js'
import { registerSystemRoutes } from './routes/system.js'

/** Largest request header block, in bytes; keys travel in the URL, so it must fit them. */
export const headerBytesMax = 64 * 1024

export function buildApp(ctx: AppContext, logger: Logger): FastifyInstance {
  const { config, metrics, lifecycle } = ctx
  const app: FastifyInstance = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    // No log line per request: at tens of thousands of requests a second it would cost more
    // than the request. Failures are logged by the error handler; traffic is in /metrics.
    logController: new LogController({ disableRequestLogging: true }),
    // Percent-encoded keys can be three times their byte length.
    routerOptions: { maxParamLength: config.keyBytesMax * 3 + 16 },
    bodyLimit: config.requestBodyBytesMax,
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    // The router answers these itself unless told otherwise: keep them in the error catalog.
    frameworkErrors: (error, _request, reply) => {
      const kvError =
        error.code === 'FST_ERR_MAX_PARAM_LENGTH'
          ? new KvError('KV_ERR_KEY_TOO_LARGE', `the key is longer than ${config.keyBytesMax} bytes`, {
              keyBytesMax: config.keyBytesMax,
            })
          : new KvError('KV_ERR_INVALID_ARGUMENT', `malformed URL: ${error.message}`)
      metrics.errors.inc({ code: kvError.code })
      return sendError(reply, kvError)
    },
    serverFactory: (handler) =>
      createDualProtocolServer(handler, {
        requestTimeoutMs: config.requestTimeoutMs,
        keepAliveTimeoutMs: config.keepAliveTimeoutMs,
        connectionsMax: config.connectionsMax,
        h2StreamsMax: config.h2StreamsMax,
        headerBytesMax,
      }),
  })

  // Bodies are raw bytes whatever the Content-Type: a value is stored exactly as sent, and
  // the batch route parses its JSON itself to give precise errors.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => {
    done(null, body)
  })

  registerErrorHandling(app, metrics)

  app.addHook('onRequest', async (request, reply) => {
    if (lifecycle.shuttingDown && !request.url.startsWith('/health')) {
      // Ask HTTP/1.1 clients to reconnect elsewhere; HTTP/2 sessions get GOAWAY on close.
      if (request.raw.httpVersionMajor === 1) void reply.header('connection', 'close')
      return sendError(reply, new KvError('KV_ERR_SHUTTING_DOWN', 'the node is shutting down'))
    }
    return undefined
  })

  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched'
    metrics.httpRequests.inc({ route, method: request.method, status: reply.statusCode })
    metrics.httpDuration.observe({ route, method: request.method }, reply.elapsedTime / 1000)
  })

  app.addHook('preClose', async () => {
    ;(app.server as DualProtocolServer).closeHttp2Sessions()
  })

  registerKvRoutes(app, ctx)
  registerBatchRoutes(app, ctx)
  registerSystemRoutes(app, ctx)
  return app
}
