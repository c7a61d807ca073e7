/**
 * The live dashboard, served by every node:
 *   GET /ui                 the page (public: it holds no data, only the login form and code)
 *   GET /ui/assets/<name>   its script and styles, and uPlot's, from this package (no CDN)
 *   GET /ui/v1/state        the dashboard's state now, with its histories (monitor role)
 *   GET /ui/v1/stream       the same as Server-Sent Events: a `snapshot` event, then an
 *                           `update` event per sample (monitor role)
 * The page reads the stream with fetch() and a bearer token from POST /v1/auth/token (an
 * EventSource cannot send one); with auth off no token is needed. See docs/dashboard.md.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { readFileSync } from 'node:fs'
import type { ServerResponse } from 'node:http'
import type { Http2ServerResponse } from 'node:http2'
import { createRequire } from 'node:module'
import { dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { standaloneClusterView } from '../http/routes/system.js'
import { KvError } from '@kvstore/protocol/errors'
import type { AppContext } from '../http/context.js'
import { methodNotAllowed } from '../http/errors.js'
import type { RouteSecurityConfig } from '../security/http-auth.js'
import { DashboardState, type DashboardSource, type DashboardUpdate } from './state.js'

/** The browser files, shipped beside the compiled code (package.json `files`). */
const browserDir = fileURLToPath(new URL('../../src/ui/browser/', import.meta.url))

interface Asset {
  type: string
  body: Buffer
}

/** Every file the page loads, read once at start-up: a fixed set, nothing else is served. */
function loadAssets(): Map<string, Asset> {
  const require = createRequire(import.meta.url)
  const uplotDir = `${dirname(require.resolve('uplot'))}/`
  const js = 'text/javascript; charset=utf-8'
  const css = 'text/css; charset=utf-8'
  const files: [string, string, string][] = [
    ['index.html', `${browserDir}index.html`, 'text/html; charset=utf-8'],
    ['app.js', `${browserDir}app.js`, js],
    ['app.css', `${browserDir}app.css`, css],
    ['uPlot.iife.min.js', `${uplotDir}uPlot.iife.min.js`, js],
    ['uPlot.min.css', `${uplotDir}uPlot.min.css`, css],
  ]
  return new Map(files.map(([name, path, type]) => [name, { type, body: readFileSync(path) }]))
}

/** Scripts and styles from this origin only; uPlot sets element styles, hence 'unsafe-inline'. */
const contentSecurityPolicy =
  "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

function sendAsset(reply: FastifyReply, asset: Asset): FastifyReply {
  return reply
    .header('content-type', asset.type)
    .header('cache-control', 'no-cache')
    .header('x-content-type-options', 'nosniff')
    .header('content-security-policy', contentSecurityPolicy)
    .send(asset.body)
}

/** What the dashboard samples, from whichever engine this node runs. */
function sourceOf(ctx: AppContext): DashboardSource {
  const { store, config } = ctx
  return {
    mode: config.mode,
    self: () => {
      const meta = store.meta
      return {
        nodeId: meta.nodeId,
        role: ctx.replicator ? ctx.replicator.role : ctx.leaderless ? 'replica' : 'leader',
        epoch: ctx.replicator?.epoch ?? meta.epoch,
        appliedLsn: meta.appliedLsn,
        commitLsn: ctx.replicator?.knownCommitLsn ?? meta.commitLsn,
        logStartLsn: meta.logStartLsn,
        ready:
          ctx.lifecycle.ready &&
          !ctx.lifecycle.shuttingDown &&
          store.failed === null &&
          ctx.replicator?.removedFromCluster !== true,
      }
    },
    view: () => {
      if (ctx.replicator) return ctx.replicator.clusterView()
      if (ctx.leaderless) return ctx.leaderless.clusterView(store.meta.clusterId)
      return standaloneClusterView(store.meta, null)
    },
    rollbackHeld: () => store.rollbackCount,
    rolledBackSinceStart: () => store.rolledBack,
    readRollbacks: async (afterSeq, limit) =>
      (await store.rollbacks(afterSeq, limit)).map((r) => ({
        seq: r.seq,
        removedAt: new Date(r.atMs).toISOString(),
        epoch: r.epoch,
        lsn: r.entry.lsn,
        entryEpoch: r.entry.epoch,
        ops: r.entry.ops.length,
      })),
    now: () => Date.now(),
  }
}

/** An open stream: its response and how many bytes wait to be sent. */
interface Stream {
  raw: ServerResponse | Http2ServerResponse
  unsent: () => number
}

function streamOf(raw: ServerResponse | Http2ServerResponse): Stream {
  const h2 = (raw as Http2ServerResponse).stream
  return {
    raw,
    unsent: () => (h2 !== undefined ? h2.writableLength : (raw as ServerResponse).writableLength),
  }
}

function write(stream: Stream, text: string): void {
  if (!stream.raw.writableEnded && !stream.raw.destroyed) (stream.raw as ServerResponse).write(text)
}

const htmlResponse = { 200: { content: { 'text/html': { schema: { type: 'string' } } } } }
const stateResponse = {
  200: {
    description:
      "The dashboard's state: this node's view of the cluster, histories of lag and leadership, the rollback record's summary (docs/dashboard.md).",
    type: 'object',
    additionalProperties: true,
  },
}

export interface UiRoutes {
  state: DashboardState
  /** Pages streamed to now. */
  readonly streams: number
}

export function registerUiRoutes(app: FastifyInstance, ctx: AppContext): UiRoutes {
  const { config } = ctx
  const assets = loadAssets()
  const state = new DashboardState(sourceOf(ctx), {
    sampleIntervalMs: config.uiSampleIntervalMs,
    historySamplesMax: config.uiHistorySamplesMax,
    leadershipChangesMax: config.uiLeadershipChangesMax,
  })
  const streams = new Set<Stream>()

  const tick = (): void => {
    let update: DashboardUpdate
    try {
      update = state.sample()
    } catch (err) {
      app.log.warn({ err: (err as Error).message }, 'the dashboard could not sample the cluster')
      return
    }
    if (streams.size === 0) return
    const frame = `event: update\ndata: ${JSON.stringify(update)}\n\n`
    for (const stream of streams) {
      // A page that reads slowly misses samples (each carries the whole state) until it catches
      // up: its buffer stays under uiStreamBufferBytesMax.
      if (stream.unsent() + frame.length > config.uiStreamBufferBytesMax) continue
      write(stream, frame)
    }
  }
  let timer: NodeJS.Timeout | null = null
  app.addHook('onReady', (done) => {
    tick()
    timer = setInterval(tick, config.uiSampleIntervalMs)
    timer.unref()
    done()
  })
  app.addHook('preClose', (done) => {
    if (timer !== null) clearInterval(timer)
    timer = null
    for (const stream of streams) if (!stream.raw.writableEnded) stream.raw.end()
    streams.clear()
    done()
  })

  const page = assets.get('index.html') as Asset
  const pageRoute = {
    config: { access: 'public' } satisfies RouteSecurityConfig,
    schema: {
      summary: 'The live dashboard page (data needs the monitor role; see docs/dashboard.md)',
      tags: ['dashboard'],
      response: htmlResponse,
    },
  }
  app.get('/ui', pageRoute, async (_request, reply) => sendAsset(reply, page))
  app.get('/ui/', pageRoute, async (_request, reply) => sendAsset(reply, page))
  methodNotAllowed(app, '/ui', ['GET'])
  methodNotAllowed(app, '/ui/', ['GET'])

  app.get(
    '/ui/assets/:name',
    {
      config: { access: 'public' } satisfies RouteSecurityConfig,
      schema: {
        summary: "The dashboard's scripts and styles (bundled uPlot included)",
        tags: ['dashboard'],
        params: {
          type: 'object',
          properties: { name: { type: 'string' } },
          required: ['name'],
        },
        response: {
          200: {
            content: {
              'text/javascript': { schema: { type: 'string' } },
              'text/css': { schema: { type: 'string' } },
            },
          },
        },
      },
    },
    async (request, reply) => {
      const name = (request.params as { name: string }).name
      const asset = name === 'index.html' ? undefined : assets.get(name)
      if (asset === undefined)
        throw new KvError('KV_ERR_ROUTE_NOT_FOUND', `no dashboard asset ${JSON.stringify(name)}`)
      return sendAsset(reply, asset)
    },
  )
  methodNotAllowed(app, '/ui/assets/:name', ['GET'])

  app.get(
    '/ui/v1/state',
    {
      config: { access: 'monitor' } satisfies RouteSecurityConfig,
      schema: {
        summary: "The dashboard's state now, with its bounded histories",
        tags: ['dashboard'],
        response: stateResponse,
      },
    },
    async () => state.snapshot(),
  )
  methodNotAllowed(app, '/ui/v1/state', ['GET'])

  app.get(
    '/ui/v1/stream',
    {
      config: { access: 'monitor' } satisfies RouteSecurityConfig,
      schema: {
        summary: "The dashboard's state as Server-Sent Events: a snapshot, then an update a sample",
        tags: ['dashboard'],
        response: { 200: { content: { 'text/event-stream': { schema: { type: 'string' } } } } },
      },
    },
    (request: FastifyRequest, reply: FastifyReply) => {
      if (streams.size >= config.uiStreamsMax) {
        void reply.header('retry-after', '1')
        throw new KvError(
          'KV_ERR_DASHBOARD_STREAMS_TOO_MANY',
          `this node already streams to ${config.uiStreamsMax} dashboard pages (uiStreamsMax); open the dashboard on another member or retry later`,
          { uiStreamsMax: config.uiStreamsMax },
        )
      }
      void reply.hijack()
      const raw = reply.raw as ServerResponse | Http2ServerResponse
      raw.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache',
        'x-accel-buffering': 'no',
      })
      const stream = streamOf(raw)
      streams.add(stream)
      write(stream, `retry: 1000\n\nevent: snapshot\ndata: ${JSON.stringify(state.snapshot())}\n\n`)
      const gone = (): void => {
        streams.delete(stream)
      }
      raw.once('close', gone)
      request.raw.once('close', gone)
      ;(raw as Http2ServerResponse).stream?.once('close', gone)
    },
  )
  methodNotAllowed(app, '/ui/v1/stream', ['GET'])

  return {
    state,
    get streams() {
      return streams.size
    },
  }
}
