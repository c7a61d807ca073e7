/**
 * `kv import FILE`: bulk loading through the SDK.
 *
 * The file is read as a stream (NDJSON lines of {"key", "value"} or {"key", "valueBase64"},
 * or CSV with `key` and `value` columns) and written in atomic batches, a few in flight. It
 * throttles itself on replication lag: whenever the slowest follower lags more than
 * `maxLagMs`, it stops sending until it is back under, so an import never pushes replicas
 * minutes behind. Each batch has its own request id (this run's id and the batch's number), so
 * the SDK's retries of a batch, after a lost answer or a moved leader, apply it once. Running
 * the import again writes everything again, which leaves the same values.
 */
import { randomUUID } from 'node:crypto'
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
  /** Keys of the batches in flight, with how many batches hold each. */
  const inflightKeys = new Map<string, number>()
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
  const runId = randomUUID()
  let sequence = 0
  const send = async (ops: BatchOp[]) => {
    await client.batch(ops, {
      // Not derived from the content: two equal batches in one file must both apply, or a
      // key written in between would keep the wrong value.
      requestId: `import-${runId}-${sequence++}`,
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
    // A key in a batch still in flight waits for it: batches in flight may be applied in any
    // order, and a key that appears twice in the file must end with its later value.
    while (chunk.some((op) => inflightKeys.has(op.key))) await Promise.race(inflight)
    if (failure !== null) throw failure
    const ops = chunk
    chunk = []
    for (const op of ops) inflightKeys.set(op.key, (inflightKeys.get(op.key) ?? 0) + 1)
    const done = () => {
      inflight.delete(job)
      for (const op of ops) {
        const left = (inflightKeys.get(op.key) ?? 1) - 1
        if (left === 0) inflightKeys.delete(op.key)
        else inflightKeys.set(op.key, left)
      }
    }
    const job: Promise<void> = send(ops).then(done, (err: unknown) => {
      done()
      failure ??= err
    })
    inflight.add(job)
  }
  let inputError: unknown = null
  try {
    for await (const op of records(options)) {
      chunk.push(op)
      if (chunk.length >= options.chunk) await flush()
    }
  } catch (err) {
    // A bad line (or an unreadable file) ends the input: what came before it is still
    // written, so the error means "everything before line N is in".
    inputError = err
  }
  await flush()
  await Promise.all(inflight)
  if (failure !== null) throw failure
  if (inputError !== null) {
    draw(true)
    throw inputError
  }
  draw(true)
  return {
    records: records_,
    batches,
    seconds: (Date.now() - started) / 1000,
    maxLagSeenMs,
    throttledMs,
  }
}
