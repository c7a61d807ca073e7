/**
 * GET /v1/watch?prefix=&fromLsn=&values=   a stream of the committed changes under a prefix
 *
 * NDJSON (one event a line) by default, over HTTP/2 or HTTP/1.1 (chunked); Server-Sent Events
 * with `Accept: text/event-stream`, where each event's `id:` is an LSN, so a browser's
 * EventSource resumes by itself (`Last-Event-ID`). `fromLsn=N` streams the changes after LSN N
 * (0: from the start of the log); without it the stream starts at this node's commit LSN.
 * Any member serves watches, from its own log. Needs read access to the whole prefix, as a
 * listing does. See hub.ts for how the stream is fed and bounded, and docs/watch.md.
 */
import { headers, query } from '../http/schemas/index.js'

function watchSchema(summary: string) {
  return {
    summary,
    description:
      'NDJSON (application/x-ndjson), or Server-Sent Events with Accept: text/event-stream; each event carries its LSN (see docs/watch.md).',
    tags: ['watch'],
    querystring: query({
      prefix: { description: 'Keys that start with this.' },
      fromLsn: { description: 'Changes after this LSN (the last one seen); default: from now.' },
      values: { description: 'false: events without values.', enum: ['true', 'false', '1', '0'] },
    }),
    headers: headers({
      accept: 'text/event-stream for Server-Sent Events, else NDJSON.',
      'last-event-id': 'SSE resume: the id of the last event seen (as fromLsn).',
    }),
    response: {
      200: {
        description: 'The change stream',
        content: {
          'application/x-ndjson': { schema: { type: 'string' } },
          'text/event-stream': { schema: { type: 'string' } },
        },
      },
    },
  }
}
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { ServerResponse } from 'node:http'
import type { Http2ServerResponse } from 'node:http2'
import type { Logger } from 'pino'
import { keyToBytes } from '@kvstore/protocol'
import { KvError } from '@kvstore/protocol/errors'
import type { AppContext } from '../http/context.js'
import { methodNotAllowed } from '../http/errors.js'
import type { RouteSecurityConfig } from '../security/http-auth.js'
import { WatchHub, type WatchSink } from './hub.js'

const watchParams = new Set(['prefix', 'fromLsn', 'values'])

/** A non-negative safe integer, or null. */
function parseLsn(text: string): number | null {
  if (!/^(0|[1-9][0-9]{0,15})$/.test(text)) return null
  const value = Number(text)
  return Number.isSafeInteger(value) ? value : null
}

export interface WatchRequest {
  prefix: Buffer
  prefixText: string
  fromLsn: number | null
  values: boolean
  format: 'ndjson' | 'sse'
}

/** Reads and checks the query and headers of a watch request. */
export function parseWatchRequest(request: FastifyRequest, keyBytesMax: number): WatchRequest {
  const query = (request.query ?? {}) as Record<string, string | string[] | undefined>
  for (const [name, value] of Object.entries(query)) {
    if (!watchParams.has(name)) {
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `unknown query parameter ${JSON.stringify(name)}; use prefix, fromLsn or values`,
      )
    }
    if (Array.isArray(value)) {
      throw new KvError('KV_ERR_INVALID_ARGUMENT', `query parameter ${name} may appear only once`)
    }
  }
  const text = query as Record<string, string | undefined>
  const prefixText = text.prefix ?? ''
  const prefix = prefixText === '' ? Buffer.alloc(0) : keyToBytes(prefixText, keyBytesMax)
  let fromLsn: number | null = null
  if (text.fromLsn !== undefined) {
    fromLsn = parseLsn(text.fromLsn)
    if (fromLsn === null) {
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `fromLsn must be a whole number of 0 or more (the last LSN seen); got ${JSON.stringify(text.fromLsn)}`,
      )
    }
  }
  const lastEventId = request.headers['last-event-id']
  if (fromLsn === null && lastEventId !== undefined) {
    const value = Array.isArray(lastEventId) ? undefined : lastEventId
    fromLsn = value === undefined ? null : parseLsn(value.trim())
    if (fromLsn === null) {
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `Last-Event-ID must be one LSN as sent in an event's id; got ${JSON.stringify(lastEventId)}`,
      )
    }
  }
  let values = true
  if (text.values !== undefined) {
    if (!['true', 'false', '1', '0'].includes(text.values)) {
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `values must be true or false; got ${JSON.stringify(text.values)}`,
      )
    }
    values = text.values === 'true' || text.values === '1'
  }
  const accept = request.headers.accept ?? ''
  const format = accept.includes('text/event-stream') ? 'sse' : 'ndjson'
  return { prefix, prefixText, fromLsn, values, format }
}

/** The response stream as a sink: writes, unsent bytes, and drain. */
function sinkOf(raw: ServerResponse | Http2ServerResponse): WatchSink {
  const h2 = (raw as Http2ServerResponse).stream
  const unsent = (): number =>
    h2 !== undefined ? h2.writableLength : (raw as ServerResponse).writableLength
  return {
    write: (text) => {
      if (!raw.writableEnded && !raw.destroyed) (raw as ServerResponse).write(text)
    },
    end: () => {
      if (!raw.writableEnded) raw.end()
    },
    unsent,
    drained: () =>
      new Promise<void>((resolve) => {
        if (raw.destroyed || raw.writableEnded) return resolve()
        const done = (): void => {
          raw.removeListener('drain', done)
          raw.removeListener('close', done)
          resolve()
        }
        raw.once('drain', done)
        raw.once('close', done)
      }),
  }
}

export function registerWatchRoutes(app: FastifyInstance, ctx: AppContext): WatchHub | null {
  const { config, store } = ctx
  if (ctx.leaderless !== null) {
    app.get(
      '/v1/watch',
      {
        config: { access: 'list' },
        schema: watchSchema(
          'Watches need single-leader mode: always KV_ERR_UNSUPPORTED_IN_MODE here',
        ),
      },
      async () => {
        throw new KvError(
          'KV_ERR_UNSUPPORTED_IN_MODE',
          'watches follow the log of a single-leader cluster (or a standalone node); a leaderless cluster has none',
        )
      },
    )
    methodNotAllowed(app, '/v1/watch', ['GET'])
    return null
  }
  const hub = new WatchHub({
    store,
    tailBytesMax: config.watchTailBytesMax,
    bufferBytesMax: config.watchBufferBytesMax,
    watchersMax: config.watchersMax,
    progressIntervalMs: config.watchProgressIntervalMs,
    unsafeApplied: config.unsafeWatchApplied,
    unsafeSkipOnResume: config.unsafeWatchSkipOnResume,
    logger: app.log as unknown as Logger,
  })
  ctx.metrics.watchWatches(() => hub.snapshotStats())

  app.get(
    '/v1/watch',
    {
      config: { access: 'list' } satisfies RouteSecurityConfig,
      schema: watchSchema(
        'Watch changes under a prefix, from an LSN on: a stream that does not end',
      ),
    },
    (request: FastifyRequest, reply: FastifyReply) => {
      const watch = parseWatchRequest(request, config.keyBytesMax)
      const fromLsn = watch.fromLsn ?? hub.committedLsn
      const problem = hub.problem(fromLsn)
      if (problem !== null) {
        if (problem.code === 'KV_ERR_WATCHERS_TOO_MANY') void reply.header('retry-after', '1')
        throw new KvError(problem.code, problem.message, problem.details)
      }
      void reply.hijack()
      const raw = reply.raw as ServerResponse | Http2ServerResponse
      raw.writeHead(200, {
        'content-type':
          watch.format === 'sse' ? 'text/event-stream; charset=utf-8' : 'application/x-ndjson',
        'cache-control': 'no-cache',
        'x-accel-buffering': 'no',
        'kv-commit-lsn': String(hub.committedLsn),
      })
      const sink = sinkOf(raw)
      if (watch.format === 'sse') sink.write(`retry: 1000\n\n`)
      const watcher = hub.add(
        watch.prefix,
        watch.prefixText,
        watch.values,
        watch.format,
        sink,
        fromLsn,
      )
      const gone = (): void => hub.remove(watcher)
      raw.once('close', gone)
      request.raw.once('close', gone)
      ;(raw as Http2ServerResponse).stream?.once('close', gone)
    },
  )
  methodNotAllowed(app, '/v1/watch', ['GET'])
  app.addHook('preClose', (done) => {
    hub.stop('KV_ERR_SHUTTING_DOWN', 'the node is shutting down; watch again on another member')
    done()
  })
  return hub
}
