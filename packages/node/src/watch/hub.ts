/**
 * The watch hub of one node: follows this node's log through `Store.watchLog` and feeds every
 * watch stream the entries at or below the commit LSN the node knows, in LSN order.
 *
 * - Only committed entries are published. An entry a follower holds above the commit LSN may
 *   still be truncated by a new leader; it waits in `pending` (decoded, bounded in bytes) until
 *   the commit LSN covers it, and is dropped if a truncation removes it first. An entry the
 *   hub did not see appended (dropped from a full `pending`, or written before the hub
 *   existed) is read back from the log.
 * - Published entries go to a shared in-memory tail (bounded in bytes, oldest dropped first),
 *   so many watchers of one node cost one decode and one encoding per entry and shape
 *   (events.ts), not one LevelDB read each.
 * - A watcher is live (at the tail: the hub writes to it as entries are published) or
 *   catching up (behind the tail: it reads the log in chunks on its own, waiting for its
 *   stream to drain between chunks, then joins the tail).
 * - A live watcher whose unsent bytes pass `bufferBytesMax` gets a last error event
 *   (KV_ERR_WATCH_TOO_SLOW, with the last LSN it was sent) and its stream ends: nothing
 *   queues without bound.
 * - Compaction and snapshot installs move the log start: a watcher that still needs entries
 *   below it gets KV_ERR_COMPACTED with the oldest LSN left.
 */
import type { Logger } from 'pino'
import type { LogEntry } from '@kvstore/protocol'
import type { ErrorCode, ErrorDetails } from '@kvstore/protocol/errors'
import type { LogChange, Store } from '@kvstore/storage'
import { EventCache, frame, type WatchFormat } from './events.js'

export interface WatchHubOptions {
  store: Store
  /** Bytes of published entries kept in memory for watchers (0: none, every read is a log read). */
  tailBytesMax: number
  /** Unsent bytes one live watcher may have before it is cut off. */
  bufferBytesMax: number
  /** Most watchers at once. */
  watchersMax: number
  progressIntervalMs: number
  /** UNSAFE (teeth): publish entries as they are appended, not once committed. */
  unsafeApplied: boolean
  /** UNSAFE (teeth): a watch that resumes skips its first change. */
  unsafeSkipOnResume?: boolean
  logger: Logger
}

/** Where a watcher writes: a response stream (HTTP/1.1 or HTTP/2). */
export interface WatchSink {
  write(text: string): void
  end(): void
  /** Bytes written and not yet sent. */
  unsent(): number
  /** Resolves once the unsent bytes have drained (or the sink closed). */
  drained(): Promise<void>
}

/** Entries read from the log at once by a watcher that catches up. */
const catchUpEntriesMax = 512
const catchUpBytesMax = 1024 * 1024
/** A catching-up watcher waits for its stream to drain below this before the next chunk. */
const catchUpUnsentMax = 256 * 1024

/** The bytes an entry takes in memory, roughly. */
function entryBytes(entry: LogEntry): number {
  let bytes = 64
  for (const op of entry.ops) bytes += op.key.length + op.value.length + 32
  return bytes
}

export class Watcher {
  /** The next LSN this watcher may be sent (everything below it was considered). */
  nextLsn: number
  live = false
  closed = false
  /** Events sent. */
  sent = 0
  /** UNSAFE (teeth): the next change is dropped. */
  skipNext = false

  constructor(
    readonly id: number,
    readonly prefix: Buffer,
    readonly prefixText: string,
    readonly values: boolean,
    readonly format: WatchFormat,
    readonly sink: WatchSink,
    fromLsn: number,
  ) {
    this.nextLsn = fromLsn + 1
  }

  /** The position: every change up to it was sent. */
  get position(): number {
    return this.nextLsn - 1
  }
}

export interface WatchStats {
  watchers: number
  eventsSent: number
  tooSlow: number
  compacted: number
  logReads: number
  tailEntries: number
  tailBytes: number
  committedLsn: number
}

export class WatchHub {
  private readonly options: WatchHubOptions
  private readonly store: Store
  private readonly cache = new EventCache()
  /** Published entries [tailStart, published], oldest first from `tailHead`. */
  private tail: LogEntry[] = []
  private tailHead = 0
  private tailBytes = 0
  /** Highest LSN published (every entry up to it is committed, and in the log or the tail). */
  private published: number
  /** Appended entries above `published`, waiting for the commit LSN. */
  private readonly pending = new Map<number, { entry: LogEntry; bytes: number }>()
  private pendingBytes = 0
  /** The LSN up to which entries may be published (the commit LSN, or the log end if unsafe). */
  private target: number
  /** Bumped by a snapshot install: a log read started before it is stale. */
  private generation = 0
  private filling = false
  private readonly watchers = new Set<Watcher>()
  private nextId = 1
  private ticker: NodeJS.Timeout | null = null
  private stopped = false
  readonly stats = { eventsSent: 0, tooSlow: 0, compacted: 0, logReads: 0 }

  constructor(options: WatchHubOptions) {
    this.options = options
    this.store = options.store
    const meta = this.store.meta
    this.published = this.visibleLsn(meta.commitLsn, meta.appliedLsn)
    this.target = this.published
    if (options.unsafeSkipOnResume === true) {
      options.logger.error(
        '--unsafe-watch-skip-on-resume: a resumed watch skips a change (a test-only switch)',
      )
    }
    if (options.unsafeApplied) {
      options.logger.error(
        '--unsafe-watch-applied: watch streams show entries before they commit (a test-only switch); watchers may see writes that are rolled back',
      )
    }
    this.store.watchLog((change) => this.onLogChange(change))
    this.ticker = setInterval(() => this.progressAll(), options.progressIntervalMs)
    this.ticker.unref()
  }

  private visibleLsn(commitLsn: number, appliedLsn: number): number {
    return this.options.unsafeApplied ? appliedLsn : commitLsn
  }

  /** The highest LSN watchers may see now. */
  get committedLsn(): number {
    return this.published
  }

  get watcherCount(): number {
    return this.watchers.size
  }

  /** The oldest position a watch may start from (the entry after it is still in the log or tail). */
  get oldestPosition(): number {
    const first =
      this.tailHead < this.tail.length ? (this.tail[this.tailHead] as LogEntry).lsn : Infinity
    return Math.min(first, this.store.meta.logStartLsn) - 1
  }

  snapshotStats(): WatchStats {
    return {
      watchers: this.watchers.size,
      ...this.stats,
      tailEntries: this.tail.length - this.tailHead,
      tailBytes: this.tailBytes,
      committedLsn: this.published,
    }
  }

  // ------------------------------------------------------------------ the log

  private onLogChange(change: LogChange): void {
    if (this.stopped) return
    switch (change.kind) {
      case 'append': {
        for (const entry of change.entries) {
          if (entry.lsn <= this.published) continue
          const bytes = entryBytes(entry)
          // A full pending set drops the entry: it is read back from the log when it commits.
          if (this.pendingBytes + bytes > Math.max(this.options.tailBytesMax, 1024 * 1024)) continue
          const old = this.pending.get(entry.lsn)
          if (old !== undefined) this.pendingBytes -= old.bytes
          this.pending.set(entry.lsn, { entry, bytes })
          this.pendingBytes += bytes
        }
        this.target = Math.max(
          this.target,
          this.visibleLsn(change.commitLsn, this.store.meta.appliedLsn),
        )
        this.advance()
        return
      }
      case 'truncate': {
        for (const [lsn, p] of this.pending) {
          if (lsn > change.afterLsn) {
            this.pending.delete(lsn)
            this.pendingBytes -= p.bytes
          }
        }
        if (this.options.unsafeApplied && this.published > change.afterLsn) {
          // Only the unsafe switch can have published what is now removed.
          while (this.tail.length > this.tailHead) {
            const last = this.tail[this.tail.length - 1] as LogEntry
            if (last.lsn <= change.afterLsn) break
            this.tail.pop()
            this.tailBytes -= entryBytes(last)
          }
          this.published = change.afterLsn
          this.target = change.afterLsn
        }
        return
      }
      case 'compact':
        return
      case 'reset': {
        // A snapshot install: the log now starts after the snapshot, and nothing before it
        // can be read any more. Watchers that still need those entries get KV_ERR_COMPACTED.
        this.generation++
        this.pending.clear()
        this.pendingBytes = 0
        this.tail = []
        this.tailHead = 0
        this.tailBytes = 0
        this.published = change.logStartLsn - 1
        this.target = this.visibleLsn(change.commitLsn, this.store.meta.appliedLsn)
        for (const w of this.watchers) {
          if (w.nextLsn < change.logStartLsn) this.compactedError(w)
        }
        this.advance()
        return
      }
    }
  }

  /** Publishes every entry up to the target it holds; reads the rest from the log. */
  private advance(): void {
    this.advanceFromPending()
    if (this.published < this.target) void this.fill()
  }

  private pushTail(entry: LogEntry, bytes: number): void {
    this.tail.push(entry)
    this.tailBytes += bytes
    this.published = entry.lsn
  }

  /** Drops the oldest tail entries past the byte bound (after every live watcher got them). */
  private trimTail(): void {
    while (this.tailBytes > this.options.tailBytesMax && this.tailHead < this.tail.length) {
      const first = this.tail[this.tailHead] as LogEntry
      this.tail[this.tailHead] = undefined as unknown as LogEntry
      this.tailHead++
      this.tailBytes -= entryBytes(first)
    }
    if (this.tailHead > 1024 && this.tailHead * 2 > this.tail.length) {
      this.tail = this.tail.slice(this.tailHead)
      this.tailHead = 0
    }
  }

  /** Reads committed entries the hub did not see appended, from the log, in order. */
  private async fill(): Promise<void> {
    if (this.filling) return
    this.filling = true
    try {
      while (!this.stopped) {
        this.advanceFromPending()
        if (this.published >= this.target) break
        const generation = this.generation
        const from = this.published + 1
        const logStart = this.store.meta.logStartLsn
        if (from < logStart) {
          this.skipTo(logStart - 1)
          continue
        }
        const entries = await this.store.readLog(from, {
          entriesMax: catchUpEntriesMax,
          bytesMax: catchUpBytesMax,
        })
        this.stats.logReads++
        if (generation !== this.generation || this.published !== from - 1) continue
        const before = this.published
        for (const entry of entries) {
          if (entry.lsn > this.target) break
          const p = this.pending.get(entry.lsn)
          if (p !== undefined) {
            this.pending.delete(entry.lsn)
            this.pendingBytes -= p.bytes
          }
          this.pushTail(entry, entryBytes(entry))
        }
        if (this.published > before) this.deliver(before)
        if (entries.length === 0) break
      }
    } catch (err) {
      if (!this.stopped && !this.store.isClosing) {
        this.options.logger.warn(
          { err: (err as Error).message, fromLsn: this.published + 1 },
          'watch: reading the log failed; retrying',
        )
        setTimeout(() => this.advance(), 100).unref()
      }
    } finally {
      this.filling = false
    }
  }

  /**
   * The entries up to `lsn` are gone from the log before the hub could read them (it fell
   * behind a compaction): live watchers that needed them are told so; the tail starts over.
   */
  private skipTo(lsn: number): void {
    for (const w of this.watchers) if (w.nextLsn <= lsn) this.compactedError(w)
    this.tail = []
    this.tailHead = 0
    this.tailBytes = 0
    this.published = lsn
  }

  private advanceFromPending(): void {
    const before = this.published
    while (this.published < this.target) {
      const p = this.pending.get(this.published + 1)
      if (p === undefined) break
      this.pending.delete(this.published + 1)
      this.pendingBytes -= p.bytes
      this.pushTail(p.entry, p.bytes)
    }
    if (this.published > before) this.deliver(before)
  }

  // ------------------------------------------------------------------ watchers

  /**
   * Starts a watch from `fromLsn` (changes after it). Throws KV_ERR_COMPACTED when the log no
   * longer holds the entry after it, and KV_ERR_WATCHERS_TOO_MANY past `watchersMax`; the
   * caller checks both before it starts a stream with `canStart`.
   */
  problem(fromLsn: number): { code: ErrorCode; message: string; details: ErrorDetails } | null {
    if (this.watchers.size >= this.options.watchersMax) {
      return {
        code: 'KV_ERR_WATCHERS_TOO_MANY',
        message: `this node serves ${this.watchers.size} watches, its limit (watchersMax); watch on another member`,
        details: { watchersMax: this.options.watchersMax },
      }
    }
    const oldest = this.oldestPosition
    if (fromLsn < oldest) {
      return {
        code: 'KV_ERR_COMPACTED',
        message: `changes after ${fromLsn} were compacted away; the oldest position this node can watch from is ${oldest}`,
        details: { fromLsn, oldestLsn: oldest + 1, fromLsnMin: oldest },
      }
    }
    return null
  }

  add(
    prefix: Buffer,
    prefixText: string,
    values: boolean,
    format: WatchFormat,
    sink: WatchSink,
    fromLsn: number,
  ): Watcher {
    const w = new Watcher(this.nextId++, prefix, prefixText, values, format, sink, fromLsn)
    if (this.options.unsafeSkipOnResume === true && fromLsn > 0) w.skipNext = true
    this.watchers.add(w)
    this.progress(w)
    this.startCatchUp(w)
    return w
  }

  remove(w: Watcher): void {
    w.closed = true
    this.watchers.delete(w)
  }

  /** Ends every stream (shutdown), each with a last error event naming its position. */
  stop(code: ErrorCode, message: string): void {
    this.stopped = true
    if (this.ticker) clearInterval(this.ticker)
    for (const w of [...this.watchers]) this.endWith(w, code, message, {})
  }

  /** The first tail LSN (or published + 1 when the tail is empty). */
  private get tailStart(): number {
    return this.tailHead < this.tail.length
      ? (this.tail[this.tailHead] as LogEntry).lsn
      : this.published + 1
  }

  /** Sends the tail entries after `before` to every live watcher. */
  private deliver(before: number): void {
    const start = this.tailStart
    for (const w of this.watchers) {
      if (!w.live || w.closed) continue
      const from = Math.max(w.nextLsn, before + 1)
      if (from > this.published) continue
      // Past its buffer: cut off (the events written so far still reach it, then the error).
      if (w.sink.unsent() > this.options.bufferBytesMax) {
        this.tooSlow(w)
        continue
      }
      this.sendTail(w, from - start)
    }
    this.trimTail()
  }

  /** Writes the tail from index `offset` (relative to the tail's head) to `w`. */
  private sendTail(w: Watcher, offset: number): void {
    this.sendEntries(w, this.tail, this.tailHead + Math.max(0, offset))
  }

  /**
   * Writes to `w`, in one write, the events of `entries` from index `from` on that it has not
   * had yet (below its next LSN: skipped), up to the published LSN (the log may hold more).
   */
  private sendEntries(w: Watcher, entries: readonly LogEntry[], from: number): void {
    let text = ''
    let count = 0
    for (let i = from; i < entries.length; i++) {
      const entry = entries[i] as LogEntry
      if (entry.lsn > this.published) break
      if (entry.lsn < w.nextLsn) continue
      const framed = this.cache.framed(entry, w.prefix, w.prefixText, w.values, w.format)
      if (framed !== '' && w.skipNext) w.skipNext = false
      else if (framed !== '') {
        text += framed
        count++
      }
      w.nextLsn = entry.lsn + 1
    }
    if (text !== '') {
      w.sink.write(text)
      w.sent += count
      this.stats.eventsSent += count
    }
  }

  /**
   * Brings a new watcher to the tail: from the log while it is behind the tail's start, then
   * live. The log is read in chunks; between chunks the stream drains.
   */
  private startCatchUp(w: Watcher): void {
    const run = async (): Promise<void> => {
      while (!w.closed && !this.stopped) {
        if (w.nextLsn >= this.tailStart || w.nextLsn > this.published) {
          // At (or ahead of) the tail: live from now on; the tail's part it lacks goes now.
          w.live = true
          if (w.nextLsn <= this.published) this.sendTail(w, w.nextLsn - this.tailStart)
          return
        }
        if (w.nextLsn < this.store.meta.logStartLsn) {
          this.compactedError(w)
          return
        }
        const generation = this.generation
        const entries = await this.store.readLog(w.nextLsn, {
          entriesMax: catchUpEntriesMax,
          bytesMax: catchUpBytesMax,
        })
        this.stats.logReads++
        if (w.closed || generation !== this.generation) continue
        this.sendEntries(w, entries, 0)
        if (w.sink.unsent() > catchUpUnsentMax) await w.sink.drained()
      }
    }
    run().catch((err: unknown) => {
      if (w.closed) return
      if (w.nextLsn < this.store.meta.logStartLsn) {
        this.compactedError(w)
        return
      }
      this.options.logger.warn({ err: (err as Error).message }, 'watch: catching up failed')
      this.endWith(w, 'KV_ERR_UNAVAILABLE', 'this node could not read its log; watch again', {})
    })
  }

  private progress(w: Watcher): void {
    if (w.closed) return
    const body = { type: 'progress', lsn: w.position, commitLsn: this.published }
    w.sink.write(frame(w.format, 'progress', w.position, body))
  }

  private progressAll(): void {
    for (const w of this.watchers) {
      if (w.live && w.sink.unsent() > this.options.bufferBytesMax) this.tooSlow(w)
      else this.progress(w)
    }
  }

  private tooSlow(w: Watcher): void {
    this.stats.tooSlow++
    this.endWith(
      w,
      'KV_ERR_WATCH_TOO_SLOW',
      `this watcher fell more than ${this.options.bufferBytesMax} bytes behind; watch again from lsn ${w.position}`,
      { bufferBytesMax: this.options.bufferBytesMax },
    )
  }

  private compactedError(w: Watcher): void {
    this.stats.compacted++
    const logStart = this.store.meta.logStartLsn
    this.endWith(
      w,
      'KV_ERR_COMPACTED',
      `changes after ${w.position} were compacted away; the oldest position this node can watch from is ${logStart - 1}`,
      { oldestLsn: logStart, fromLsnMin: logStart - 1 },
    )
  }

  /** Writes a last error event (with the watcher's position) and ends the stream. */
  endWith(w: Watcher, code: ErrorCode, message: string, details: ErrorDetails): void {
    if (w.closed) return
    const body = { type: 'error', error: { code, message, lsn: w.position, ...details } }
    w.sink.write(frame(w.format, 'error', null, body))
    this.remove(w)
    w.sink.end()
  }
}
