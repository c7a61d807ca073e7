/**
 * The core's view of the local log: where it starts and ends, the epoch of every position
 * (kept as runs, since epochs change rarely), how far it is durable, and a bounded cache of
 * recent encoded entries that the leader ships to followers without touching the disk.
 */
import { invariant } from './invariant.js'
import type { CoreEntry } from './types.js'

export interface EpochRun {
  epoch: number
  /** First LSN written in this epoch. */
  startLsn: number
}

export interface LogInit {
  /** First LSN still in the log (1 when nothing was compacted). */
  logStartLsn: number
  /** Epoch of the entry at logStartLsn - 1 (0 when nothing was compacted). */
  compactedEpoch: number
  lastLsn: number
  lastEpoch: number
  /** Epoch runs covering logStartLsn..lastLsn; when absent, one run of lastEpoch is assumed. */
  epochRuns?: EpochRun[]
}

/**
 * Memory an entry costs beyond its bytes (the entry object, the Uint8Array and its backing
 * store), so that the cache bound is a bound on memory and not only on payload.
 */
const entryOverheadBytes = 128

export class LogWindow {
  logStartLsn: number
  compactedEpoch: number
  lastLsn: number
  /** Highest LSN known durable on local disk. */
  persistedLsn: number
  private runs: EpochRun[]
  /** Cached entries are cache[cacheHead..]; the head moves instead of shifting the array. */
  private cache: CoreEntry[] = []
  private cacheHead = 0
  private cacheBytes = 0
  private readonly cacheBytesMax: number

  constructor(init: LogInit, cacheBytesMax: number) {
    invariant(init.logStartLsn >= 1, 'log start below 1')
    invariant(init.lastLsn >= init.logStartLsn - 1, 'log ends before it starts')
    this.logStartLsn = init.logStartLsn
    this.compactedEpoch = init.compactedEpoch
    this.lastLsn = init.lastLsn
    this.persistedLsn = init.lastLsn
    this.cacheBytesMax = cacheBytesMax
    if (init.epochRuns && init.epochRuns.length > 0) {
      this.runs = init.epochRuns.map((r) => ({ ...r }))
    } else if (init.lastLsn >= init.logStartLsn) {
      this.runs = [{ epoch: init.lastEpoch, startLsn: init.logStartLsn }]
    } else {
      this.runs = []
    }
  }

  get lastEpoch(): number {
    const last = this.runs[this.runs.length - 1]
    return last === undefined ? this.compactedEpoch : last.epoch
  }

  get epochRuns(): readonly EpochRun[] {
    return this.runs
  }

  /** Epoch of the entry at `lsn` (0 for LSN 0 of an uncompacted log), null when compacted away or past the end. */
  epochAt(lsn: number): number | null {
    // LSN 0 (before the first entry) is known only while nothing has been compacted.
    if (lsn > this.lastLsn) return null
    if (lsn === this.logStartLsn - 1) return this.compactedEpoch
    if (lsn < this.logStartLsn) return null
    for (let i = this.runs.length - 1; i >= 0; i--) {
      const run = this.runs[i] as EpochRun
      if (run.startLsn <= lsn) return run.epoch
    }
    return this.compactedEpoch
  }

  /** First LSN of the epoch run that holds `lsn` (used to skip a whole conflicting epoch). */
  epochStart(lsn: number): number {
    for (let i = this.runs.length - 1; i >= 0; i--) {
      const run = this.runs[i] as EpochRun
      if (run.startLsn <= lsn) return run.startLsn
    }
    return this.logStartLsn
  }

  /** Appends entries that continue the log. They are not durable until `persisted`. */
  append(entries: readonly CoreEntry[]): void {
    for (const entry of entries) {
      invariant(
        entry.lsn === this.lastLsn + 1,
        () => `append of ${entry.lsn} after ${this.lastLsn}`,
      )
      invariant(
        entry.epoch >= this.lastEpoch,
        () => `entry ${entry.lsn} epoch ${entry.epoch} < ${this.lastEpoch}`,
      )
      if (entry.epoch !== this.lastEpoch || this.runs.length === 0) {
        this.runs.push({ epoch: entry.epoch, startLsn: entry.lsn })
      }
      this.lastLsn = entry.lsn
      this.cache.push(entry)
      this.cacheBytes += entry.data.length + entryOverheadBytes
    }
    this.evict()
  }

  /** Removes every entry after `lsn` (the caller has checked it is not committed). */
  truncateAfter(lsn: number): void {
    invariant(
      lsn >= this.logStartLsn - 1 && lsn <= this.lastLsn,
      `truncation point ${lsn} outside the log`,
    )
    this.lastLsn = lsn
    if (this.persistedLsn > lsn) this.persistedLsn = lsn
    while (this.runs.length > 0 && (this.runs[this.runs.length - 1] as EpochRun).startLsn > lsn)
      this.runs.pop()
    while (
      this.cache.length > this.cacheHead &&
      (this.cache[this.cache.length - 1] as CoreEntry).lsn > lsn
    ) {
      this.cacheBytes -= (this.cache.pop() as CoreEntry).data.length + entryOverheadBytes
    }
  }

  /** Forgets everything and starts after a snapshot at `lsn`. */
  resetToSnapshot(lsn: number, epoch: number): void {
    this.logStartLsn = lsn + 1
    this.compactedEpoch = epoch
    this.lastLsn = lsn
    this.persistedLsn = lsn
    this.runs = []
    this.cache = []
    this.cacheHead = 0
    this.cacheBytes = 0
  }

  /** The log below `retainFromLsn` was compacted on disk. */
  compacted(retainFromLsn: number, epoch: number): void {
    if (retainFromLsn <= this.logStartLsn) return
    this.logStartLsn = retainFromLsn
    this.compactedEpoch = epoch
    while (this.runs.length > 1 && (this.runs[1] as EpochRun).startLsn <= retainFromLsn)
      this.runs.shift()
    if (this.runs[0] !== undefined && this.runs[0].startLsn < retainFromLsn)
      this.runs[0].startLsn = retainFromLsn
    if (this.lastLsn < retainFromLsn) this.runs = []
  }

  /** Local durability reached `lsn`. */
  persisted(lsn: number): void {
    if (lsn > this.persistedLsn) this.persistedLsn = Math.min(lsn, this.lastLsn)
  }

  /**
   * Cached entries from `fromLsn` on, at most `entriesMax` and about `bytesMax` (at least one
   * entry). Null when `fromLsn` is no longer cached (the caller loads it from disk); an empty
   * list when there is nothing after the log end.
   */
  cached(fromLsn: number, entriesMax: number, bytesMax: number): CoreEntry[] | null {
    if (fromLsn > this.lastLsn) return []
    const first = this.cache[this.cacheHead]
    if (first === undefined || fromLsn < first.lsn) return null
    const start = this.cacheHead + fromLsn - first.lsn
    const out: CoreEntry[] = []
    let bytes = 0
    for (let i = start; i < this.cache.length && out.length < entriesMax; i++) {
      const entry = this.cache[i] as CoreEntry
      if (out.length > 0 && bytes + entry.data.length > bytesMax) break
      out.push(entry)
      bytes += entry.data.length
    }
    return out
  }

  /** First LSN held in the cache, or lastLsn + 1 when it is empty. */
  get cacheStartLsn(): number {
    return this.cache[this.cacheHead]?.lsn ?? this.lastLsn + 1
  }

  private evict(): void {
    while (this.cacheBytes > this.cacheBytesMax && this.cache.length - this.cacheHead > 1) {
      const first = this.cache[this.cacheHead] as CoreEntry
      if (first.lsn > this.persistedLsn) break
      this.cache[this.cacheHead] = undefined as unknown as CoreEntry
      this.cacheHead++
      this.cacheBytes -= first.data.length + entryOverheadBytes
    }
    if (this.cacheHead > 4096 && this.cacheHead * 2 > this.cache.length) {
      this.cache = this.cache.slice(this.cacheHead)
      this.cacheHead = 0
    }
  }

  /** Called after persistence moved: durable entries may now leave the cache. */
  trim(): void {
    this.evict()
  }
}
