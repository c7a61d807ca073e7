/**
 * `kv import FILE`: bulk loading through the SDK.
 *
 * The file is read as a stream (NDJSON lines of {"key", "value"} or {"key", "valueBase64"},
 * or CSV with `key` and `value` columns) and written in atomic batches, a few in flight. It
 * throttles itself on replication lag: whenever the slowest follower lags more than
 * `maxLagMs`, it stops sending until it is back under, so an import never pushes replicas
 * minutes behind. Each batch's request id is derived from its content, so a batch retried
 * (after a failover, or by rerunning the import) is applied once within the retention window.
 */
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { createInterface } from 'node:readline'
import type { AckMode, BatchOp, KvClient } from '@kvstore/client'

export interface ImportOptions {
  file: string
  format: 'ndjson' | 'csv'
  /** Records per batch. */
  chunk: number
  /** Batches in flight at once. */
  concurrency: number
  /** Pause while the slowest follower lags more than this. */
  maxLagMs: number
  ack: AckMode | undefined
  /** Where progress goes (standard error). */
  progress: NodeJS.WritableStream & { isTTY?: boolean }
}

export interface ImportSummary {
  records: number
  batches: number
  seconds: number
  maxLagSeenMs: number
  throttledMs: number
}

/** A problem with the input file, with its line number. */
export class ImportError extends Error {}

/** Splits one CSV line (RFC 4180: quoted fields, doubled quotes). */
export function parseCsvLine(line: string, lineNumber: number): string[] {
  const fields: string[] = []
  let field = ''
  let quoted = false
  for (let i = 0; i < line.length; i++) {
    const ch = line[i] as string
    if (quoted) {
      if (ch === '"') {
        if (line[i + 1] === '"') {
          field += '"'
          i++
        } else {
          quoted = false
        }
      } else {
        field += ch
      }
    } else if (ch === '"' && field === '') {
      quoted = true
    } else if (ch === ',') {
      fields.push(field)
      field = ''
    } else {
      field += ch
    }
  }
  if (quoted) throw new ImportError(`line ${lineNumber}: unterminated quoted field`)
  fields.push(field)
  return fields
}

/** Reads the file as put ops, one at a time. */
async function* records(options: ImportOptions): AsyncGenerator<BatchOp> {
  const lines = createInterface({ input: createReadStream(options.file), crlfDelay: Infinity })
  let lineNumber = 0
  let columns: { key: number; value: number } | null = null
  for await (const line of lines) {
    lineNumber++
    if (line.trim() === '') continue
    if (options.format === 'csv') {
      const fields = parseCsvLine(line, lineNumber)
      if (columns === null) {
        const key = fields.indexOf('key')
        const value = fields.indexOf('value')
        if (key < 0 || value < 0)
          throw new ImportError('line 1: the CSV header must name "key" and "value" columns')
        columns = { key, value }
        continue
      }
      const key = fields[columns.key]
      const value = fields[columns.value]
      if (key === undefined || value === undefined)
        throw new ImportError(`line ${lineNumber}: missing key or value`)
      yield { op: 'put', key, value }
      continue
    }
    let parsed: unknown
    try {
      parsed = JSON.parse(line)
    } catch (err) {
      throw new ImportError(`line ${lineNumber}: not valid JSON (${(err as Error).message})`)
    }
    const record = parsed as { key?: unknown; value?: unknown; valueBase64?: unknown }
    if (typeof record.key !== 'string')
      throw new ImportError(`line ${lineNumber}: "key" must be a string`)
    if (typeof record.value === 'string') {
      yield { op: 'put', key: record.key, value: record.value }
    } else if (typeof record.valueBase64 === 'string') {
      yield { op: 'put', key: record.key, value: Buffer.from(record.valueBase64, 'base64') }
    } else {
      throw new ImportError(`line ${lineNumber}: needs "value" (a string) or "valueBase64"`)
    }
  }
}

/** A request id that is the same for the same batch content. */
function batchId(ops: BatchOp[]): string {
  const hash = createHash('sha256')
  for (const op of ops) {
    hash.update(op.key)
    hash.update('\0')
    if (op.op === 'put')
      hash.update(typeof op.value === 'string' ? Buffer.from(op.value) : op.value)
    hash.update('\0')
  }
  return `import-${hash.digest('base64url').slice(0, 32)}`
}

/** Lag of the slowest follower, as the leader sees it; refreshed at most every 200 ms. */
class LagWatch {
  private lastMs = 0
  private checkedAt = 0
  constructor(private readonly client: KvClient) {}

  async current(): Promise<number> {
    if (Date.now() - this.checkedAt < 200) return this.lastMs
    this.checkedAt = Date.now()
    try {
      const view = await this.client.cluster()
      this.lastMs = Math.max(
        0,
        ...view.members.filter((m) => m.role === 'follower' && m.connected).map((m) => m.lagMs),
      )
    } catch {
      // keep the last figure
    }
    return this.lastMs
  }
}

export async function runImport(client: KvClient, options: ImportOptions): Promise<ImportSummary> {
  const started = Date.now()
  const lag = new LagWatch(client)
  const inflight = new Set<Promise<void>>()
  let failure: unknown = null
  let records_ = 0
  let batches = 0
  let maxLagSeenMs = 0
  let throttledMs = 0
  let lastDrawn = 0
  let currentLag = 0
  const draw = (final = false) => {
    const now = Date.now()
    if (!final && now - lastDrawn < (options.progress.isTTY ? 100 : 2000)) return
    lastDrawn = now
    const seconds = Math.max(0.001, (now - started) / 1000)
    const text = `imported ${records_.toLocaleString('en-US')} records in ${batches} batches, ${Math.round(records_ / seconds).toLocaleString('en-US')}/s, follower lag ${currentLag} ms${throttledMs > 0 ? `, throttled ${(throttledMs / 1000).toFixed(1)} s` : ''}`
    if (options.progress.isTTY) options.progress.write(`\r\x1b[2K${text}${final ? '\n' : ''}`)
    else options.progress.write(`${text}\n`)
  }
  const send = async (ops: BatchOp[]) => {
    await client.batch(ops, {
      requestId: batchId(ops),
      ...(options.ack ? { ack: options.ack } : {}),
    })
    records_ += ops.length
    batches++
    draw()
  }
  let chunk: BatchOp[] = []
  const flush = async () => {
    if (chunk.length === 0) return
    // Hold back while replicas are too far behind.
    for (;;) {
      currentLag = await lag.current()
      maxLagSeenMs = Math.max(maxLagSeenMs, currentLag)
      if (currentLag <= options.maxLagMs) break
      draw()
      const pause = 100
      await new Promise((resolve) => setTimeout(resolve, pause))
      throttledMs += pause
    }
    while (inflight.size >= options.concurrency) await Promise.race(inflight)
    if (failure !== null) throw failure
    const ops = chunk
    chunk = []
    const job: Promise<void> = send(ops).then(
      () => {
        inflight.delete(job)
      },
      (err: unknown) => {
        inflight.delete(job)
        failure ??= err
      },
    )
    inflight.add(job)
  }
  for await (const op of records(options)) {
    chunk.push(op)
    if (chunk.length >= options.chunk) await flush()
  }
  await flush()
  await Promise.all(inflight)
  if (failure !== null) throw failure
  draw(true)
  return {
    records: records_,
    batches,
    seconds: (Date.now() - started) / 1000,
    maxLagSeenMs,
    throttledMs,
  }
}
