/**
 * The replicator's disk side of the core's Ready, as etcd's `raftNode` does with its WAL:
 * persists the hard state, a truncation and new entries in that order, and only then sends the
 * messages that depend on them; reads old entries for a follower that is behind. Every store
 * write started here is tracked, so that stopping can wait for them before storage closes.
 */
import type { Logger } from 'pino'
import type { CoreEntry, Message, Ready, ReplicaCore } from '@kvstore/core'
import { decodeLogEntry, type LogEntry } from '@kvstore/protocol'
import type { EncodedEntries, Store } from '@kvstore/storage'
import { replicationLimits } from '../limits.js'

export interface LogIoOptions {
  store: Store
  core: Pick<ReplicaCore, 'persisted' | 'entriesLoaded' | 'compacted'>
  /** Entries already decoded (taken from a frame), to avoid decoding twice; used once. */
  decoded: WeakMap<CoreEntry, LogEntry>
  /** Sends a message that waited for the writes. */
  send: (message: Message) => void
  /** The core may have something new to do. */
  schedule: () => void
  /** A store write failed: the node cannot go on. */
  onFatal: (err: Error) => void
  stopped: () => boolean
  /** Most bytes of entries read for a follower at once. */
  loadBytesMax: number
  /** How long to wait before reading again after a failed read. */
  loadRetryMs: number
  logger: Logger
}

/** Most entries read for a follower at once: one append frame's worth. */
const loadEntriesMax = replicationLimits.appendEntriesMax

export class LogIo {
  /** Store writes started here and not seen to finish. */
  private readonly pending = new Set<Promise<unknown>>()
  /**
   * Settles once every write queued so far is durable. The store has one writer that takes
   * writes in order, so the latest write queued settles after every earlier one.
   */
  private queued: Promise<unknown> = Promise.resolve()
  /** Whether `queued` has settled: nothing is in flight, and messages may go at once. */
  private queuedSettled = true

  constructor(private readonly options: LogIoOptions) {}

  /** Tracks a store write started here, so `settled` can wait for it. */
  track<T>(write: Promise<T>): Promise<T> {
    this.pending.add(write)
    const done = () => this.pending.delete(write)
    write.then(done, done)
    return write
  }

  /** Resolves once every write started so far has finished (or failed). */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.pending])
  }

  private fatal(err: unknown): void {
    if (!this.options.stopped()) this.options.onFatal(err as Error)
  }

  /**
   * Persists a Ready's hard state, truncation and entries in order. What waited on persistence
   * (`sendAfterPersist`) goes out once the hard state and every earlier write are durable, not
   * waiting for this Ready's entries: those messages carry an epoch or a vote (durable with the
   * hard state) or acknowledge entries already durable (the core reports a match only from its
   * persisted LSN), never the entries this Ready adds. So a follower's acknowledgement is not
   * held back by the fsync of the next batch, which pipelined replication keeps in flight.
   */
  persist(ready: Ready): void {
    const { store, logger } = this.options
    const meta = store.meta
    const hard = ready.hardState
    const writes: Promise<unknown>[] = []
    if (hard && (hard.epoch !== meta.epoch || hard.vote !== meta.vote)) {
      writes.push(this.track(store.setHardState({ epoch: hard.epoch, vote: hard.vote })))
      this.setQueued(writes[0] as Promise<unknown>)
    }
    // Every write queued before (and the hard state): what the messages depend on.
    const sendGate = this.queuedSettled ? null : this.queued
    if (ready.truncateAfter !== null) {
      writes.push(
        this.track(store.truncateAfter(ready.truncateAfter)).then((removed) => {
          if (removed.length > 0) {
            logger.warn(
              {
                fromLsn: removed[0]?.lsn,
                toLsn: removed[removed.length - 1]?.lsn,
                rollbackRecords: store.rollbackCount,
              },
              'removed log entries the new leader does not have (unconfirmed writes); they are in GET /admin/v1/rollbacks',
            )
          }
        }),
      )
    }
    const last = ready.entries[ready.entries.length - 1]
    if (last !== undefined) {
      const encoded: EncodedEntries = { entries: [], encoded: [], bytes: 0 }
      for (const entry of ready.entries) {
        // Taken out: the core's log cache keeps the entry for a while, and would keep this too.
        const decoded = this.options.decoded.get(entry) ?? decodeLogEntry(entry.data)
        this.options.decoded.delete(entry)
        encoded.entries.push(decoded)
        encoded.encoded.push(entry.data)
        encoded.bytes += entry.data.length
      }
      writes.push(this.track(store.appendEncoded(encoded)))
    }
    // The commit LSN follows the entries it covers; losing it in a crash is harmless (it is
    // learned again), so it is not waited for.
    if (hard && hard.commitLsn > store.commitLsn) {
      // Then committed reads waiting for this commit LSN are released (replicator.waitCommitted).
      this.track(store.setHardState({ commitLsn: hard.commitLsn })).then(
        () => this.options.schedule(),
        (err: unknown) => this.fatal(err),
      )
    }
    if (sendGate === null) {
      for (const message of ready.sendAfterPersist) this.options.send(message)
    } else if (ready.sendAfterPersist.length > 0) {
      const messages = ready.sendAfterPersist
      sendGate.then(
        () => {
          if (this.options.stopped()) return
          for (const message of messages) this.options.send(message)
        },
        // A failed write is reported once, below (or by whoever queued it).
        () => {},
      )
    }
    if (writes.length === 0) return
    const written = Promise.all(writes)
    this.setQueued(written)
    written.then(
      () => {
        if (last !== undefined) this.options.core.persisted(last.lsn, last.epoch)
        this.options.schedule()
      },
      (err: unknown) => this.fatal(err),
    )
  }

  private setQueued(write: Promise<unknown>): void {
    this.queued = write
    this.queuedSettled = false
    const settle = () => {
      if (this.queued === write) this.queuedSettled = true
    }
    write.then(settle, settle)
  }

  /** Reads entries from `fromLsn` on for follower `to`, and hands them to the core. */
  async load(to: string, fromLsn: number): Promise<void> {
    const { store, core } = this.options
    try {
      // The stored bytes as they are: nothing is encoded again on the way to the follower.
      const raw = await store.readLog(
        fromLsn,
        { entriesMax: loadEntriesMax, bytesMax: this.options.loadBytesMax },
        { raw: true },
      )
      core.entriesLoaded(
        to,
        raw.map((r) => ({ lsn: r.lsn, epoch: r.epoch, data: r.data })),
      )
    } catch (err) {
      if (this.options.stopped()) return
      const logStart = store.meta.logStartLsn
      if (fromLsn < logStart) {
        // Compacted meanwhile: the core learns it, and sends a snapshot instead.
        core.compacted(logStart, store.meta.compactedEpoch)
        core.entriesLoaded(to, [])
      } else {
        // Try again a little later, not in a tight loop.
        this.options.logger.warn(
          { peer: to, fromLsn, err: (err as Error).message },
          'cannot load entries for a follower; retrying',
        )
        setTimeout(() => {
          core.entriesLoaded(to, [])
          this.options.schedule()
        }, this.options.loadRetryMs).unref()
        return
      }
    }
    this.options.schedule()
  }
}
