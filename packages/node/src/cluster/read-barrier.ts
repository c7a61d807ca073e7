/**
 * Linearizable reads on the leader, as etcd's read index does it with a log entry: a read
 * waits until a majority has confirmed a no-op entry that this node appended after the read
 * began (a majority accepting an entry of this epoch proves no newer leader had been elected),
 * and a record newer than the commit LSN waits until it commits. Reads that arrive in the same
 * turn of the event loop share one barrier entry.
 */
import type { StoredRecord } from '@kvstore/protocol'
import { unconfirmedReadError } from './replication-errors.js'

export interface ReadBarrierOptions {
  /** Throws unless this node may serve as the leader now. */
  checkWritable: () => void
  /** Appends a no-op entry of this epoch; its LSN and epoch. */
  appendNoop: () => { lsn: number; epoch: number }
  /** Resolves once the entry at `lsn` of `epoch` is committed by a majority. */
  waitCommitted: (lsn: number, epoch: number) => Promise<void>
  /** What the core knows of committed entries. */
  core: { readonly commitLsn: number; readonly epoch: number; epochAt(lsn: number): number | null }
  /** Fencing off (a test-only switch): reads are served without any confirmation. */
  unsafeNoFencing: boolean
}

export class ReadBarrier {
  /** The barrier entry that reads arriving in this turn of the event loop share. */
  private pending: Promise<void> | null = null

  constructor(private readonly options: ReadBarrierOptions) {}

  /**
   * Resolves once every write acknowledged before the call is visible here and this node was
   * still the leader after the call began.
   */
  wait(): Promise<void> {
    const { options } = this
    options.checkWritable()
    if (options.unsafeNoFencing) return Promise.resolve()
    this.pending ??= new Promise<void>((resolve, reject) => {
      setImmediate(() => {
        this.pending = null
        try {
          options.checkWritable()
          const { lsn, epoch } = options.appendNoop()
          options
            .waitCommitted(lsn, epoch)
            .then(resolve, (err: unknown) => reject(unconfirmedReadError(err)))
        } catch (err) {
          reject(err)
        }
      })
    })
    return this.pending
  }

  /**
   * A record read after `wait()`, made safe to return. The leader applies entries before they
   * commit, so a record may be newer than the commit LSN: wait for it to commit (a moment,
   * normally) rather than show a write that could still be rolled back.
   */
  async settled(record: StoredRecord | null): Promise<StoredRecord | null> {
    const { options } = this
    if (options.unsafeNoFencing) return record
    if (record === null || record.version <= options.core.commitLsn) return record
    const epoch = options.core.epochAt(record.version) ?? options.core.epoch
    await options.waitCommitted(record.version, epoch).catch((err: unknown) => {
      throw unconfirmedReadError(err)
    })
    return record
  }
}
