/**
 * One HTTP connection to one node (h2c by default, or a pool of HTTP/1.1 connections), turning
 * every failure into a KvError: the node's own code for an error response, or
 * KV_ERR_UNAVAILABLE when the node cannot be reached.
 */
import { H2CClient, Pool, type Dispatcher } from 'undici'
import { KvError, isErrorCode, type ErrorDetails } from '@kvstore/protocol/errors'

export interface ConnectionOptions {
  protocol: 'h2c' | 'http1'
  timeoutMs: number
  connections: number
}

export interface NodeResponse {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: Buffer
}

export interface SendOptions {
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

  constructor(url: string, options: ConnectionOptions) {
    this.url = url
    const timeouts = { headersTimeout: options.timeoutMs, bodyTimeout: options.timeoutMs }
    this.dispatcher =
      options.protocol === 'h2c'
        ? new H2CClient(url, { ...timeouts, maxConcurrentStreams: 128 })
        : new Pool(url, { ...timeouts, connections: options.connections })
  }

  async send(
    method: Dispatcher.HttpMethod,
    path: string,
    options: SendOptions = {},
  ): Promise<NodeResponse> {
    let res: Dispatcher.ResponseData
    try {
      res = await this.dispatcher.request({
        method,
        path,
        ...(options.body !== undefined ? { body: options.body } : {}),
        ...(options.headers !== undefined ? { headers: options.headers } : {}),
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
