/**
 * Builds the fastify application: one port for HTTP/1.1 and h2c, raw-bytes bodies, stable
 * error codes, metrics per route, and refusal of new requests while shutting down.
 */
import Fastify, {
  LogController,
  type FastifyBaseLogger,
  type FastifyInstance,
  type onResponseHookHandler,
} from 'fastify'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Logger } from 'pino'
import { KvError } from '@kvstore/protocol/errors'
import type { AppContext } from './context.js'
import { createDualProtocolServer, type DualProtocolServer } from './dual-protocol.js'
import { clientErrorHandler, registerErrorHandling, sendError } from './errors.js'
import { registerBatchRoutes } from './routes/batch.js'
import { registerLeaseRoutes } from '../leases/routes.js'
import { registerKvRoutes } from './routes/kv.js'
import { registerLeaderlessRoutes } from './routes/leaderless.js'
import { registerSystemRoutes } from './routes/system.js'
import { registerMemberRoutes } from './routes/members.js'
import { registerShardRoutes } from './routes/shards.js'
import { registerRegionRoutes } from './routes/regions.js'
import { registerAuthRoutes } from './routes/auth.js'
import { registerOutboxRoutes } from '../outbox/routes.js'
import { guardEveryRoute, registerHttpAuth } from '../security/http-auth.js'
import { registerBodyBudget } from './body-budget.js'
import { registerWatchRoutes } from '../watch/route.js'
import { withRouteHook } from './route-hooks.js'
import { registerUiRoutes } from '../ui/routes.js'
import { registerOpenApi, registerOpenApiRoute } from './openapi.js'

/** Largest request header block, in bytes; keys travel in the URL, so it must fit them. */
export const headerBytesMax = 64 * 1024

export function buildApp(ctx: AppContext, logger: Logger): FastifyInstance {
  const { config, metrics, lifecycle } = ctx
  const app: FastifyInstance = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    // One logger for every request instead of a pino child per request (which serialises
    // its bindings each time); error logs carry the request id themselves.
    childLoggerFactory: (base) => base,
    // No log line per request: at tens of thousands of requests a second it would cost more
    // than the request. Failures are logged by the error handler; traffic is in /metrics.
    logController: new LogController({ disableRequestLogging: true }),
    // Percent-encoded keys can be three times their byte length.
    routerOptions: { maxParamLength: config.keyBytesMax * 3 + 16 },
    bodyLimit: config.requestBodyBytesMax,
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    clientErrorHandler: clientErrorHandler(metrics),
    // The router answers these itself unless told otherwise: keep them in the error catalog.
    frameworkErrors: (error, _request, reply) => {
      const kvError =
        error.code === 'FST_ERR_MAX_PARAM_LENGTH'
          ? new KvError(
              'KV_ERR_KEY_TOO_LARGE',
              `the key is longer than ${config.keyBytesMax} bytes`,
              {
                keyBytesMax: config.keyBytesMax,
              },
            )
          : new KvError('KV_ERR_INVALID_ARGUMENT', `malformed URL: ${error.message}`)
      metrics.errors.inc({ code: kvError.code })
      void sendError(reply, kvError)
    },
    serverFactory: (handler) =>
      createDualProtocolServer(handler, {
        requestTimeoutMs: config.requestTimeoutMs,
        keepAliveTimeoutMs: config.keepAliveTimeoutMs,
        connectionsMax: config.connectionsMax,
        h2StreamsMax: config.h2StreamsMax,
        headerBytesMax,
        tls: ctx.tls,
        connectionsPerIpMax: config.connectionsPerIpMax,
        headersTimeoutMs: config.headersTimeoutMs,
        tlsHandshakeTimeoutMs: config.tlsHandshakeTimeoutMs,
        h2ResetsPerSecondMax: config.h2ResetsPerSecondMax,
        onRefused: (reason) => metrics.connectionsRefused.inc({ reason }),
      }),
  })

  // Node answers an unknown Expect with a bare 417 unless someone listens for it.
  app.server.on('checkExpectation', (_request: IncomingMessage, response: ServerResponse) => {
    const error = new KvError(
      'KV_ERR_EXPECTATION_FAILED',
      'only "Expect: 100-continue" is supported',
    )
    metrics.errors.inc({ code: error.code })
    const body = JSON.stringify(error.toBody())
    response.writeHead(error.status, {
      'content-type': 'application/json; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      connection: 'close',
    })
    response.end(body)
  })

  // Bodies are raw bytes whatever the Content-Type: a value is stored exactly as sent, and
  // the batch route parses its JSON itself to give precise errors.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => {
    done(null, body)
  })

  registerErrorHandling(app, metrics, ctx.onFatal)

  // Before every route: /openapi.json is generated from the routes' schemas (openapi.ts).
  registerOpenApi(app, {
    version: ctx.version,
    mode: ctx.leaderless ? 'leaderless' : 'single-leader',
  })

  // Callback-style hooks: on a path taken by every request they are cheaper than async ones.
  app.addHook('onRequest', (request, reply, done) => {
    if (lifecycle.shuttingDown && !request.url.startsWith('/health')) {
      // Ask HTTP/1.1 clients to reconnect elsewhere; HTTP/2 sessions get GOAWAY on close.
      if (request.raw.httpVersionMajor === 1) void reply.header('connection', 'close')
      sendError(reply, new KvError('KV_ERR_SHUTTING_DOWN', 'the node is shutting down'))
      return
    }
    // A member removed from the cluster serves no data: its state stops at its removal.
    if (ctx.replicator?.removedFromCluster === true && request.url.startsWith('/v1/')) {
      if (request.url.startsWith('/v1/kv') || request.url.startsWith('/v1/batch')) {
        sendError(
          reply,
          new KvError(
            'KV_ERR_NOT_A_MEMBER',
            'this node was removed from the cluster and serves no data; use another member',
          ),
        )
        return
      }
    }
    done()
  })

  // Every route must get the authentication hook (registerHttpAuth, below): checked when ready.
  guardEveryRoute(app)

  // Each route records its own requests, with its label fixed when the route is registered.
  app.addHook('onRoute', (route) => {
    const recordRequest = metrics.requests.forRoute(route.url ?? route.path)
    const record: onResponseHookHandler = (request, reply, done) => {
      recordRequest(request.method, reply.statusCode, reply.elapsedTime / 1000)
      done()
    }
    route.onResponse = withRouteHook(route.onResponse, record)
  })

  app.addHook('preClose', async () => {
    ;(app.server as DualProtocolServer).closeHttp2Sessions()
  })

  // Before any route: every request is authenticated and authorized before its body is read.
  registerHttpAuth(app, {
    auth: ctx.security.auth,
    tokens: ctx.security.tokens,
    audit: ctx.security.audit,
    clusterId: ctx.security.clusterId,
    rateLimitPerSecond: config.rateLimitPerSecond,
    rateLimitBurst: config.rateLimitBurst,
    ...(ctx.shards !== null ? { shardPeers: ctx.shards.peers } : {}),
    ...(ctx.regions !== null
      ? { regionPeers: () => (ctx.regions as NonNullable<typeof ctx.regions>).peers }
      : {}),
    ...(ctx.replicator !== null
      ? {
          isClusterMember: (id: string) =>
            ctx.replicator?.cluster.members.some((m) => m.id === id) === true,
        }
      : {}),
  })
  const bodies = registerBodyBudget(app, {
    bytesMax: config.inflightBodyBytesMax,
    bodyLimitDefault: config.requestBodyBytesMax,
  })
  metrics.watchBodies(() => bodies.inflightBytes)
  registerOpenApiRoute(app)
  registerAuthRoutes(app, ctx)
  if (ctx.leaderless) {
    registerLeaderlessRoutes(app, ctx, ctx.leaderless)
  } else {
    registerKvRoutes(app, ctx)
    registerBatchRoutes(app, ctx)
  }
  registerWatchRoutes(app, ctx)
  registerLeaseRoutes(app, ctx)
  registerSystemRoutes(app, ctx)
  registerMemberRoutes(app, ctx)
  registerShardRoutes(app, ctx)
  registerRegionRoutes(app, ctx)
  // Queued writes: GET /v1/tickets/<id> and the leader's side of the forward (outbox/routes.ts).
  registerOutboxRoutes(app, ctx)
  // The live dashboard: GET /ui and its state stream (ui/routes.ts, docs/dashboard.md).
  registerUiRoutes(app, ctx)
  return app
}
