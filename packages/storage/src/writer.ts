/**
 * The store's one writer. Appends and metadata updates queue up while the previous batch is on
 * its way to disk, then share the next LevelDB batch and its single fsync (group commit).
 * Exclusive jobs (truncation, compaction, snapshot install) run alone, in order with the rest.
 */
import {
  DecodeError,
  KvError,
  encodeLogEntry,
  limitsDefault,
  type LogEntry,
} from '@kvstore/protocol'
import { BatchBuilder } from './apply.js'
import type { StoreContext } from './context.js'
import { storageFailedError } from './disk.js'
import { InvariantError, StorageError, invariant } from './invariant.js'
import { storageLimits } from './limits.js'
import type { BatchStats, EncodedEntries, HardStateUpdate, StoreOptions } from './types.js'

interface AppendJob {
  kind: 'append'
  append: EncodedEntries
  commitLsn: number | undefined
  bytes: number
  resolve: () => void
  reject: (err: Error) => void
}

interface MetaJob {
  kind: 'meta'
  update: HardStateUpdate
  bytes: number
  resolve: () => void
  reject: (err: Error) => void
}

interface ExclusiveJob {
  kind: 'exclusive'
  run: () => Promise<void>
  bytes: number
  resolve: () => void
  reject: (err: Error) => void
}

type Job = AppendJob | MetaJob | ExclusiveJob

/** Encodes (and thereby checks) log entries for an append. */
export function encodeEntries(entries: LogEntry[]): EncodedEntries {
  const encoded = entries.map((entry) => encodeLogEntry(entry))
  let bytes = 0
  for (const e of encoded) bytes += e.length
  return { entries, encoded, bytes }
}

/** Throws a StorageError unless `value` is an integer in [1, max]. */
export function checkPositiveInteger(name: string, value: number, max: number): void {
  if (!Number.isSafeInteger(value) || value < 1 || value > max) {
    throw new StorageError(`${name} must be an integer from 1 to ${max}, got ${value}`)
  }
}

export class Writer {
  readonly fsync: boolean
  readonly groupCommitWritesMax: number
  readonly groupCommitBytesMax: number
  readonly writeQueueWritesMax: number
  readonly writeQueueBytesMax: number

  private readonly ctx: StoreContext
  private readonly onBatch: ((stats: BatchStats) => void) | undefined
  private readonly queue: Job[] = []
  private queueHead = 0
  private queuedWrites = 0
  private queuedBytes = 0
  private draining = false
  private drainScheduled = false
  private idleWaiters: (() => void)[] = []

  constructor(ctx: StoreContext, options: StoreOptions) {
    this.ctx = ctx
    this.fsync = options.fsync ?? true
    this.groupCommitWritesMax = options.groupCommitWritesMax ?? limitsDefault.groupCommitWritesMax
    this.groupCommitBytesMax = options.groupCommitBytesMax ?? limitsDefault.groupCommitBytesMax
    this.writeQueueWritesMax = options.writeQueueWritesMax ?? limitsDefault.writeQueueWritesMax
    this.writeQueueBytesMax = options.writeQueueBytesMax ?? limitsDefault.writeQueueBytesMax
    this.onBatch = options.onBatch
    // When the store fails, everything still queued is refused.
    ctx.onFailure((err) => this.rejectQueued(storageFailedError(err)))
  }

  /** Writes waiting for the writer, and their bytes. */
  get queueDepth(): { writes: number; bytes: number } {
    return { writes: this.queuedWrites, bytes: this.queuedBytes }
  }

  /**
   * Throws the error an append of `bytes` would be refused with right now (storage failed,
   * closing, or the write queue full), so a caller can refuse a write before giving it an LSN.
   */
  admit(bytes: number): void {
    const ctx = this.ctx
    if (ctx.failure) throw storageFailedError(ctx.failure)
    if (ctx.closing) throw new KvError('KV_ERR_SHUTTING_DOWN', 'storage is closing')
    if (
      this.queuedWrites + 1 > this.writeQueueWritesMax ||
      this.queuedBytes + bytes > this.writeQueueBytesMax
    ) {
      throw new KvError('KV_ERR_OVERLOADED', 'too many writes are waiting for the disk', {
        queuedWrites: this.queuedWrites,
        queuedBytes: this.queuedBytes,
      })
    }
  }

  /** Queues an append; resolves once its batch is durable. */
  append(append: EncodedEntries, commitLsn: number | undefined): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.enqueue({ kind: 'append', append, commitLsn, bytes: append.bytes, resolve, reject })
    })
  }

  /** Queues a metadata update; resolves once its batch is durable. */
  setHardState(update: HardStateUpdate): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.enqueue({ kind: 'meta', update, bytes: storageLimits.metaJobBytes, resolve, reject })
    })
  }

  /** Runs `run` alone in the writer, in order with every other write. */
  exclusive<T>(run: () => Promise<T>): Promise<T> {
    let result: T
    return new Promise<void>((resolve, reject) => {
      this.enqueue({
        kind: 'exclusive',
        bytes: 0,
        run: async () => {
          result = await run()
        },
        resolve,
        reject,
      })
    }).then(() => result)
  }

  /** Resolves once no write is queued or in flight. */
  whenIdle(): Promise<void> {
    if (!this.draining && this.queueHead === this.queue.length) return Promise.resolve()
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  private enqueue(job: Job): void {
    const ctx = this.ctx
    try {
      if (job.kind === 'append') this.admit(job.bytes)
      else if (ctx.failure) throw storageFailedError(ctx.failure)
      else if (ctx.closing) throw new KvError('KV_ERR_SHUTTING_DOWN', 'storage is closing')
    } catch (err) {
      job.reject(err as Error)
      return
    }
    if (job.kind === 'append') {
      this.queuedWrites++
      this.queuedBytes += job.bytes
    }
    this.queue.push(job)
    if (!this.draining && !this.drainScheduled) {
      // Let every write that arrives in this turn of the event loop join the first batch.
      this.drainScheduled = true
      setImmediate(() => {
        this.drainScheduled = false
        void this.drain()
      })
    }
  }

  private takeJob(): Job | undefined {
    if (this.queueHead >= this.queue.length) return undefined
    const job = this.queue[this.queueHead]
    this.queue[this.queueHead] = undefined as unknown as Job
    this.queueHead++
    if (
      this.queueHead > storageLimits.writerQueueHeadEntriesMax &&
      this.queueHead * 2 > this.queue.length
    ) {
      this.queue.splice(0, this.queueHead)
      this.queueHead = 0
    }
    if (job?.kind === 'append') {
      this.queuedWrites--
      this.queuedBytes -= job.bytes
      invariant(
        this.queuedWrites >= 0 && this.queuedBytes >= 0,
        'the write queue counts went negative',
      )
    }
    return job
  }

  private peekJob(): Job | undefined {
    return this.queueHead < this.queue.length ? this.queue[this.queueHead] : undefined
  }

  private rejectQueued(err: Error): void {
    for (let job = this.takeJob(); job !== undefined; job = this.takeJob()) job.reject(err)
  }

  private async drain(): Promise<void> {
    if (this.draining) return
    this.draining = true
    const ctx = this.ctx
    try {
      while (this.peekJob() !== undefined) {
        if (ctx.failure) {
          this.rejectQueued(storageFailedError(ctx.failure))
          break
        }
        const head = this.peekJob()
        if (head?.kind === 'exclusive') {
          this.takeJob()
          try {
            await head.run()
            head.resolve()
          } catch (err) {
            head.reject(err as Error)
            // A refused call (a broken precondition, a malformed record from a peer) leaves
            // the store as it was; anything else is an I/O failure.
            if (!(err instanceof InvariantError) && !(err instanceof DecodeError))
              ctx.fail(err as Error)
          }
          continue
        }
        await this.writeGroup()
      }
    } finally {
      this.draining = false
      if (this.peekJob() === undefined) {
        const waiters = this.idleWaiters
        this.idleWaiters = []
        for (const resolve of waiters) resolve()
      } else {
        void this.drain()
      }
    }
  }

  /** Builds one batch from the queued appends and meta updates, writes it, resolves them. */
  private async writeGroup(): Promise<void> {
    const ctx = this.ctx
    const chained = ctx.db.batch()
    const builder = new BatchBuilder(ctx, chained)
    const members: (AppendJob | MetaJob)[] = []
    let entries = 0
    let bytes = 0
    for (;;) {
      const job = this.peekJob()
      if (job === undefined || job.kind === 'exclusive') break
      if (job.kind === 'append' && members.length > 0) {
        if (entries + job.append.entries.length > this.groupCommitWritesMax) break
        if (bytes + job.bytes > this.groupCommitBytesMax) break
      }
      this.takeJob()
      try {
        if (job.kind === 'append') {
          builder.addAppend(job.append, job.commitLsn)
          entries += job.append.entries.length
          bytes += job.bytes
        } else {
          builder.addMeta(job.update)
        }
        members.push(job)
      } catch (err) {
        // The job broke an invariant (a gap, a lower epoch): refuse it and stop the store,
        // because the caller's view of the log is wrong.
        job.reject(err as Error)
        ctx.fail(err as Error)
        for (const member of members) member.reject(storageFailedError(err as Error))
        await chained.close()
        return
      }
    }
    if (members.length === 0) {
      await chained.close()
      return
    }
    const started = performance.now()
    try {
      await builder.finish().write({ sync: this.fsync })
    } catch (err) {
      const failure = new StorageError(`batch write failed: ${(err as Error).message}`, {
        cause: err,
      })
      ctx.fail(failure)
      for (const member of members) member.reject(storageFailedError(failure))
      return
    }
    const durationMs = performance.now() - started
    ctx.state = builder.next
    builder.applyToCache(ctx.cache)
    if (builder.reservedKeys.length > 0) ctx.reservedChanged(builder.reservedKeys)
    for (const member of members) member.resolve()
    ctx.logChanged({
      kind: 'append',
      entries:
        members.length === 1 && members[0]?.kind === 'append'
          ? members[0].append.entries
          : members.flatMap((m) => (m.kind === 'append' ? m.append.entries : [])),
      commitLsn: ctx.state.commitLsn,
    })
    this.onBatch?.({ entries, writers: members.length, bytes, durationMs })
  }
}
