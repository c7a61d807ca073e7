/**
 * The TypeScript SDK for one node of the key-value store.
 *
 * It speaks cleartext HTTP/2 (h2c) over one multiplexed connection by default, or HTTP/1.1
 * with a pool of keep-alive connections. Every failure is a `KvError` with a stable code:
 * the node's own code for an error response, `KV_ERR_UNAVAILABLE` when the node cannot be
 * reached.
 */
import { H2CClient, Pool, type Dispatcher } from 'undici'
import { KvError, isErrorCode, type ErrorDetails } from '@kvstore/protocol/errors'

export { KvError }
export type { ErrorCode } from '@kvstore/protocol/errors'

export interface KvClientOptions {
  /** Base URL of a node, such as `http://127.0.0.1:7001`. */
  url: string
  /** `h2c` (default): one HTTP/2 connection; `http1`: a pool of HTTP/1.1 connections. */
  protocol?: 'h2c' | 'http1'
  /** Gives up on a request after this long without a response. Default 10 000 ms. */
  timeoutMs?: number
  /** HTTP/1.1 pool size. Default 16. */
  connections?: number
}

/** Write conditions, mapped to If-Match / If-None-Match. Use at most one. */
export interface WriteConditions {
  /** Only if the key currently has exactly this version. */
  ifVersion?: number
  /** Only if the key does not exist (create-only). */
  ifAbsent?: boolean
  /** Only if the key exists. */
  ifExists?: boolean
}

export interface GetResult {
  value: Buffer
  /** The key's version (the LSN that last wrote it). */
  version: number
  /** The node's applied LSN when it served the read. */
  appliedLsn: number
}

export interface PutResult {
  key: string
  /** The key's new version (the LSN of this write); use it with `ifVersion`. */
  version: number
  lsn: number
}

export interface DeleteResult {
  key: string
  deleted: true
  lsn: number
  previousVersion: number | null
}

export interface ListOptions {
  /** Only keys starting with this prefix. */
  prefix?: string
  /** First key (inclusive). */
  start?: string
  /** Keys per page. */
  limit?: number
  /** `nextCursor` of the previous page. */
  cursor?: string
  /** Include values (base64) in the page. */
  values?: boolean
}

export interface ListItem {
  key: string
  version: number
  valueBytes: number
  /** Present when listing with `values: true`. */
  valueBase64?: string
}

export interface ListPage {
  items: ListItem[]
  /** Pass as `cursor` to get the next page; null on the last page. */
  nextCursor: string | null
  appliedLsn: number
}

/** One op of an atomic batch. */
export type BatchOp =
  | ({ op: 'put'; key: string; value: string | Uint8Array } & WriteConditions)
  | ({ op: 'delete'; key: string } & Omit<WriteConditions, 'ifAbsent'>)

export interface BatchResult {
  lsn: number
  /**
   * One result per op: the key's new version (null after a delete), and for conditional ops
   * the version the condition saw.
   */
  results: { key: string; version: number | null; previousVersion?: number | null }[]
}

export interface NodeStatus {
  nodeId: string
  clusterId: string
  mode: string
  role: string
  epoch: number
  appliedLsn: number
  commitLsn: number
  logStartLsn: number
  ready: boolean
  version: string
  [field: string]: unknown
}

export interface StateDigest {
  appliedLsn: number
  digest: string
  keys: number
  bytes: number
}

interface Response {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: Buffer
}

/** Encodes a key for the URL path: each segment percent-encoded, `/` kept. */
export function keyPath(key: string): string {
  return key.split('/').map(encodeURIComponent).join('/')
}

function conditionHeaders(conditions: WriteConditions): Record<string, string> {
  const set = [
    conditions.ifVersion !== undefined,
    conditions.ifAbsent === true,
    conditions.ifExists === true,
  ]
  if (set.filter(Boolean).length > 1) {
    throw new KvError(
      'KV_ERR_INVALID_PRECONDITION',
      'use at most one of ifVersion, ifAbsent and ifExists',
    )
  }
  if (conditions.ifVersion !== undefined) return { 'if-match': `"${conditions.ifVersion}"` }
  if (conditions.ifAbsent === true) return { 'if-none-match': '*' }
  if (conditions.ifExists === true) return { 'if-match': '*' }
  return {}
}

function header(res: Response, name: string): string | undefined {
  const value = res.headers[name]
  return Array.isArray(value) ? value[0] : value
}

/** A client for one node. Create one per node and reuse it; `close()` when done. */
export class KvClient {
  readonly url: string
  private readonly dispatcher: Dispatcher
  private readonly timeoutMs: number

  constructor(options: KvClientOptions) {
    const url = new URL(options.url)
    if (url.protocol !== 'http:') {
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `only http:// URLs are supported, got ${options.url}`,
      )
    }
    this.url = url.origin
    this.timeoutMs = options.timeoutMs ?? 10_000
    const timeouts = { headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs }
    this.dispatcher =
      (options.protocol ?? 'h2c') === 'h2c'
        ? new H2CClient(this.url, { ...timeouts, maxConcurrentStreams: 128 })
        : new Pool(this.url, { ...timeouts, connections: options.connections ?? 16 })
  }

  /** Reads a key. Returns null when it does not exist. */
  async get(key: string): Promise<GetResult | null> {
    const res = await this.send('GET', `/v1/kv/${keyPath(key)}`, { allow404: true })
    if (res.status === 404) return null
    return {
      value: res.body,
      version: Number((header(res, 'etag') ?? '"0"').replaceAll('"', '')),
      appliedLsn: Number(header(res, 'kv-applied-lsn') ?? 0),
    }
  }

  /** Writes a key. With conditions, fails with `KV_ERR_PRECONDITION_FAILED` when they do not hold. */
  async put(
    key: string,
    value: string | Uint8Array,
    conditions: WriteConditions = {},
  ): Promise<PutResult> {
    const res = await this.send('PUT', `/v1/kv/${keyPath(key)}`, {
      body: typeof value === 'string' ? Buffer.from(value, 'utf8') : value,
      headers: { 'content-type': 'application/octet-stream', ...conditionHeaders(conditions) },
    })
    return JSON.parse(res.body.toString('utf8')) as PutResult
  }

  /** Deletes a key. Fails with `KV_ERR_KEY_NOT_FOUND` when it does not exist. */
  async delete(
    key: string,
    conditions: Omit<WriteConditions, 'ifAbsent'> = {},
  ): Promise<DeleteResult> {
    const res = await this.send('DELETE', `/v1/kv/${keyPath(key)}`, {
      headers: conditionHeaders(conditions),
    })
    return JSON.parse(res.body.toString('utf8')) as DeleteResult
  }

  /** One page of keys in key order. */
  async list(options: ListOptions = {}): Promise<ListPage> {
    const query = new URLSearchParams()
    if (options.prefix !== undefined) query.set('prefix', options.prefix)
    if (options.start !== undefined) query.set('start', options.start)
    if (options.limit !== undefined) query.set('limit', String(options.limit))
    if (options.cursor !== undefined) query.set('cursor', options.cursor)
    if (options.values) query.set('values', 'true')
    const qs = query.toString()
    const res = await this.send('GET', `/v1/kv${qs ? `?${qs}` : ''}`)
    return JSON.parse(res.body.toString('utf8')) as ListPage
  }

  /** Every key matching `options`, page by page. */
  async *listAll(options: Omit<ListOptions, 'cursor'> = {}): AsyncGenerator<ListItem> {
    let cursor: string | undefined
    do {
      const page = await this.list({ ...options, ...(cursor ? { cursor } : {}) })
      yield* page.items
      cursor = page.nextCursor ?? undefined
    } while (cursor !== undefined)
  }

  /** Applies puts and deletes atomically, in order. */
  async batch(ops: BatchOp[]): Promise<BatchResult> {
    const body = {
      ops: ops.map((op) => {
        const { op: kind, key, ...rest } = op
        if (kind === 'put' && 'value' in rest) {
          const { value, ...conditions } = rest
          return typeof value === 'string'
            ? { op: kind, key, value, ...conditions }
            : { op: kind, key, valueBase64: Buffer.from(value).toString('base64'), ...conditions }
        }
        return { op: kind, key, ...rest }
      }),
    }
    const res = await this.send('POST', '/v1/batch', {
      body: Buffer.from(JSON.stringify(body)),
      headers: { 'content-type': 'application/json' },
    })
    return JSON.parse(res.body.toString('utf8')) as BatchResult
  }

  /** The node's identity, role, LSNs and limits. */
  async status(): Promise<NodeStatus> {
    const res = await this.send('GET', '/v1/status')
    return JSON.parse(res.body.toString('utf8')) as NodeStatus
  }

  /** A hash of the node's whole state at one LSN. */
  async digest(): Promise<StateDigest> {
    const res = await this.send('GET', '/v1/digest')
    return JSON.parse(res.body.toString('utf8')) as StateDigest
  }

  /** True when the node answers /ready with 200. */
  async ready(): Promise<boolean> {
    try {
      await this.send('GET', '/ready')
      return true
    } catch (err) {
      if (err instanceof KvError) return false
      throw err
    }
  }

  /** Closes the connections. Requests in flight finish first. */
  async close(): Promise<void> {
    await this.dispatcher.close()
  }

  private async send(
    method: Dispatcher.HttpMethod,
    path: string,
    options: { body?: Uint8Array; headers?: Record<string, string>; allow404?: boolean } = {},
  ): Promise<Response> {
    let res: Dispatcher.ResponseData
    try {
      res = await this.dispatcher.request({
        method,
        path,
        ...(options.body !== undefined ? { body: options.body } : {}),
        ...(options.headers !== undefined ? { headers: options.headers } : {}),
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
    const response: Response = { status: res.statusCode, headers: res.headers, body }
    if (
      res.statusCode < 400 ||
      (options.allow404 && res.statusCode === 404 && this.isNotFound(body))
    ) {
      return response
    }
    throw this.errorFrom(response)
  }

  private isNotFound(body: Buffer): boolean {
    try {
      return (
        (JSON.parse(body.toString('utf8')) as { error?: { code?: string } }).error?.code ===
        'KV_ERR_KEY_NOT_FOUND'
      )
    } catch {
      return false
    }
  }

  private errorFrom(res: Response): KvError {
    let parsed: { error?: { code?: unknown; message?: unknown } & ErrorDetails } | undefined
    try {
      parsed = JSON.parse(res.body.toString('utf8')) as typeof parsed
    } catch {
      parsed = undefined
    }
    const error = parsed?.error
    if (error && isErrorCode(error.code)) {
      const { code, message, ...details } = error
      return new KvError(
        code,
        typeof message === 'string' ? message : code,
        details as ErrorDetails,
      )
    }
    return new KvError(
      res.status >= 500 ? 'KV_ERR_INTERNAL' : 'KV_ERR_INVALID_ARGUMENT',
      `unexpected HTTP ${res.status} from ${this.url}: ${res.body.toString('utf8').slice(0, 200)}`,
      { status: res.status },
    )
  }
}
