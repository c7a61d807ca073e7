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

/** Reads one header as a string. */
export function headerOf(res: NodeResponse, name: string): string | undefined {
  const value = res.headers[name]
  return Array.isArray(value) ? value[0] : value
}

export class NodeConnection {
  readonly url: string
  private readonly dispatcher: Dispatcher
  private readonly credentials: Credentials | undefined

  constructor(url: string, options: ConnectionOptions) {
    this.url = url
    this.credentials = options.credentials
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

  private async sendOnce(
    method: Dispatcher.HttpMethod,
    path: string,
    options: SendOptions,
    authorization: string | undefined,
  ): Promise<NodeResponse> {
    const headers =
      authorization === undefined ? options.headers : { ...(options.headers ?? {}), authorization }
    let res: Dispatcher.ResponseData
    try {
      res = await this.dispatcher.request({
        method,
        path,
        ...(options.body !== undefined ? { body: options.body } : {}),
        ...(headers !== undefined ? { headers } : {}),
        ...(options.timeoutMs !== undefined
          ? { headersTimeout: options.timeoutMs, bodyTimeout: options.timeoutMs }
          : {}),
      })
    } catch (err) {
      throw new KvError(
        'KV_ERR_UNAVAILABLE',
        `cannot reach ${this.url}: ${(err as Error).message}`,
        { url: this.url },
        { cause: err },
      )
    }
    let body: Buffer
    try {
      body = Buffer.from(await res.body.arrayBuffer())
    } catch (err) {
      throw new KvError(
        'KV_ERR_UNAVAILABLE',
        `connection to ${this.url} broke while reading the response: ${(err as Error).message}`,
        { url: this.url },
        { cause: err },
      )
    }
    const response: NodeResponse = { status: res.statusCode, headers: res.headers, body }
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
      return new KvError(code, typeof message === 'string' ? message : code, {
        ...details,
        url: this.url,
      } as ErrorDetails)
    }
    return new KvError(
      res.status >= 500 ? 'KV_ERR_INTERNAL' : 'KV_ERR_INVALID_ARGUMENT',
      `unexpected HTTP ${res.status} from ${this.url}: ${res.body.toString('utf8').slice(0, 200)}`,
      { status: res.status, url: this.url },
    )
  }
}
