/**
 * One HTTP connection to one node, turning every failure into a KvError: the node's own code
 * for an error response, or KV_ERR_UNAVAILABLE when the node cannot be reached.
 *
 * - `https://` URLs: TLS, HTTP/2 by ALPN (one multiplexed connection; TLS session tickets are
 *   reused when it reconnects), or a pool of HTTP/1.1 connections with `protocol: 'http1'`.
 * - `http://` URLs: cleartext HTTP/2 with prior knowledge (h2c), or HTTP/1.1.
 *
 * Every request carries the client's credential; a request refused with
 * KV_ERR_UNAUTHENTICATED is sent once more after logging in again, when the client can.
 */
import { Readable } from 'node:stream'
import { Client, H2CClient, Pool, type Dispatcher } from 'undici'
import { KvError, isErrorCode, type ErrorDetails } from '@kvstore/protocol/errors'
import type { Credentials } from './credentials.js'

/** TLS settings of a client: the cluster's CA, and a client certificate naming a user. */
export interface TlsOptions {
  /** CA certificate(s), PEM: the nodes' certificates must be signed by one of them. */
  ca?: string | Buffer
  /** A client certificate (PEM) naming a user, with its key: logs in as that user. */
  cert?: string | Buffer
  key?: string | Buffer
  /** The name to check the node's certificate against, when the URL's host is not in it. */
  servername?: string
}

export interface ConnectionOptions {
  protocol: 'h2' | 'h2c' | 'http1'
  timeoutMs: number
  connections: number
  tls?: TlsOptions | undefined
  credentials?: Credentials | undefined
}

export interface NodeResponse {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: Buffer
}

export interface SendOptions {
  /** Send no credential (logging in). */
  anonymous?: boolean
  body?: Uint8Array
  headers?: Record<string, string>
  /** Resolve (instead of throwing) on a 404 that carries KV_ERR_KEY_NOT_FOUND. */
  allowNotFound?: boolean
  /** Overrides the connection's timeout for this request. */
  timeoutMs?: number
}

/**
 * The Retry-After of an error response, in milliseconds, for the errors that carried one
 * (kept beside the error rather than in its details, which are the node's own body).
 */
const retryAfterOfError = new WeakMap<KvError, number>()

/** How long the node asked the client to wait before retrying `err`, when it said. */
export function retryAfterMs(err: KvError): number | undefined {
  return retryAfterOfError.get(err)
}

/** Reads one header as a string. */
export function headerOf(res: NodeResponse, name: string): string | undefined {
  const value = res.headers[name]
  return Array.isArray(value) ? value[0] : value
}

/**
 * Over HTTP/2 a body larger than this is sent as a stream of chunks of this size. Handed to
 * undici whole, a body goes at once into the HTTP/2 session's send buffer; Node resets a stream
 * whose session holds more than `maxSessionMemory` (10 MB) with ENHANCE_YOUR_CALM before a byte
 * leaves, so a 10 MB value failed as KV_ERR_UNAVAILABLE instead of reaching the node and
 * getting its KV_ERR_VALUE_TOO_LARGE. Streamed, it follows flow control, and the node's answer
 * (413 as soon as it sees the Content-Length) arrives while the rest is still unsent.
 */
export const h2BodyChunkBytes = 64 * 1024

function* chunksOf(body: Uint8Array): Generator<Uint8Array> {
  for (let at = 0; at < body.length; at += h2BodyChunkBytes)
    yield body.subarray(at, at + h2BodyChunkBytes)
}

export class NodeConnection {
  readonly url: string
  private readonly dispatcher: Dispatcher
  private readonly credentials: Credentials | undefined
  private readonly http2: boolean

  constructor(url: string, options: ConnectionOptions) {
    this.url = url
    this.credentials = options.credentials
    this.http2 = options.protocol !== 'http1'
    const timeouts = { headersTimeout: options.timeoutMs, bodyTimeout: options.timeoutMs }
    const secure = url.startsWith('https:')
    if (secure) {
      const tls = options.tls ?? {}
      const connect = {
        ...(tls.ca !== undefined ? { ca: tls.ca } : {}),
        ...(tls.cert !== undefined ? { cert: tls.cert } : {}),
        ...(tls.key !== undefined ? { key: tls.key } : {}),
        ...(tls.servername !== undefined ? { servername: tls.servername } : {}),
      }
      this.dispatcher =
        options.protocol === 'http1'
          ? new Pool(url, { ...timeouts, connections: options.connections, connect })
          : new Client(url, { ...timeouts, allowH2: true, maxConcurrentStreams: 128, connect })
    } else {
      this.dispatcher =
        options.protocol === 'http1'
          ? new Pool(url, { ...timeouts, connections: options.connections })
          : new H2CClient(url, { ...timeouts, maxConcurrentStreams: 128 })
    }
  }

  async send(
    method: Dispatcher.HttpMethod,
    path: string,
    options: SendOptions = {},
  ): Promise<NodeResponse> {
    const credentials = options.anonymous ? undefined : this.credentials
    const authorization = await credentials?.header()
    try {
      return await this.sendOnce(method, path, options, authorization)
    } catch (err) {
      // A token refused (revoked, rotated, expired early): log in again, once.
      if (
        credentials?.canRenew === true &&
        err instanceof KvError &&
        err.code === 'KV_ERR_UNAUTHENTICATED'
      ) {
        credentials.invalidate(authorization)
        const renewed = await credentials.header()
        if (renewed !== undefined && renewed !== authorization)
          return this.sendOnce(method, path, options, renewed)
      }
      throw err
    }
  }

  /**
   * Sends a request whose answer is a stream (a backup): resolves with the status, headers and
   * the body still unread once the headers are in, so the caller reads it at its own pace. An
   * error status is read whole and thrown as its KvError, as `send` does. `timeoutMs` bounds
   * the wait for the headers and each pause between body chunks.
   */
  async stream(
    method: Dispatcher.HttpMethod,
    path: string,
    options: SendOptions = {},
  ): Promise<{
    status: number
    headers: Record<string, string | string[] | undefined>
    body: AsyncIterable<Uint8Array> & { destroy(err?: Error): void }
  }> {
    const credentials = options.anonymous ? undefined : this.credentials
    let authorization = await credentials?.header()
    for (let attempt = 0; ; attempt++) {
      const headers =
        authorization === undefined
          ? options.headers
          : { ...(options.headers ?? {}), authorization }
      const res = await this.dispatch(method, path, options.body, headers, options.timeoutMs)
      if (res.statusCode < 400) {
        const body = res.body
        return {
          status: res.statusCode,
          headers: res.headers,
          body: {
            async *[Symbol.asyncIterator]() {
              try {
                for await (const chunk of body) yield chunk as Uint8Array
              } catch (err) {
                if (err instanceof KvError) throw err
                throw new KvError(
                  'KV_ERR_UNAVAILABLE',
                  `the stream from ${path} broke: ${(err as Error).message}`,
                  {},
                  { cause: err },
                )
              }
            },
            destroy: (err?: Error) => {
              // Dropping the rest of the body is not an error of this process.
              body.on('error', () => {})
              body.destroy(err)
            },
          },
        }
      }
      const received = Buffer.from(await res.body.arrayBuffer().catch(() => new ArrayBuffer(0)))
      const error = this.errorFrom({ status: res.statusCode, headers: res.headers, body: received })
      // A token refused (revoked, rotated, expired early): log in again, once.
      if (
        attempt === 0 &&
        credentials?.canRenew === true &&
        error.code === 'KV_ERR_UNAUTHENTICATED'
      ) {
        credentials.invalidate(authorization)
        const renewed = await credentials.header()
        if (renewed !== undefined && renewed !== authorization) {
          authorization = renewed
          continue
        }
      }
      throw error
    }
  }

  /** One request through the dispatcher; a node that cannot be reached is KV_ERR_UNAVAILABLE. */
  private async dispatch(
    method: Dispatcher.HttpMethod,
    path: string,
    body: Uint8Array | Readable | undefined,
    headers: Record<string, string> | undefined,
    timeoutMs: number | undefined,
  ): Promise<Dispatcher.ResponseData> {
    try {
      return await this.dispatcher.request({
        method,
        path,
        ...(body !== undefined ? { body } : {}),
        ...(headers !== undefined ? { headers } : {}),
        ...(timeoutMs !== undefined ? { headersTimeout: timeoutMs, bodyTimeout: timeoutMs } : {}),
      })
    } catch (err) {
      throw new KvError(
        'KV_ERR_UNAVAILABLE',
        `cannot reach ${this.url}: ${(err as Error).message}`,
        { url: this.url },
        { cause: err },
      )
    }
  }

  private async sendOnce(
    method: Dispatcher.HttpMethod,
    path: string,
    options: SendOptions,
    authorization: string | undefined,
  ): Promise<NodeResponse> {
    let headers =
      authorization === undefined ? options.headers : { ...(options.headers ?? {}), authorization }
    let body: Uint8Array | Readable | undefined = options.body
    if (this.http2 && body !== undefined && body.length > h2BodyChunkBytes) {
      // A new stream per attempt (a retry sends the body again); the length goes ahead of it,
      // so the node can refuse a body over its limit before reading any of it.
      headers = { ...headers, 'content-length': String(body.length) }
      body = Readable.from(chunksOf(body), { objectMode: false })
    }
    const res = await this.dispatch(method, path, body, headers, options.timeoutMs)
    let received: Buffer
    try {
      received = Buffer.from(await res.body.arrayBuffer())
    } catch (err) {
      throw new KvError(
        'KV_ERR_UNAVAILABLE',
        `connection to ${this.url} broke while reading the response: ${(err as Error).message}`,
        { url: this.url },
        { cause: err },
      )
    }
    const response: NodeResponse = {
      status: res.statusCode,
      headers: res.headers,
      body: received,
    }
    if (res.statusCode < 400) return response
    const error = this.errorFrom(response)
    if (options.allowNotFound && error.code === 'KV_ERR_KEY_NOT_FOUND') return response
    throw error
  }

  async close(): Promise<void> {
    await this.dispatcher.close()
  }

  private errorFrom(res: NodeResponse): KvError {
    let parsed: { error?: { code?: unknown; message?: unknown } & ErrorDetails } | undefined
    try {
      parsed = JSON.parse(res.body.toString('utf8')) as typeof parsed
    } catch {
      parsed = undefined
    }
    const error = parsed?.error
    if (error && isErrorCode(error.code)) {
      const { code, message, ...details } = error
      const err = new KvError(code, typeof message === 'string' ? message : code, {
        ...details,
        url: this.url,
      } as ErrorDetails)
      // Retry-After is delay-seconds (an HTTP date is not something a node sends).
      const retryAfter = Number(headerOf(res, 'retry-after'))
      if (headerOf(res, 'retry-after') !== undefined && Number.isFinite(retryAfter))
        retryAfterOfError.set(err, Math.max(0, retryAfter) * 1000)
      return err
    }
    return new KvError(
      res.status >= 500 ? 'KV_ERR_INTERNAL' : 'KV_ERR_INVALID_ARGUMENT',
      `unexpected HTTP ${res.status} from ${this.url}: ${res.body.toString('utf8').slice(0, 200)}`,
      { status: res.status, url: this.url },
    )
  }
}
