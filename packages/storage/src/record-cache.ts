/**
 * A bounded LRU cache of decoded state records, in front of LevelDB.
 *
 * It holds what is read, not what is written: a committed write updates (or removes) a key
 * only if the key is already cached, so a write-heavy load does not churn it. It stays exact:
 *   - the writer applies every committed batch to it, in the same turn of the event loop as
 *     the store's own state;
 *   - a read that misses fills it only if no write of that key landed while the read was in
 *     flight and the cache was not cleared meanwhile (truncation): either marks the pending
 *     fill stale.
 */
import type { StoredRecord } from '@kvstore/protocol'
import { storageLimits } from './limits.js'

/** Bytes charged per entry on top of its key and value. */
const entryOverheadBytes = storageLimits.readCacheEntryOverheadBytes

/** A read in flight whose result may fill the cache. */
interface PendingFill {
  readers: number
  stale: boolean
}

export class RecordCache {
  readonly bytesMax: number
  private readonly entries = new Map<string, StoredRecord>()
  private readonly pending = new Map<string, PendingFill>()
  private bytes = 0
  hits = 0
  misses = 0

  constructor(bytesMax: number) {
    this.bytesMax = bytesMax
  }

  get size(): { entries: number; bytes: number } {
    return { entries: this.entries.size, bytes: this.bytes }
  }

  /**
   * The cached record, refreshed as most recently used; undefined when not cached. With
   * `countMiss` false a miss is not counted (the caller's fallback read will count it).
   */
  get(id: string, countMiss = true): StoredRecord | undefined {
    const record = this.entries.get(id)
    if (record === undefined) {
      if (countMiss) this.misses++
      return undefined
    }
    this.hits++
    this.entries.delete(id)
    this.entries.set(id, record)
    return record
  }

  has(id: string): boolean {
    return this.entries.has(id)
  }

  /** Registers a read of `id` that is about to go to LevelDB. Pair with `endFill`. */
  beginFill(id: string): void {
    const pending = this.pending.get(id)
    if (pending) pending.readers++
    else this.pending.set(id, { readers: 1, stale: false })
  }

  /**
   * Ends a read registered with `beginFill`: caches its record unless a write of the key
   * landed meanwhile or the cache was cleared (either marks it stale), or the key is absent.
   */
  endFill(id: string, record: StoredRecord | null): void {
    const pending = this.pending.get(id)
    if (pending === undefined) return
    if (--pending.readers === 0) this.pending.delete(id)
    if (record !== null && !pending.stale && !this.entries.has(id)) {
      this.insert(id, record)
    }
  }

  /** A read made synchronously (no write can have landed during it) fills the cache. */
  fillSync(id: string, record: StoredRecord): void {
    if (!this.entries.has(id)) this.insert(id, record)
  }

  /** A committed write of `id`: updates a cached entry, and makes pending fills stale. */
  written(id: string, record: StoredRecord | null): void {
    const pending = this.pending.get(id)
    if (pending) pending.stale = true
    if (!this.entries.has(id)) return
    if (record === null) this.remove(id)
    else this.insert(id, record)
  }

  /** A copy of every entry, for consistency checks. */
  entriesForCheck(): [string, StoredRecord][] {
    return [...this.entries]
  }

  /** Drops everything, and makes every pending fill stale (used by truncation). */
  clear(): void {
    this.entries.clear()
    this.bytes = 0
    for (const pending of this.pending.values()) pending.stale = true
  }

  private insert(id: string, record: StoredRecord): void {
    if (this.bytesMax === 0) return
    const cost = id.length + record.value.length + entryOverheadBytes
    this.remove(id)
    if (cost > this.bytesMax) return
    this.entries.set(id, record)
    this.bytes += cost
    if (this.bytes > this.bytesMax) {
      for (const [oldId, old] of this.entries) {
        if (this.bytes <= this.bytesMax) break
        this.entries.delete(oldId)
        this.bytes -= oldId.length + old.value.length + entryOverheadBytes
      }
    }
  }

  private remove(id: string): void {
    const previous = this.entries.get(id)
    if (previous === undefined) return
    this.entries.delete(id)
    this.bytes -= id.length + previous.value.length + entryOverheadBytes
  }
}
