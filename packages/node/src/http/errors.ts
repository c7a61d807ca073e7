/**
 * Turns every failure into a stable error code and the body
 * `{ "error": { "code", "message", ...details } }`. Fastify's own errors (body too large,
 * bad URL, bad Content-Length) are mapped to our codes, so a client never sees a code that
 * is not in the catalog.
 */
import { STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { KvError, isErrorCode, type ErrorCode } from '@kvstore/protocol/errors'
import { CoreInvariantError } from '@kvstore/core'
import { InvariantError } from '@kvstore/storage'
import type { NodeMetrics } from '../metrics.js'

/** Per-route settings read by the error handler. */
export interface RouteErrorConfig {
  /** Code for a body over the route's limit: KV_ERR_VALUE_TOO_LARGE for a PUT's value. */
  bodyTooLargeCode?: ErrorCode
}

function fromFastifyError(err: FastifyError, request: FastifyRequest): KvError | null {
  const config = request.routeOptions.config as RouteErrorConfig | undefined
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE': {
      const limit = request.routeOptions.bodyLimit
      const code = config?.bodyTooLargeCode ?? 'KV_ERR_BODY_TOO_LARGE'
      const what = code === 'KV_ERR_VALUE_TOO_LARGE' ? 'value' : 'request body'
      return new KvError(code, `the ${what} is larger than the limit of ${limit} bytes`, {
        limitBytes: limit ?? null,
      })
    }
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new KvError('KV_ERR_MALFORMED_BODY', 'Content-Length does not match the body sent')
    case 'FST_ERR_BAD_URL':
      return new KvError('KV_ERR_INVALID_ARGUMENT', `malformed URL: ${err.message}`)
    case 'FST_ERR_VALIDATION':
      return new KvError('KV_ERR_INVALID_ARGUMENT', err.message)
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new KvError('KV_ERR_MALFORMED_BODY', err.message)
    default:
      break
  }
  if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) {
    return new KvError('KV_ERR_INVALID_ARGUMENT', err.message)
  }
  return null
}

/** Sends a KvError as the response. */
export function sendError(reply: FastifyReply, err: KvError): FastifyReply {
  if (
    err.code === 'KV_ERR_OVERLOADED' ||
    err.code === 'KV_ERR_NOT_READY' ||
    err.code === 'KV_ERR_RATE_LIMITED' ||
    err.code === 'KV_ERR_SLOT_MOVING' ||
    err.code === 'KV_ERR_OUTBOX_FULL'
  ) {
    void reply.header('retry-after', '1')
  }
  // A follower names the leader, so a client can follow the hint without parsing the body.
  if (typeof err.details.leaderUrl === 'string')
    void reply.header('kv-leader', err.details.leaderUrl)
  return reply.code(err.status).type('application/json; charset=utf-8').send(err.toBody())
}

/** A broken invariant of the core or the storage: a bug, never a condition to serve on through. */
export function isInvariantError(err: unknown): boolean {
  return err instanceof CoreInvariantError || err instanceof InvariantError
}

export function registerErrorHandling(
  app: FastifyInstance,
  metrics: NodeMetrics,
  onFatal: (err: Error) => void,
): void {
  app.setErrorHandler((error: FastifyError | KvError | Error, request, reply) => {
    let kvError: KvError
    if (error instanceof KvError) {
      kvError = error
    } else {
      kvError =
        fromFastifyError(error as FastifyError, request) ??
        new KvError('KV_ERR_INTERNAL', 'internal error; see the node log')
    }
    // Refusals under load, and of writes to slots in a move's fence, are expected answers:
    // counted, not logged, so a flood of them does not flood the log.
    if (
      kvError.status >= 500 &&
      kvError.code !== 'KV_ERR_OVERLOADED' &&
      kvError.code !== 'KV_ERR_SLOT_MOVING' &&
      kvError.code !== 'KV_ERR_OUTBOX_FULL'
    ) {
      request.log.error(
        {
          err: error,
          code: kvError.code,
          reqId: request.id,
          method: request.method,
          url: request.url,
        },
        'request failed',
      )
    }
    metrics.errors.inc({ code: kvError.code })
    // The answer still goes out (500); then the node stops, as DESIGN's rule 6 asks.
    if (isInvariantError(error)) onFatal(error)
    // fastify asks to close the connection after a body it could not read; HTTP/2 has no
    // such header (the stream is reset instead), and Node warns when one is set.
    if (request.raw.httpVersionMajor === 2) reply.removeHeader('connection')
    return sendError(reply, kvError)
  })

  app.setNotFoundHandler((request, reply) => {
    metrics.errors.inc({ code: 'KV_ERR_ROUTE_NOT_FOUND' })
    reply.raw.once('finish', () => {
      metrics.requests.record(
        'unmatched',
        request.method,
        reply.statusCode,
        reply.elapsedTime / 1000,
      )
    })
    return sendError(
      reply,
      new KvError(
        'KV_ERR_ROUTE_NOT_FOUND',
        `no endpoint ${request.method} ${request.url.split('?')[0]}`,
      ),
    )
  })
}

/** Registers 405 answers for the methods a path does not support. */
export function methodNotAllowed(app: FastifyInstance, url: string, allowed: string[]): void {
  const shown = url.replace('*', '<key>')
  const all = ['GET', 'HEAD', 'PUT', 'POST', 'DELETE', 'PATCH', 'OPTIONS']
  const others = all.filter(
    (m) => !allowed.includes(m) && !(m === 'HEAD' && allowed.includes('GET')),
  )
  app.route({
    method: others as ('GET' | 'PUT')[],
    url,
    exposeHeadRoute: false,
    // Left out of /openapi.json (http/openapi.ts): a method the path does not have.
    schema: { hide: true },
    // Any user learns that the method is wrong; the allowed methods check their own access.
    config: { access: 'authenticated' },
    handler: async (request, reply) => {
      void reply.header('allow', allowed.join(', '))
      throw new KvError(
        'KV_ERR_METHOD_NOT_ALLOWED',
        `${request.method} is not allowed on ${shown}; use ${allowed.join(', ')}`,
      )
    },
  })
}

export { isErrorCode }

/**
 * Answers errors that Node's HTTP parser raises before fastify sees a request (a malformed
 * request line or framing, headers too large, a request that takes too long) with a body
 * from the catalog, then closes the connection, as Node itself would.
 */
export function clientErrorHandler(metrics: NodeMetrics) {
  return (err: NodeJS.ErrnoException, socket: Socket): void => {
    if (err.code === 'ECONNRESET' || socket.destroyed) return
    const kvError =
      err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? new KvError('KV_ERR_REQUEST_TIMEOUT', 'the request did not arrive in time')
        : err.code === 'HPE_HEADER_OVERFLOW'
          ? new KvError('KV_ERR_HEADERS_TOO_LARGE', 'the request line and headers are too large')
          : new KvError('KV_ERR_BAD_REQUEST', `malformed HTTP request (${err.code ?? err.message})`)
    metrics.errors.inc({ code: kvError.code })
    if (socket.writable) {
      const body = JSON.stringify(kvError.toBody())
      socket.write(
        `HTTP/1.1 ${kvError.status} ${STATUS_CODES[kvError.status] ?? ''}\r\n` +
          `Content-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
          `Connection: close\r\n\r\n${body}`,
      )
    }
    socket.destroy()
  }
}
