/**
 * Local records: what a member keeps for itself in its LevelDB, beside the replicated data but
 * never part of it. They live under their own one-byte prefix (`Prefix.Local`), which the log,
 * the state, snapshots, snapshot installs, backups, restores and the state digest never read
 * or clear, so nothing here is replicated, hashed or rolled back.
 *
 * A user of this API owns one `space` (a byte after the prefix; see `LocalSpace`) and keys
 * inside it. Writes are atomic batches with group commit: batches queued while one is on its
 * way to disk share the next LevelDB batch and its single fsync.
 */
import { KvError } from '@kvstore/protocol'
import type { StoreContext } from './context.js'
import type { BatchOp } from './disk.js'
import { Prefix } from './layout.js'

/** The spaces of the local key range, one per owner. */
export const LocalSpace = {
  /** Queued writes waiting for the leader (node/src/outbox). */
  OutboxEntries: 0x01,
  /** Tickets of queued writes. */
  OutboxTickets: 0x02,
  /** The outbox's own counters. */
  OutboxMeta: 0x03,
} as const
export type LocalSpace = (typeof LocalSpace)[keyof typeof LocalSpace]

export type LocalOp =
  | { type: 'put'; space: LocalSpace; key: Buffer; value: Uint8Array }
  | { type: 'del'; space: LocalSpace; key: Buffer }

/** The LevelDB key of a local record. */
export function localKey(space: LocalSpace, key: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(key.length + 2)
  out[0] = Prefix.Local
  out[1] = space
  out.set(key, 2)
  return out
}

function spaceRange(space: LocalSpace): { gte: Buffer; lt: Buffer } {
  return { gte: Buffer.of(Prefix.Local, space), lt: Buffer.of(Prefix.Local, space + 1) }
}

interface Pending {
  ops: BatchOp[]
  sync: boolean
  resolve: () => void
  reject: (err: Error) => void
}

export class LocalRecords {
  private queue: Pending[] = []
  private writing: Promise<void> | null = null

  constructor(
    private readonly ctx: StoreContext,
    private readonly fsync: boolean,
  ) {}

  /** A record, read synchronously (memtable, block cache, then disk); undefined when absent. */
  getSync(space: LocalSpace, key: Uint8Array): Buffer | undefined {
    this.ctx.assertOpen()
    return this.ctx.db.getSync(localKey(space, key))
  }

  /** Records of one space in key order, after `after` (exclusive), at most `limit`. */
  async scan(
    space: LocalSpace,
    options: { after?: Uint8Array; limit: number },
  ): Promise<{ key: Buffer; value: Buffer }[]> {
    this.ctx.assertOpen()
    const range = spaceRange(space)
    const rows = await this.ctx.db
      .iterator({
        ...(options.after !== undefined
          ? { gt: localKey(space, options.after) }
          : { gte: range.gte }),
        lt: range.lt,
        limit: options.limit,
      })
      .all()
    return rows.map(([key, value]) => ({ key: key.subarray(2), value }))
  }

  /** Keys of one space in key order, after `after` (exclusive), at most `limit`. */
  async keys(space: LocalSpace, options: { after?: Uint8Array; limit: number }): Promise<Buffer[]> {
    this.ctx.assertOpen()
    const range = spaceRange(space)
    const keys = await this.ctx.db
      .keys({
        ...(options.after !== undefined
          ? { gt: localKey(space, options.after) }
          : { gte: range.gte }),
        lt: range.lt,
        limit: options.limit,
      })
      .all()
    return keys.map((key) => key.subarray(2))
  }

  /**
   * Writes `ops` atomically. With `sync` (the default) it resolves once they are fsynced (unless
   * the store runs without fsync); batches queued meanwhile share one LevelDB batch.
   */
  write(ops: readonly LocalOp[], options: { sync?: boolean } = {}): Promise<void> {
    const ctx = this.ctx
    if (ctx.failure) return Promise.reject(new KvError('KV_ERR_STORAGE', ctx.failure.message))
    if (ctx.closing || ctx.closed)
      return Promise.reject(new KvError('KV_ERR_SHUTTING_DOWN', 'storage is closing'))
    const batch: BatchOp[] = ops.map((op) =>
      op.type === 'put'
        ? { type: 'put', key: localKey(op.space, op.key), value: Buffer.from(op.value) }
        : { type: 'del', key: localKey(op.space, op.key) },
    )
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ ops: batch, sync: options.sync !== false, resolve, reject })
      if (this.writing === null) this.writing = this.drain()
    })
  }

  /** Resolves once no local write is queued or in flight. */
  async whenIdle(): Promise<void> {
    while (this.writing !== null) await this.writing
  }

  private async drain(): Promise<void> {
    // Let every write of this turn of the event loop join the first batch.
    await new Promise((resolve) => setImmediate(resolve))
    while (this.queue.length > 0) {
      const jobs = this.queue
      this.queue = []
      const ops = jobs.flatMap((j) => j.ops)
      const sync = this.fsync && jobs.some((j) => j.sync)
      try {
        await this.ctx.db.batch(ops, { sync })
        for (const job of jobs) job.resolve()
      } catch (err) {
        const error = new KvError('KV_ERR_STORAGE', `local records: ${(err as Error).message}`)
        for (const job of jobs) job.reject(error)
      }
    }
    this.writing = null
  }
}
