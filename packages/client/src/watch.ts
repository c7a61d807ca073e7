/**
 * `watch()`: the committed changes under a prefix, as an async iterator that resumes by itself.
 *
 * It streams GET /v1/watch (NDJSON) from one member and remembers its position: the LSN of the
 * last change it yielded, or of the last progress event (every change up to that LSN was
 * sent). When the stream breaks (the node died, paused past `idleTimeoutMs`, shut down, or cut
 * the watcher off as too slow) it watches again from that position on the next member, so the
 * caller sees every committed change after its start exactly once, in LSN order, across
 * failovers. A change at or below the position is never yielded twice.
 *
 * KV_ERR_COMPACTED (the position is older than the member's log: the caller must re-list and
 * watch from the listing's LSN) and refusals (no read access, bad arguments) end the iterator
 * with the error. So does finding no member to watch on for `retryForMs`.
 */
import { KvError } from '@kvstore/protocol/errors'
import type { NodeConnection } from './connection.js'

export interface WatchOptions {
  /** Changes after this LSN (0: from the start of the log). Default: from now. */
  fromLsn?: number
  /** Send values with puts. Default true. */
  values?: boolean
  /** Yield progress events too. Default false. */
  progress?: boolean
  /**
   * A stream that sends nothing (not even its progress event, about once a second) for this
   * long is given up and the watch moves to another member. Default 5000 ms.
   */
  idleTimeoutMs?: number
  /** Gives up (KV_ERR_UNAVAILABLE) after this long without reaching any member. Default 30 000 ms. */
  retryForMs?: number
  /** Stops the watch; the iterator then ends. */
  signal?: AbortSignal
  /** Called on every reconnect, with the member it leaves and why (for logs and tests). */
  onReconnect?: (info: { url: string; position: number | null; reason: string }) => void
}

export interface WatchOp {
  type: 'put' | 'delete'
  key: string
  /** The value of a put (absent with `values: false`). */
  value?: Buffer
}

export type WatchEvent =
  | {
      type: 'put' | 'delete'
      lsn: number
      version: number
      key: string
      value?: Buffer
    }
  | { type: 'batch' | 'expire'; lsn: number; version: number; ops: WatchOp[] }
  | { type: 'progress'; lsn: number; commitLsn: number }

/** What the watch needs from the client. */
export interface WatchDeps {
  /** The members to try, in order of preference. */
  nodes(): string[]
  connection(url: string): NodeConnection
  /** Learns the members again (after a failure). */
  refresh(): Promise<void>
  /** The client was closed: the watch ends. */
  closed(): boolean
}

interface RawOp {
  type: 'put' | 'delete'
  key: string
  valueBase64?: string
}

interface RawEvent {
  type: string
  lsn: number
  version?: number
  commitLsn?: number
  key?: string
  valueBase64?: string
  ops?: RawOp[]
  error?: { code: string; message: string; lsn?: number }
}

/** A line longer than this is not an event of this API. */
const lineBytesMax = 256 * 1024 * 1024

/** Errors that end the watch: retrying elsewhere cannot help. */
const finalCodes = new Set([
  'KV_ERR_COMPACTED',
  'KV_ERR_PERMISSION_DENIED',
  'KV_ERR_UNAUTHENTICATED',
  'KV_ERR_INVALID_ARGUMENT',
  'KV_ERR_INVALID_KEY',
  'KV_ERR_KEY_TOO_LARGE',
  'KV_ERR_UNSUPPORTED_IN_MODE',
  'KV_ERR_ROUTE_NOT_FOUND',
])

function eventOf(raw: RawEvent): WatchEvent {
  const value = (b64: string | undefined) =>
    b64 === undefined ? {} : { value: Buffer.from(b64, 'base64') }
  if (raw.type === 'progress')
    return { type: 'progress', lsn: raw.lsn, commitLsn: raw.commitLsn ?? raw.lsn }
  if (raw.type === 'batch' || raw.type === 'expire') {
    return {
      type: raw.type,
      lsn: raw.lsn,
      version: raw.version ?? raw.lsn,
      ops: (raw.ops ?? []).map((op) => ({ type: op.type, key: op.key, ...value(op.valueBase64) })),
    }
  }
  return {
    type: raw.type === 'delete' ? 'delete' : 'put',
    lsn: raw.lsn,
    version: raw.version ?? raw.lsn,
    key: raw.key ?? '',
    ...value(raw.valueBase64),
  }
}

/** Whether the signal fired (read afresh: it changes while the watch runs). */
function aborted(signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true
}

export async function* watchChanges(
  deps: WatchDeps,
  prefix: string,
  options: WatchOptions = {},
): AsyncGenerator<WatchEvent> {
  let position: number | null = options.fromLsn ?? null
  const idleTimeoutMs = options.idleTimeoutMs ?? 5000
  const retryForMs = options.retryForMs ?? 30_000
  let failingSince: number | null = null
  let next = 0
  let lastError: unknown = null
  while (!aborted(options.signal) && !deps.closed()) {
    const nodes = deps.nodes()
    if (nodes.length === 0) throw new KvError('KV_ERR_UNAVAILABLE', 'no member to watch on')
    const url = nodes[next % nodes.length] as string
    let reason = 'the stream ended'
    let body: { destroy(err?: Error): void } | null = null
    try {
      const query = new URLSearchParams()
      if (prefix !== '') query.set('prefix', prefix)
      if (position !== null) query.set('fromLsn', String(position))
      if (options.values === false) query.set('values', 'false')
      const qs = query.toString()
      const res = await deps
        .connection(url)
        .stream('GET', `/v1/watch${qs === '' ? '' : `?${qs}`}`, {
          headers: { accept: 'application/x-ndjson' },
          timeoutMs: idleTimeoutMs,
        })
      body = res.body
      const onAbort = () => res.body.destroy()
      options.signal?.addEventListener('abort', onAbort, { once: true })
      try {
        let buffered = ''
        for await (const chunk of res.body) {
          failingSince = null
          buffered += Buffer.from(chunk).toString('utf8')
          if (buffered.length > lineBytesMax)
            throw new KvError('KV_ERR_UNAVAILABLE', 'a watch event line is too long')
          let newline = buffered.indexOf('\n')
          while (newline >= 0) {
            const line = buffered.slice(0, newline)
            buffered = buffered.slice(newline + 1)
            newline = buffered.indexOf('\n')
            if (line.trim() === '') continue
            const raw = JSON.parse(line) as RawEvent
            if (raw.type === 'error' && raw.error !== undefined) {
              const code = raw.error.code
              if (
                typeof raw.error.lsn === 'number' &&
                (position === null || raw.error.lsn > position)
              )
                position = raw.error.lsn
              if (finalCodes.has(code)) {
                throw new KvError(
                  code as 'KV_ERR_COMPACTED',
                  raw.error.message,
                  raw.error as unknown as Record<string, number>,
                )
              }
              reason = `${code}: ${raw.error.message}`
              continue
            }
            if (raw.type === 'progress') {
              if (position === null || raw.lsn > position) position = raw.lsn
              if (options.progress === true) yield eventOf(raw)
              continue
            }
            // A change at or below the position was yielded already (never twice).
            if (position !== null && raw.lsn <= position) continue
            position = raw.lsn
            yield eventOf(raw)
          }
        }
      } finally {
        options.signal?.removeEventListener('abort', onAbort)
      }
    } catch (err) {
      if (err instanceof KvError && finalCodes.has(err.code)) throw err
      if (aborted(options.signal) || deps.closed()) return
      lastError = err
      reason = (err as Error).message
    } finally {
      body?.destroy()
    }
    if (aborted(options.signal)) return
    // Try the next member; keep trying within retryForMs of the first failure.
    const now = Date.now()
    failingSince ??= now
    if (now - failingSince > retryForMs) {
      throw new KvError(
        'KV_ERR_UNAVAILABLE',
        `no member served the watch for ${retryForMs} ms: ${(lastError as Error | null)?.message ?? reason}`,
      )
    }
    options.onReconnect?.({ url, position, reason })
    next++
    void deps.refresh().catch(() => {})
    await new Promise((r) => setTimeout(r, Math.min(250, 25 * (next % 10))))
  }
}
