/**
 * Pure pieces of the watch suite (watch.ts), kept apart so that they have unit tests: reading
 * the NDJSON lines of GET /v1/watch cheaply (a thousand watchers each parse every event, in the
 * one bench process, so no JSON.parse per change), and the bench's key format, which carries the
 * phase, the write's sequence number and the time it was sent (performance.now() of this
 * process, so the watcher's arrival time compares with it on the same clock).
 */

export type WatchLine =
  | { kind: 'change'; lsn: number; key: string }
  | { kind: 'progress'; lsn: number }
  | { kind: 'error'; code: string; lsn: number | null }
  | { kind: 'other' }

/** Where the digits starting at `at` in `line` end. */
function numberEnd(line: string, at: number): number {
  let end = at
  while (end < line.length) {
    const c = line.charCodeAt(end)
    if (c < 48 || c > 57) break
    end++
  }
  return end
}

/** The digits of a whole number starting at `at` in `line`, or NaN. */
function numberAt(line: string, at: number): number {
  const end = numberEnd(line, at)
  return end === at ? NaN : Number(line.slice(at, end))
}

const lsnField = '"lsn":'
const keyField = '"key":"'

/**
 * One NDJSON line of a watch stream. A put or delete is read by position (its `key` and `lsn`
 * fields; the bench's keys need no JSON escapes), a batch or expire is reported as `other`
 * (the bench writes neither), an error is parsed whole (one per stream at most).
 */
export function parseWatchLine(line: string): WatchLine {
  if (line.startsWith('{"type":"put"') || line.startsWith('{"type":"delete"')) {
    const k = line.indexOf(keyField)
    if (k < 0) return { kind: 'other' }
    const keyStart = k + keyField.length
    const keyEnd = line.indexOf('"', keyStart)
    const l = line.indexOf(lsnField, keyEnd)
    if (keyEnd < 0 || l < 0) return { kind: 'other' }
    const lsn = numberAt(line, l + lsnField.length)
    if (Number.isNaN(lsn)) return { kind: 'other' }
    return { kind: 'change', lsn, key: line.slice(keyStart, keyEnd) }
  }
  if (line.startsWith('{"type":"progress"')) {
    const l = line.indexOf(lsnField)
    const lsn = l < 0 ? NaN : numberAt(line, l + lsnField.length)
    return Number.isNaN(lsn) ? { kind: 'other' } : { kind: 'progress', lsn }
  }
  if (line.startsWith('{"type":"error"')) {
    try {
      const body = JSON.parse(line) as { error?: { code?: string; lsn?: number } }
      return {
        kind: 'error',
        code: body.error?.code ?? 'unknown',
        lsn: typeof body.error?.lsn === 'number' ? body.error.lsn : null,
      }
    } catch {
      return { kind: 'error', code: 'unparsable', lsn: null }
    }
  }
  return { kind: 'other' }
}

/**
 * Splits a stream's text into lines: `feed` returns the complete lines of `text` after what
 * was left over from the last call, and keeps the rest.
 */
export class LineSplitter {
  private rest = ''

  feed(text: string): string[] {
    const all = this.rest === '' ? text : this.rest + text
    const lines = all.split('\n')
    this.rest = lines.pop() ?? ''
    return lines.filter((l) => l !== '')
  }
}

/** The bench's key for write `seq` of phase `phase`, sent at `sentAtMs`. */
export function benchKey(prefix: string, phase: number, seq: number, sentAtMs: number): string {
  return `${prefix}${phase}/${seq}/${sentAtMs.toFixed(3)}`
}

/** The phase and send time of a bench key (null when it is not one); read without allocating much. */
export function readBenchKey(
  prefix: string,
  key: string,
): { phase: number; seq: number; sentAtMs: number } | null {
  if (!key.startsWith(prefix)) return null
  const a = key.indexOf('/', prefix.length)
  const b = a < 0 ? -1 : key.indexOf('/', a + 1)
  if (b < 0 || key.indexOf('/', b + 1) >= 0) return null
  const phase = numberAt(key, prefix.length)
  const seq = numberAt(key, a + 1)
  const sentAtMs = Number(key.slice(b + 1))
  if (numberEnd(key, prefix.length) !== a || numberEnd(key, a + 1) !== b) return null
  if (Number.isNaN(phase) || Number.isNaN(seq) || !Number.isFinite(sentAtMs)) return null
  return { phase, seq, sentAtMs }
}

/**
 * What one watcher received: per phase, the changes counted; which writes (by sequence number)
 * it saw; and the changes that broke the stream's promises (each change once, in LSN order):
 * one whose LSN was not above the previous one's, or a write seen twice.
 */
export class WatcherTally {
  readonly received: number[]
  /** seen[seq] is 1 once write `seq` arrived. */
  private seen = new Uint8Array(1024)
  /** Changes at or below the LSN of the change before them. */
  outOfOrder = 0
  /** Writes that arrived more than once. */
  duplicates = 0
  lastLsn = 0

  constructor(phases: number) {
    this.received = Array.from({ length: phases }, () => 0)
  }

  change(phase: number, seq: number, lsn: number): void {
    if (lsn <= this.lastLsn) this.outOfOrder++
    else this.lastLsn = lsn
    if (seq >= this.seen.length) {
      let size = this.seen.length
      while (size <= seq) size *= 2
      const grown = new Uint8Array(size)
      grown.set(this.seen)
      this.seen = grown
    }
    if (this.seen[seq] === 1) this.duplicates++
    this.seen[seq] = 1
    if (phase >= 0 && phase < this.received.length)
      this.received[phase] = (this.received[phase] ?? 0) + 1
  }

  has(seq: number): boolean {
    return seq < this.seen.length && this.seen[seq] === 1
  }
}

/**
 * Against the writes acknowledged in a phase (their sequence numbers): watchers that saw every
 * one, acknowledged writes missed (summed over watchers), and changes beyond them (writes that
 * failed at the writer yet committed, or duplicates).
 */
export function completeness(
  tallies: readonly WatcherTally[],
  phase: number,
  acknowledged: readonly number[],
): { complete: number; missing: number; extra: number; watchersShort: number } {
  let complete = 0
  let missing = 0
  let extra = 0
  for (const t of tallies) {
    let short = 0
    for (const seq of acknowledged) if (!t.has(seq)) short++
    if (short === 0) complete++
    missing += short
    extra += Math.max(0, (t.received[phase] ?? 0) - (acknowledged.length - short))
  }
  return { complete, missing, extra, watchersShort: tallies.length - complete }
}
