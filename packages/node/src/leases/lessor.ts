/**
 * Leases (single-leader mode), etcd's lessor in our terms.
 *
 * A lease lives in the state as a reserved record, `\0lease/<id>` (protocol/leases.ts): its TTL
 * and the keys attached to it, each with the version the attaching write gave it. Every
 * decision that changes a lease is made at the leader in the sequencer's synchronous step
 * (`WriteRequest.compute`) and written as plain ops, so every replica applies the same puts and
 * deletes and never decides anything on its own:
 *
 * - a grant is a put of the record (the id is the grant's LSN and epoch);
 * - an attach (`PUT ?lease=`) puts the key and the record, updated, in one entry; a key that was
 *   written since it was attached (without the lease, or with another) is no longer attached:
 *   its version differs from the one the record holds, and the lease's end leaves it alone;
 * - the end of a lease (expired or revoked) is one `EntryKind.Expiry` entry deleting the keys
 *   still attached and the record.
 *
 * Deadlines are the leader's alone and live only in its memory, as in etcd: keep-alives are
 * not logged. A node that becomes leader (and a standalone node that starts) gives every lease
 * a fresh deadline, its TTL plus the election timeout (etcd's Promote), so no lease expires
 * because its holder could not reach a leader during the failover. Followers keep no deadline
 * and expire nothing.
 */
import type { Logger } from 'pino'
import {
  KvError,
  decodeFenceRecord,
  decodeLeaseRecord,
  encodeFenceRecord,
  encodeLeaseRecord,
  fenceKeyOf,
  leaseIdOf,
  leaseKeyOf,
  leaseKeyPrefix,
  parseLeaseKey,
  type LeaseRecord,
  type StoredRecord,
} from '@kvstore/protocol'
import type { ComputeView, Sequencer, Store, WriteOp } from '@kvstore/storage'
import type { Replicator } from '../cluster/replicator.js'

/** How often the leader looks for expired leases. */
export const leaseTickMs = 10

interface LeaseState {
  id: string
  ttlMs: number
  keys: number
  /** The leader's deadline (monotonic ms); null on a follower, or before promotion. */
  deadlineMs: number | null
}

/** What a write asks of leases and fences (parsed from its query and headers). */
export interface LeaseExtras {
  /** Attach every put of the write to this lease. */
  lease?: string
  /** A lease of the write's own with this TTL (the `?ttlMs=` shorthand). */
  ttlMs?: number
  /** The write is fenced by this lock's token. */
  fence?: { lock: string; token: number }
}

export interface LessorOptions {
  store: Store
  sequencer: Sequencer
  replicator: Replicator | null
  leasesMax: number
  leaseKeysMax: number
  /** Added to every TTL when this node becomes leader (the election timeout; 0 standalone). */
  promoteExtendMs: number
  logger: Logger
  /** Monotonic clock in ms. */
  now?: () => number
}

export interface LessorStats {
  granted: number
  expired: number
  revoked: number
  /** Leader promotions that extended every lease. */
  promotions: number
}

const notFound = (id: string, why = 'it expired, was revoked, or never existed'): KvError =>
  new KvError('KV_ERR_LEASE_NOT_FOUND', `lease ${id} does not exist: ${why}`, { lease: id })

function live(record: StoredRecord | null): record is StoredRecord {
  return record !== null && !record.tombstone
}

export class Lessor {
  private readonly leases = new Map<string, LeaseState>()
  private readonly ending = new Set<string>()
  /** New leases sequenced but not yet applied (counted against leasesMax). */
  private pendingNew = 0
  private promotedEpoch: number | null = null
  /** No deadline is earlier than this (a scan finds the next one): ticks before it skip the scan. */
  private earliestMs = -Infinity
  private timer: NodeJS.Timeout | null = null
  private reloading: Promise<void> | null = null
  private readonly now: () => number
  readonly stats: LessorStats = { granted: 0, expired: 0, revoked: 0, promotions: 0 }
  /** Called with each lease's end as this leader wrote it (for benchmarks and logs). */
  onEnd: ((id: string, reason: 'expired' | 'revoked', lsn: number) => void) | null = null

  constructor(private readonly options: LessorOptions) {
    this.now = options.now ?? (() => performance.now())
  }

  get size(): number {
    return this.leases.size
  }

  async start(): Promise<void> {
    await this.load()
    this.options.store.watchReserved((keys) => {
      if (keys === 'all') {
        void this.reload()
        return
      }
      for (const key of keys) {
        const id = parseLeaseKey(key)
        if (id !== null) this.applyStored(id, this.options.store.getSync(key))
      }
    })
    this.timer = setInterval(() => this.tick(), leaseTickMs)
    this.timer.unref()
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
  }

  private async load(): Promise<void> {
    const kept = new Map([...this.leases].map(([id, l]) => [id, l.deadlineMs]))
    this.leases.clear()
    let after: Buffer | undefined
    for (;;) {
      const page = await this.options.store.list({
        prefix: leaseKeyPrefix,
        limit: 1000,
        bytesMax: 16 * 1024 * 1024,
        ...(after ? { after } : {}),
      })
      for (const item of page.items) {
        const id = parseLeaseKey(item.key)
        if (id !== null) this.applyStored(id, item.record, kept.get(id) ?? null)
      }
      const last = page.items[page.items.length - 1]
      if (!page.more || last === undefined) break
      after = last.key
    }
  }

  private reload(): Promise<void> {
    this.reloading ??= this.load()
      .catch((err: unknown) => this.options.logger.error({ err }, 'reading the leases failed'))
      .finally(() => {
        this.reloading = null
      })
    return this.reloading
  }

  private applyStored(id: string, stored: StoredRecord | null, deadline?: number | null): void {
    if (!live(stored)) {
      this.leases.delete(id)
      return
    }
    // A record read back from storage is checked, never trusted: a corrupt one stops the node.
    const record = decodeLeaseRecord(stored.value)
    if (record.id !== id) throw new Error(`lease record ${record.id} under the key of ${id}`)
    const known = this.leases.get(id)
    const deadlineMs =
      deadline !== undefined && deadline !== null
        ? deadline
        : (known?.deadlineMs ?? (this.promotedEpoch !== null ? this.now() + record.ttlMs : null))
    this.leases.set(id, { id, ttlMs: record.ttlMs, keys: record.keys.length, deadlineMs })
    if (deadlineMs !== null) this.earliestMs = Math.min(this.earliestMs, deadlineMs)
  }

  /** True when this node decides expiries: a standalone node, or a writable leader. */
  private leading(): boolean {
    const r = this.options.replicator
    return r === null || r.writable
  }

  private epoch(): number {
    return this.options.replicator?.epoch ?? this.options.store.meta.epoch
  }

  /** Runs every leaseTickMs: promotion, demotion, and the end of expired leases. */
  tick(): void {
    if (!this.leading()) {
      if (this.promotedEpoch !== null) {
        this.promotedEpoch = null
        for (const lease of this.leases.values()) lease.deadlineMs = null
      }
      return
    }
    const now = this.now()
    const epoch = this.epoch()
    if (this.promotedEpoch !== epoch) {
      // etcd's Promote: every lease gets its TTL plus the election time from now.
      this.promotedEpoch = epoch
      this.stats.promotions++
      for (const lease of this.leases.values())
        lease.deadlineMs = now + lease.ttlMs + this.options.promoteExtendMs
      this.earliestMs = -Infinity
      if (this.leases.size > 0)
        this.options.logger.info(
          { leases: this.leases.size, extendMs: this.options.promoteExtendMs, epoch },
          'leader: every lease extended',
        )
      return
    }
    // One scan per deadline passing, not per tick: with many leases a tick stays cheap.
    if (now < this.earliestMs) return
    let earliest = Infinity
    for (const lease of this.leases.values()) {
      lease.deadlineMs ??= now + lease.ttlMs
      if (this.ending.has(lease.id)) continue
      if (lease.deadlineMs <= now) void this.end(lease.id, 'expired').catch(() => {})
      else earliest = Math.min(earliest, lease.deadlineMs)
    }
    this.earliestMs = earliest
  }

  /** Ms left before the lease expires, as the leader sees it; null on a follower. */
  remainingMs(id: string): number | null {
    const lease = this.leases.get(id)
    if (lease === undefined) throw notFound(id)
    return lease.deadlineMs === null ? null : Math.max(0, Math.round(lease.deadlineMs - this.now()))
  }

  /** Renews a lease (leader only): its deadline becomes now plus its TTL. */
  keepAlive(id: string): { ttlMs: number } {
    this.options.replicator?.checkWritable()
    const lease = this.leases.get(id)
    if (lease === undefined) throw notFound(id)
    const now = this.now()
    if (lease.deadlineMs !== null && lease.deadlineMs <= now) throw notFound(id, 'it expired')
    if (this.promotedEpoch === null) {
      // Not promoted yet (this tick has not run since it became leader): it will extend.
      return { ttlMs: lease.ttlMs }
    }
    lease.deadlineMs = now + lease.ttlMs
    return { ttlMs: lease.ttlMs }
  }

  /** Writes the end of a lease (expiry or revoke) as one Expiry entry. */
  async end(
    id: string,
    reason: 'expired' | 'revoked',
  ): Promise<{ lsn: number; epoch: number; deleted: number }> {
    this.ending.add(id)
    try {
      let deleted = 0
      const result = await this.options.sequencer.write({
        kind: 'expiry',
        ops: [],
        compute: (view) => {
          const ops = this.endOps(view, id)
          deleted = ops.length - 1
          return ops
        },
      })
      this.options.logger.debug({ lease: id, reason, lsn: result.lsn }, 'lease ended')
      if (reason === 'expired') this.stats.expired++
      else this.stats.revoked++
      this.onEnd?.(id, reason, result.lsn)
      return { lsn: result.lsn, epoch: result.epoch, deleted }
    } finally {
      this.ending.delete(id)
      // A lease whose end failed (this node lost its leadership meanwhile) is looked at again.
      this.earliestMs = -Infinity
    }
  }

  private endOps(view: ComputeView, id: string): WriteOp[] {
    const stored = view.read(leaseKeyOf(id))
    if (!live(stored)) throw notFound(id)
    const record = decodeLeaseRecord(stored.value)
    const ops: WriteOp[] = []
    for (const k of record.keys) {
      const current = view.read(k.key)
      if (live(current) && current.version === k.version) ops.push({ type: 'delete', key: k.key })
    }
    ops.push({ type: 'delete', key: leaseKeyOf(id) })
    return ops
  }

  /** The ops of a grant: a new lease record (in compute). */
  grantOps(view: ComputeView, ttlMs: number, onId: (id: string) => void): WriteOp[] {
    this.checkRoom()
    const id = leaseIdOf(view.lsn, this.epoch())
    onId(id)
    const record: LeaseRecord = { id, ttlMs, grantedLsn: view.lsn, keys: [] }
    return [{ type: 'put', key: leaseKeyOf(id), value: encodeLeaseRecord(record) }]
  }

  private checkRoom(): void {
    if (this.leases.size + this.pendingNew >= this.options.leasesMax) {
      throw new KvError(
        'KV_ERR_TOO_MANY_LEASES',
        `the cluster holds ${this.leases.size} leases (${this.pendingNew} more being written); the limit is ${this.options.leasesMax}`,
        { leasesMax: this.options.leasesMax },
      )
    }
  }

  /** Counts a new lease until its write settles (call from compute; `done` when settled). */
  reserve(): () => void {
    this.pendingNew++
    let done = false
    return () => {
      if (!done) this.pendingNew--
      done = true
    }
  }

  /**
   * The ops a client write becomes with its lease, TTL and fence (in compute): its own ops
   * first (so result i is op i), then the fence record and the lease record.
   */
  extraOps(
    view: ComputeView,
    ops: WriteOp[],
    extras: LeaseExtras,
    onLease: (id: string) => void,
  ): WriteOp[] {
    const out = [...ops]
    if (extras.fence !== undefined) {
      const { lock, token } = extras.fence
      const key = fenceKeyOf(lock)
      const stored = view.read(key)
      const highest = live(stored) ? decodeFenceRecord(stored.value) : 0
      if (token < highest) {
        throw new KvError(
          'KV_ERR_FENCED',
          `lock ${JSON.stringify(lock)}: this write's fencing token ${token} is lower than ${highest}, which a newer holder used; nothing was written`,
          { lock, token, highestToken: highest },
        )
      }
      if (token > highest) out.push({ type: 'put', key, value: encodeFenceRecord(token) })
    }
    const puts = ops.filter((op) => op.type === 'put')
    const putIds = new Set(puts.map((op) => op.key.toString('latin1')))
    if (extras.lease !== undefined) {
      const id = extras.lease
      const key = leaseKeyOf(id)
      const stored = view.read(key)
      if (!live(stored)) throw notFound(id)
      const state = this.leases.get(id)
      const deadline = state?.deadlineMs ?? null
      if (deadline !== null && deadline <= this.now()) throw notFound(id, 'it expired')
      const record = decodeLeaseRecord(stored.value)
      // Keys written since they were attached are no longer attached: drop them here.
      const keys = record.keys.filter((k) => {
        if (putIds.has(k.key.toString('latin1'))) return false
        const current = view.read(k.key)
        return live(current) && current.version === k.version
      })
      for (const op of puts) keys.push({ key: op.key, version: view.lsn })
      if (keys.length > this.options.leaseKeysMax) {
        throw new KvError(
          'KV_ERR_LEASE_TOO_MANY_KEYS',
          `lease ${id} would hold ${keys.length} keys; the limit is ${this.options.leaseKeysMax}`,
          { lease: id, leaseKeysMax: this.options.leaseKeysMax },
        )
      }
      out.push({ type: 'put', key, value: encodeLeaseRecord({ ...record, keys }) })
      onLease(id)
    } else if (extras.ttlMs !== undefined) {
      this.checkRoom()
      if (puts.length > this.options.leaseKeysMax) {
        throw new KvError(
          'KV_ERR_LEASE_TOO_MANY_KEYS',
          `the write's lease would hold ${puts.length} keys; the limit is ${this.options.leaseKeysMax}`,
          { leaseKeysMax: this.options.leaseKeysMax },
        )
      }
      const id = leaseIdOf(view.lsn, this.epoch())
      const record: LeaseRecord = {
        id,
        ttlMs: extras.ttlMs,
        grantedLsn: view.lsn,
        keys: puts.map((op) => ({ key: op.key, version: view.lsn })),
      }
      out.push({ type: 'put', key: leaseKeyOf(id), value: encodeLeaseRecord(record) })
      onLease(id)
    }
    return out
  }

  /** A lease as stored: its TTL and the user keys still attached to it. */
  async info(id: string): Promise<{ record: LeaseRecord; keys: Buffer[] }> {
    const store = this.options.store
    const stored = await store.get(leaseKeyOf(id))
    if (!live(stored)) throw notFound(id)
    const record = decodeLeaseRecord(stored.value)
    const keys: Buffer[] = []
    for (const k of record.keys) {
      const current = await store.get(k.key)
      if (live(current) && current.version === k.version) keys.push(k.key)
    }
    return { record, keys }
  }

  /** Every lease this node knows, with the leader's remaining time (null elsewhere). */
  list(limit: number): { id: string; ttlMs: number; remainingMs: number | null }[] {
    const now = this.now()
    const out: { id: string; ttlMs: number; remainingMs: number | null }[] = []
    for (const lease of this.leases.values()) {
      if (out.length >= limit) break
      out.push({
        id: lease.id,
        ttlMs: lease.ttlMs,
        remainingMs:
          lease.deadlineMs === null ? null : Math.max(0, Math.round(lease.deadlineMs - now)),
      })
    }
    return out
  }
}
