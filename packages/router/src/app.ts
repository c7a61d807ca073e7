/**
 * The router's fastify application: the nodes' client API (proxied), the router's own
 * endpoints, and the guards in front of them all (shutdown, rate limits, requests and body
 * bytes in flight, the development-identity check), with every failure a coded error.
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import type { Logger } from 'pino'
import { KvError, formatSlotRanges, type ClusterView, type ErrorCode } from '@kvstore/protocol'
import type { RouterConfig } from './config.js'
import type { AccessCheck, LocalAccess } from './access.js'
import type { RouterDashboard } from './dashboard.js'
import type { GroupState } from './groups.js'
import type { RouterMetrics } from './metrics.js'
import type { Caller, Proxy } from './proxy.js'
import type { RegionRouting } from './regions.js'
import { RateLimiter } from './rate-limit.js'
import { createDualProtocolServer, type DualProtocolServer } from './server.js'
import type { ShardMapCache } from './shard-map.js'
import type { RouterTls } from './tls.js'

/** The dashboard's page and files: public on the nodes, passed on for anyone. */
const publicDashboardRoutes = new Set(['/ui', '/ui/', '/ui/assets/:name'])

/** Largest request header block, in bytes; keys travel in the URL, so it must fit them. */
export const headerBytesMax = 64 * 1024

export interface AppDeps {
  config: RouterConfig
  logger: Logger
  metrics: RouterMetrics
  tls: RouterTls
  cache: ShardMapCache
  groups: GroupState[]
  /** Regions mode: each key's home region (the groups are the regions); else null. */
  regions: RegionRouting | null
  proxy: Proxy
  dashboard: RouterDashboard
  access: AccessCheck
  caller(request: FastifyRequest): Caller
  lifecycle: { shuttingDown: boolean; ready: boolean }
  /** Counts of what is in flight, shared with /metrics. */
  inflight: { requests: number; bodyBytes: number }
  startedAtMs: number
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The group that served the request (for metrics); none for the router's own routes. */
    kvGroup?: string
  }
}

function sendError(reply: FastifyReply, err: KvError): FastifyReply {
  if (err.status === 503 || err.status === 429)
    void reply.header('retry-after', String(err.details.retryAfterSeconds ?? 1))
  return reply.code(err.status).type('application/json; charset=utf-8').send(err.toBody())
}

export function buildApp(deps: AppDeps): FastifyInstance {
  const { config, metrics, proxy, lifecycle, inflight } = deps
  const app: FastifyInstance = Fastify({
    loggerInstance: deps.logger as FastifyBaseLogger,
    childLoggerFactory: (base) => base,
    // No log line per request: traffic is in /metrics; failures are logged by the handler.
    logController: new LogController({ disableRequestLogging: true }),
    routerOptions: { maxParamLength: config.keyBytesMax * 3 + 16 },
    bodyLimit: config.requestBodyBytesMax,
    return503OnClosing: false,
    forceCloseConnections: 'idle',
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
      metrics.errors.inc([kvError.code])
      void sendError(reply, kvError)
    },
    serverFactory: (handler) =>
      createDualProtocolServer(handler, {
        requestTimeoutMs: config.requestTimeoutMs,
        keepAliveTimeoutMs: config.keepAliveTimeoutMs,
        connectionsMax: config.connectionsMax,
        h2StreamsMax: config.h2StreamsMax,
        headerBytesMax,
        tls:
          deps.tls.listener === null
            ? null
            : {
                cert: deps.tls.listener.cert,
                key: deps.tls.listener.key,
                ...(deps.tls.ca !== undefined ? { ca: deps.tls.ca } : {}),
              },
        connectionsPerIpMax: config.connectionsPerIpMax,
        headersTimeoutMs: config.headersTimeoutMs,
        tlsHandshakeTimeoutMs: config.tlsHandshakeTimeoutMs,
        h2ResetsPerSecondMax: config.h2ResetsPerSecondMax,
        onRefused: (reason) => metrics.connectionsRefused.inc([reason]),
      }),
  })

  // Bodies are bytes whatever their type: passed on exactly as sent.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => {
    done(null, body)
  })

  app.setErrorHandler((error: FastifyError | KvError | Error, request, reply) => {
    let kvError: KvError
    if (error instanceof KvError) kvError = error
    else {
      const fe = error as FastifyError
      if (fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
        const code: ErrorCode =
          request.method === 'PUT' ? 'KV_ERR_VALUE_TOO_LARGE' : 'KV_ERR_BODY_TOO_LARGE'
        const limit = request.routeOptions.bodyLimit ?? null
        kvError = new KvError(
          code,
          `the ${code === 'KV_ERR_VALUE_TOO_LARGE' ? 'value' : 'request body'} is larger than the limit of ${limit} bytes`,
          {
            limitBytes: limit,
          },
        )
      } else if (fe.code === 'FST_ERR_CTP_INVALID_CONTENT_LENGTH')
        kvError = new KvError(
          'KV_ERR_MALFORMED_BODY',
          'Content-Length does not match the body sent',
        )
      else if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500)
        kvError = new KvError('KV_ERR_INVALID_ARGUMENT', fe.message)
      else kvError = new KvError('KV_ERR_INTERNAL', 'internal error; see the router log')
    }
    if (kvError.status >= 500 && kvError.code !== 'KV_ERR_OVERLOADED')
      request.log.error(
        { err: error, code: kvError.code, method: request.method, url: request.url },
        'request failed',
      )
    metrics.errors.inc([kvError.code])
    if (request.raw.httpVersionMajor === 2) reply.removeHeader('connection')
    return sendError(reply, kvError)
  })

  app.setNotFoundHandler((request, reply) => {
    metrics.errors.inc(['KV_ERR_ROUTE_NOT_FOUND'])
    return sendError(
      reply,
      new KvError(
        'KV_ERR_ROUTE_NOT_FOUND',
        `no endpoint ${request.method} ${request.url.split('?')[0]} on kv-router (it serves /v1/kv, /v1/batch, /v1/auth/token, /v1/auth/whoami, /v1/cluster, /v1/shards, /v1/regions, /admin/v1/shards/moves, /metrics, /health, /ready; send other admin calls to a node)`,
      ),
    )
  })

  // Requests counted per route, group and status, with the route's recorder resolved once.
  app.addHook('onRoute', (route) => {
    const record = metrics.forRoute(route.url ?? route.path)
    const onResponse = (request: FastifyRequest, reply: FastifyReply, done: () => void) => {
      record(request.kvGroup ?? 'none', reply.statusCode)
      done()
    }
    route.onResponse =
      route.onResponse === undefined ? onResponse : [route.onResponse, onResponse].flat()
  })

  const byAddress =
    config.rateLimitPerAddressPerSecond > 0
      ? new RateLimiter(
          config.rateLimitPerAddressPerSecond,
          config.rateLimitPerAddressBurst,
          config.rateLimitBucketsMax,
        )
      : null
  const byCredential =
    config.rateLimitPerCredentialPerSecond > 0
      ? new RateLimiter(
          config.rateLimitPerCredentialPerSecond,
          config.rateLimitPerCredentialBurst,
          config.rateLimitBucketsMax,
        )
      : null

  const refuse = (reply: FastifyReply, err: KvError): void => {
    metrics.errors.inc([err.code])
    // Whatever body was coming is not wanted: close an HTTP/1.1 connection after the answer.
    if (
      reply.request.raw.httpVersionMajor === 1 &&
      reply.request.headers['content-length'] !== undefined
    )
      void reply.header('connection', 'close')
    void sendError(reply, err)
  }

  app.addHook('onRequest', (request, reply, done) => {
    const route = request.routeOptions.url
    const open = route === '/health' || route === '/ready'
    if (lifecycle.shuttingDown && !open) {
      if (request.raw.httpVersionMajor === 1) void reply.header('connection', 'close')
      refuse(reply, new KvError('KV_ERR_SHUTTING_DOWN', 'the router is shutting down'))
      return
    }
    if (open) {
      done()
      return
    }
    // Rate limits: per address, and per credential (a token, or a certificate's user).
    if (byAddress !== null || byCredential !== null) {
      let cost = 1
      if (route === '/v1/kv') {
        const values = (request.query as { values?: unknown }).values
        cost = values === 'true' || values === '1' ? config.listValuesCost : config.listCost
      }
      const now = performance.now()
      if (byAddress !== null) {
        const wait = byAddress.take(request.ip, cost, now)
        if (wait > 0) {
          metrics.rateLimited.inc(['address'])
          refuse(
            reply,
            new KvError(
              'KV_ERR_RATE_LIMITED',
              `${request.ip} may make ${config.rateLimitPerAddressPerSecond} requests a second through this router; retry in ${wait} s`,
              { retryAfterSeconds: wait },
            ),
          )
          return
        }
      }
      if (byCredential !== null) {
        const caller = deps.caller(request)
        const key =
          caller.authorization !== undefined
            ? `t:${caller.authorization.slice(-96)}`
            : caller.certUser !== null
              ? `u:${caller.certUser}`
              : null
        if (key !== null) {
          const wait = byCredential.take(key, cost, now)
          if (wait > 0) {
            metrics.rateLimited.inc(['credential'])
            refuse(
              reply,
              new KvError(
                'KV_ERR_RATE_LIMITED',
                `this credential may make ${config.rateLimitPerCredentialPerSecond} requests a second through this router; retry in ${wait} s`,
                { retryAfterSeconds: wait },
              ),
            )
            return
          }
        }
      }
    }
    // A development identity (a user's certificate) must not lend its rights to others. The
    // dashboard's page and files hold no data: the nodes serve them to anyone.
    if (
      deps.tls.identityKind === 'user' &&
      route !== '/v1/auth/token' &&
      !publicDashboardRoutes.has(route ?? '')
    ) {
      const caller = deps.caller(request)
      if (caller.authorization === undefined && caller.certUser !== deps.tls.identityUser) {
        refuse(
          reply,
          new KvError(
            'KV_ERR_UNAUTHENTICATED',
            `this router reaches the cluster as user ${deps.tls.identityUser} (a development identity): send a token, or give the router a router certificate (kv://<cluster-id>/router/${config.routerId})`,
          ),
        )
        return
      }
    }
    // Every route but liveness: the router's own ask a group who the caller is.
    if (inflight.requests >= config.inflightRequestsMax) {
      refuse(
        reply,
        new KvError(
          'KV_ERR_OVERLOADED',
          `${inflight.requests} requests are in flight through this router (--inflight-requests-max)`,
        ),
      )
      return
    }
    let bytes = 0
    if (request.method === 'PUT' || request.method === 'POST') {
      const length = Number(request.headers['content-length'])
      bytes =
        Number.isFinite(length) && length >= 0 ? length : (request.routeOptions.bodyLimit ?? 0)
      if (inflight.bodyBytes + bytes > config.inflightBodyBytesMax) {
        refuse(
          reply,
          new KvError(
            'KV_ERR_OVERLOADED',
            `request bodies in flight through this router would exceed ${config.inflightBodyBytesMax} bytes (--inflight-body-bytes-max)`,
          ),
        )
        return
      }
    }
    inflight.requests++
    inflight.bodyBytes += bytes
    reply.raw.once('close', () => {
      inflight.requests--
      inflight.bodyBytes -= bytes
    })
    done()
  })

  const methodNotAllowed = (url: string, allowed: string[]) => {
    const all = ['GET', 'HEAD', 'PUT', 'POST', 'DELETE', 'PATCH', 'OPTIONS']
    const others = all.filter((m) => !allowed.includes(m))
    app.route({
      method: others as ('GET' | 'PUT')[],
      url,
      exposeHeadRoute: false,
      handler: async (request, reply) => {
        void reply.header('allow', allowed.join(', '))
        throw new KvError(
          'KV_ERR_METHOD_NOT_ALLOWED',
          `${request.method} is not allowed on ${url.replace('*', '<key>')}; use ${allowed.join(', ')}`,
        )
      },
    })
  }

  // ------------------------------------------------------------ the nodes' API
  app.route({
    method: ['GET', 'HEAD'],
    url: '/v1/kv/*',
    exposeHeadRoute: false,
    handler: (request, reply) => proxy.readKey(request, reply),
  })
  app.put('/v1/kv/*', { bodyLimit: config.valueBytesMax }, (request, reply) =>
    proxy.writeKey(request, reply),
  )
  app.delete('/v1/kv/*', (request, reply) => proxy.writeKey(request, reply))
  methodNotAllowed('/v1/kv/*', ['GET', 'HEAD', 'PUT', 'DELETE'])
  app.get('/v1/kv', (request, reply) => proxy.list(request, reply))
  methodNotAllowed('/v1/kv', ['GET', 'HEAD'])
  app.post('/v1/batch', { bodyLimit: config.requestBodyBytesMax }, (request, reply) =>
    proxy.batch(request, reply),
  )
  methodNotAllowed('/v1/batch', ['POST'])
  app.post('/v1/auth/token', { bodyLimit: 64 * 1024 }, (request, reply) =>
    proxy.anyMember(request, reply),
  )
  app.get('/v1/auth/whoami', (request, reply) => proxy.anyMember(request, reply))
  // Regions: the home region's view (without --regions, the first group's answer).
  app.get('/v1/regions', (request, reply) => proxy.regionsView(request, reply))
  methodNotAllowed('/v1/regions', ['GET', 'HEAD'])
  // Slot moves: to the leader of the group that owns the slots (or is named).
  app.post('/admin/v1/shards/moves', { bodyLimit: 64 * 1024 }, (request, reply) =>
    proxy.shardMove(request, reply),
  )
  app.post('/admin/v1/shards/moves/abort', { bodyLimit: 64 * 1024 }, (request, reply) =>
    proxy.shardAbort(request, reply),
  )

  // ------------------------------------------------------------ the dashboard
  // The page and its files are the nodes' own (public there too); its data comes from a member
  // of the group the page asks for, as the caller (the node checks the monitor role).
  for (const url of ['/ui', '/ui/', '/ui/assets/:name']) {
    app.get(url, (request, reply) => proxy.anyMember(request, reply))
    methodNotAllowed(url, ['GET', 'HEAD'])
  }
  app.get('/ui/v1/state', (request, reply) => proxy.uiState(request, reply))
  methodNotAllowed('/ui/v1/state', ['GET', 'HEAD'])
  app.get('/ui/v1/stream', (request, reply) => deps.dashboard.stream(request, reply))
  methodNotAllowed('/ui/v1/stream', ['GET', 'HEAD'])

  // ------------------------------------------------------------ the router's own
  const guarded =
    (need: LocalAccess, handler: (request: FastifyRequest, reply: FastifyReply) => unknown) =>
    async (request: FastifyRequest, reply: FastifyReply) => {
      const problem = await deps.access.check(request, need)
      if (problem !== null) throw problem
      return handler(request, reply)
    }

  app.get(
    '/v1/cluster',
    guarded('authenticated', (request) => clusterView(deps, request)),
  )
  methodNotAllowed('/v1/cluster', ['GET', 'HEAD'])
  app.get(
    '/v1/shards',
    guarded('authenticated', () => {
      if (deps.regions !== null)
        throw new KvError(
          'KV_ERR_UNSUPPORTED_IN_MODE',
          'this router routes keys to regions (--regions), not to shard groups: it has no shard map (GET /v1/regions and GET /v1/cluster say what is behind it)',
        )
      return { ...deps.cache.table.map, router: config.routerId }
    }),
  )
  methodNotAllowed('/v1/shards', ['GET', 'HEAD'])
  app.get(
    '/metrics',
    guarded('monitor', (_request, reply) => {
      void reply.type('text/plain; version=0.0.4; charset=utf-8')
      return metrics.render({
        mapVersion: () => deps.cache.version,
        inflightRequests: () => inflight.requests,
        inflightBodyBytes: () => inflight.bodyBytes,
        groups: () =>
          deps.groups.map((g) => ({
            id: g.id,
            leader: g.leader?.id ?? null,
            members: g.members.map((m) => ({
              id: m.id,
              state: m.health.state,
              lagMs: m.health.lagMs,
            })),
          })),
      })
    }),
  )
  methodNotAllowed('/metrics', ['GET', 'HEAD'])
  app.get('/health', async () => ({ status: 'ok' }))
  methodNotAllowed('/health', ['GET', 'HEAD'])
  app.get('/ready', async () => {
    if (lifecycle.shuttingDown)
      throw new KvError('KV_ERR_SHUTTING_DOWN', 'the router is shutting down')
    if (!lifecycle.ready) throw new KvError('KV_ERR_NOT_READY', 'the router is starting')
    // In regions mode the home region must answer; another one that does not is a remote
    // outage, which fails only its own keys (GET /v1/cluster shows it).
    const needed = deps.regions !== null ? deps.groups.slice(0, 1) : deps.groups
    const cut = needed.filter((g) => !g.members.some((m) => m.health.reachable))
    if (cut.length > 0)
      throw new KvError(
        'KV_ERR_NOT_READY',
        `no member of ${cut.map((g) => g.id).join(', ')} answers the router`,
      )
    return { ready: true }
  })
  methodNotAllowed('/ready', ['GET', 'HEAD'])

  app.addHook('preClose', async () => {
    ;(app.server as DualProtocolServer).closeHttp2Sessions()
  })
  return app
}

/**
 * GET /v1/cluster: to a client the router is a cluster of one member that takes every request
 * (so the SDK and `kv` send everything to it); `router` says what is behind it.
 */
function clusterView(deps: AppDeps, request: FastifyRequest): ClusterView & { router: unknown } {
  const { config, cache, groups } = deps
  const url = `${deps.tls.listener === null ? 'http' : 'https'}://${request.host}`
  const now = Date.now()
  const table = cache.table
  const slotsOf = (index: number) => {
    const ranges: { first: number; last: number }[] = []
    for (let s = 0; s < table.owner.length; s++) {
      if (table.owner[s] !== index) continue
      const last = ranges[ranges.length - 1]
      if (last !== undefined && last.last === s - 1) last.last = s
      else ranges.push({ first: s, last: s })
    }
    return formatSlotRanges(ranges)
  }
  return {
    mode: 'single-leader',
    clusterId: deps.tls.clusterId ?? 'unknown',
    leaderId: config.routerId,
    leaderUrl: url,
    epoch: 0,
    commitLsn: 0,
    self: config.routerId,
    writable: groups.every((g) => g.leader !== null),
    members: [
      {
        id: config.routerId,
        role: 'leader',
        clientUrl: url,
        peerUrl: null,
        epoch: 0,
        ackedLsn: 0,
        appliedLsn: 0,
        lagEntries: 0,
        lagMs: 0,
        lastContactMs: 0,
        connected: true,
      },
    ],
    router: {
      id: config.routerId,
      mode: deps.regions !== null ? 'regions' : 'shards',
      ...(deps.regions !== null
        ? { homeRegion: deps.regions.home, homeRegionPrefixes: deps.regions.prefixes }
        : {}),
      mapVersion: cache.version,
      readFromLeader: config.readFromLeader,
      maxLagMs: config.maxLagMs,
      uptimeMs: now - deps.startedAtMs,
      groups: groups.map((g) => ({
        id: g.id,
        // Regions mode: every region holds every key; none owns slots.
        slots: deps.regions !== null ? '' : slotsOf(g.index),
        leaderId: g.leader?.id ?? null,
        epoch: g.epoch,
        members: g.members.map((m) => ({
          id: m.id,
          url: m.url,
          role: m === g.leader ? 'leader' : m.role,
          state: m.health.state,
          inReadPool: g.inReadPool(m),
          lagMs: m.health.lagMs,
          connected: m.health.connected,
          appliedLsn: m.appliedLsn,
          failuresInARow: m.health.failuresInARow,
          ejections: m.health.ejectionsTotal,
          ejectedForMs:
            m.health.ejectedUntil === 0
              ? 0
              : Math.max(0, Math.round(m.health.ejectedUntil - performance.now())),
          lastError: m.lastError,
        })),
      })),
    },
  }
}
