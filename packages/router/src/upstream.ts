/**
 * The router's connections to one node: an undici Pool of keep-alive HTTP/1.1 connections, or
 * one multiplexed HTTP/2 connection, over TLS with the router's identity certificate when the
 * node's URL is https. A request's answer is read whole (bounded), as bytes: the router passes
 * bodies through without decoding them, and must see a whole answer before deciding to retry.
 */
import type { IncomingHttpHeaders } from 'node:http'
import { Client, Pool, type Dispatcher } from 'undici'
import type { UpstreamProtocol } from './config.js'

export interface UpstreamTls {
  ca: Buffer | undefined
  cert: Buffer | undefined
  key: Buffer | undefined
}

export interface UpstreamOptions {
  protocol: UpstreamProtocol
  connections: number
  tls: UpstreamTls | null
  /** Largest answer read; a larger one fails the request. */
  responseBytesMax: number
}

export interface UpstreamResponse {
  status: number
  headers: IncomingHttpHeaders
  body: Buffer
}

/** Why a request got no answer: the node could not be reached, or did not answer in time. */
export class UpstreamError extends Error {
  constructor(
    readonly url: string,
    readonly reason: 'unreachable' | 'timeout' | 'too_large',
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options)
    this.name = 'UpstreamError'
  }
}

const emptyBody = Buffer.alloc(0)
const timeoutCodes = new Set([
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_CONNECT_TIMEOUT',
])

/** Collects one answer: status, headers, and the body's chunks (one, usually). */
class Collector implements Dispatcher.DispatchHandler {
  private status = 0
  private headers: IncomingHttpHeaders = {}
  private chunks: Buffer[] = []
  private bytes = 0

  constructor(
    private readonly url: string,
    private readonly bytesMax: number,
    private readonly resolve: (res: UpstreamResponse) => void,
    private readonly reject: (err: UpstreamError) => void,
  ) {}

  onRequestStart(): void {}

  onResponseStart(
    _controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: IncomingHttpHeaders,
  ): void {
    this.status = statusCode
    this.headers = headers
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.bytes += chunk.length
    if (this.bytes > this.bytesMax) {
      controller.abort(
        new UpstreamError(
          this.url,
          'too_large',
          `${this.url} answered more than ${this.bytesMax} bytes (--response-bytes-max)`,
        ),
      )
      return
    }
    this.chunks.push(chunk)
  }

  onResponseEnd(): void {
    const { chunks } = this
    const body =
      chunks.length === 0
        ? emptyBody
        : chunks.length === 1
          ? (chunks[0] as Buffer)
          : Buffer.concat(chunks, this.bytes)
    this.resolve({ status: this.status, headers: this.headers, body })
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    if (err instanceof UpstreamError) {
      this.reject(err)
      return
    }
    const code = (err as { code?: string }).code ?? ''
    this.reject(
      new UpstreamError(
        this.url,
        timeoutCodes.has(code) ? 'timeout' : 'unreachable',
        `${this.url}: ${err.message}`,
        { cause: err },
      ),
    )
  }
}

export class Upstream {
  readonly url: string
  private readonly dispatcher: Dispatcher
  private readonly responseBytesMax: number

  constructor(url: string, options: UpstreamOptions) {
    this.url = url
    this.responseBytesMax = options.responseBytesMax
    const secure = url.startsWith('https:')
    const connect =
      secure && options.tls !== null
        ? {
            ...(options.tls.ca !== undefined ? { ca: options.tls.ca } : {}),
            ...(options.tls.cert !== undefined ? { cert: options.tls.cert } : {}),
            ...(options.tls.key !== undefined ? { key: options.tls.key } : {}),
          }
        : undefined
    if (options.protocol === 'h2' && secure) {
      this.dispatcher = new Client(url, {
        allowH2: true,
        maxConcurrentStreams: 256,
        ...(connect !== undefined ? { connect } : {}),
      })
    } else {
      this.dispatcher = new Pool(url, {
        connections: options.connections,
        // The nodes keep connections 65 s by default; ours time out first, so a request is
        // never sent on a connection the node is about to close.
        keepAliveTimeout: 30_000,
        keepAliveMaxTimeout: 60_000,
        ...(connect !== undefined ? { connect } : {}),
      })
    }
  }

  /** One request; resolves with the whole answer, or rejects with an UpstreamError. */
  request(
    method: Dispatcher.HttpMethod,
    path: string,
    headers: Record<string, string | string[]>,
    body: Buffer | null,
    timeoutMs: number,
  ): Promise<UpstreamResponse> {
    return new Promise((resolve, reject) => {
      const collector = new Collector(this.url, this.responseBytesMax, resolve, reject)
      try {
        this.dispatcher.dispatch(
          {
            method,
            path,
            headers,
            body,
            headersTimeout: timeoutMs,
            bodyTimeout: timeoutMs,
            // Every request is retried by the router itself, with its own rules.
            idempotent: false,
          },
          collector,
        )
      } catch (err) {
        reject(new UpstreamError(this.url, 'unreachable', (err as Error).message, { cause: err }))
      }
    })
  }

  /**
   * A GET whose answer is a stream (the dashboard's Server-Sent Events), not collected: its
   * status, headers and body as they come. `idleMs` ends it when the node sends nothing for
   * that long (a paused or cut-off member).
   */
  async stream(
    path: string,
    headers: Record<string, string | string[]>,
    timeoutMs: number,
    idleMs: number,
    signal: AbortSignal,
  ): Promise<Dispatcher.ResponseData> {
    try {
      return await this.dispatcher.request({
        method: 'GET',
        path,
        headers,
        headersTimeout: timeoutMs,
        bodyTimeout: idleMs,
        idempotent: false,
        signal,
      })
    } catch (err) {
      const code = (err as { code?: string }).code ?? ''
      throw new UpstreamError(
        this.url,
        timeoutCodes.has(code) ? 'timeout' : 'unreachable',
        `${this.url}: ${(err as Error).message}`,
        { cause: err },
      )
    }
  }

  async close(): Promise<void> {
    await this.dispatcher.close().catch(() => this.dispatcher.destroy())
  }

  destroy(): void {
    void this.dispatcher.destroy().catch(() => {})
  }
}
