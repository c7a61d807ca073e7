/**
 * The outbox: queued writes (`ack=queued`) this member accepted and the leader has not applied
 * yet, and the tickets that tell clients what became of them.
 *
 * Both live in this member's own LevelDB under the local key space (storage's
 * local-records.ts), which is not part of the replicated log, the state digest, snapshots or
 * backups. An accepted write is durable (fsynced) before its 202 goes out. Entries are kept in
 * acceptance order (their `seq`), in memory too (bounded by `outboxBytesMax`), and the
 * forwarder takes them from the head. A ticket is written with its entry and updated, in the
 * same batch that deletes the entry, when the outcome is known.
 *
 * Limits: entries, bytes and the age of the oldest entry refuse NEW writes with
 * KV_ERR_OUTBOX_FULL; tickets are kept `ticketRetentionMs` after they finish, and at most
 * `ticketsMax` (the oldest finished ones go first).
 */
import {
  KvError,
  decodeOutboxEntry,
  decodeTicket,
  encodeOutboxEntry,
  encodeTicket,
  type OutboxEntry,
  type OutboxOutcome,
  type QueuedOp,
  type TicketRecord,
} from '@kvstore/protocol'
import { LocalSpace, type LocalOp, type Store } from '@kvstore/storage'

export interface OutboxLimits {
  outboxEntriesMax: number
  outboxBytesMax: number
  outboxAgeMaxMs: number
  ticketsMax: number
  ticketRetentionMs: number
}

export type RefusalReason = 'entries' | 'bytes' | 'age'

/** Counters the metrics read. */
export interface OutboxFigures {
  forwarded: { applied: number; failed: number; retry: number }
  refused: Record<RefusalReason, number>
}

/** A write as the HTTP layer hands it over, already checked (syntax, sizes, grants). */
export interface QueuedWrite {
  kind: 'put' | 'delete' | 'batch'
  ops: QueuedOp[]
  /** The client's kv-request-id, if it sent one. */
  requestId?: string
  /** Empty with auth off. */
  user: string
}

const two32 = 2 ** 32
const metaNextSeq = Buffer.from('nextSeq', 'ascii')
/** Records read per page when the outbox opens or sweeps. */
const scanPage = 1000
/** Tickets examined per retention sweep. */
const sweepTicketsMax = 20_000

/** u64 big-endian, so that LevelDB's order is acceptance order. */
export function seqKey(seq: number): Buffer {
  const key = Buffer.allocUnsafe(8)
  key.writeUInt32BE(Math.floor(seq / two32), 0)
  key.writeUInt32BE(seq >>> 0, 4)
  return key
}

function seqOfKey(key: Buffer): number {
  return key.readUInt32BE(0) * two32 + key.readUInt32BE(4)
}

/** Bytes an entry counts against `outboxBytesMax`. */
export function entryBytes(write: { ops: readonly QueuedOp[]; requestId?: string }): number {
  let bytes = 64 + (write.requestId?.length ?? 0)
  for (const op of write.ops) bytes += 16 + op.key.length + (op.value?.length ?? 0)
  return bytes
}

export class Outbox {
  /** Entries not applied yet, oldest first: `pending[head]` is the next to forward. */
  private pending: OutboxEntry[] = []
  private head = 0
  private pendingBytesTotal = 0
  /** Accepts written but not yet durable (they count against the limits). */
  private accepting = { entries: 0, bytes: 0 }
  private nextSeq: number
  private ticketCount: number
  private trimming: Promise<void> | null = null
  private sweepCursor: Buffer | undefined = undefined
  private readonly waiters: (() => void)[] = []
  readonly figures: OutboxFigures = {
    forwarded: { applied: 0, failed: 0, retry: 0 },
    refused: { entries: 0, bytes: 0, age: 0 },
  }

  private constructor(
    private readonly store: Store,
    readonly nodeId: string,
    private readonly limits: OutboxLimits,
    private readonly now: () => number,
    state: { pending: OutboxEntry[]; nextSeq: number; tickets: number },
  ) {
    this.pending = state.pending
    for (const entry of this.pending) this.pendingBytesTotal += entryBytes(entry)
    this.nextSeq = state.nextSeq
    this.ticketCount = state.tickets
  }

  /** Loads the outbox from the store: its pending entries, the ticket count, the next seq. */
  static async open(
    store: Store,
    nodeId: string,
    limits: OutboxLimits,
    now: () => number = Date.now,
  ): Promise<Outbox> {
    const pending: OutboxEntry[] = []
    let after: Buffer | undefined
    for (;;) {
      const rows = await store.local.scan(LocalSpace.OutboxEntries, {
        ...(after !== undefined ? { after } : {}),
        limit: scanPage,
      })
      for (const row of rows) {
        const entry = decodeOutboxEntry(row.value)
        if (entry.seq !== seqOfKey(row.key))
          throw new Error(`outbox entry stored under ${seqOfKey(row.key)} says seq ${entry.seq}`)
        pending.push(entry)
      }
      if (rows.length < scanPage) break
      after = (rows[rows.length - 1] as { key: Buffer }).key
    }
    let tickets = 0
    let lastTicket = 0
    after = undefined
    for (;;) {
      const keys = await store.local.keys(LocalSpace.OutboxTickets, {
        ...(after !== undefined ? { after } : {}),
        limit: scanPage * 10,
      })
      tickets += keys.length
      if (keys.length > 0) {
        after = keys[keys.length - 1] as Buffer
        lastTicket = seqOfKey(after)
      }
      if (keys.length < scanPage * 10) break
    }
    const stored = store.local.getSync(LocalSpace.OutboxMeta, metaNextSeq)
    // A fresh outbox starts its numbers at the clock in microseconds: a member whose data was
    // wiped never reuses a ticket or request id (q-<node>-<seq>) the leader may still remember.
    const nextSeq = Math.max(
      stored !== undefined && stored.length === 8 ? seqOfKey(stored) : now() * 1000,
      lastTicket + 1,
      (pending[pending.length - 1]?.seq ?? 0) + 1,
    )
    return new Outbox(store, nodeId, limits, now, { pending, nextSeq, tickets })
  }

  // ---------------------------------------------------------------- figures

  get entries(): number {
    return this.pending.length - this.head
  }

  get bytes(): number {
    return this.pendingBytesTotal
  }

  get tickets(): number {
    return this.ticketCount
  }

  /** Age of the oldest pending entry, in ms (0 when empty). */
  oldestAgeMs(): number {
    const oldest = this.pending[this.head]
    return oldest === undefined ? 0 : Math.max(0, this.now() - oldest.acceptedAtMs)
  }

  // ---------------------------------------------------------------- accept

  /** Why a new write of `bytes` would be refused now, or null. */
  refusal(bytes: number): KvError | null {
    const full = (reason: RefusalReason, limit: number, message: string) => {
      this.figures.refused[reason]++
      return new KvError('KV_ERR_OUTBOX_FULL', message, { reason, limit })
    }
    const { outboxEntriesMax, outboxBytesMax, outboxAgeMaxMs } = this.limits
    if (this.entries + this.accepting.entries >= outboxEntriesMax)
      return full(
        'entries',
        outboxEntriesMax,
        `this member's outbox holds ${outboxEntriesMax} queued writes, its limit; retry later or write with ack=quorum`,
      )
    if (this.bytes + this.accepting.bytes + bytes > outboxBytesMax)
      return full(
        'bytes',
        outboxBytesMax,
        `this member's outbox would pass its limit of ${outboxBytesMax} bytes; retry later or write with ack=quorum`,
      )
    const age = this.oldestAgeMs()
    if (age > outboxAgeMaxMs)
      return full(
        'age',
        outboxAgeMaxMs,
        `this member's oldest queued write has waited ${age} ms for the leader, more than ${outboxAgeMaxMs} ms; retry later or write with ack=quorum`,
      )
    return null
  }

  /**
   * Accepts a write: checks the limits, gives it the next seq and makes it durable with its
   * pending ticket. Resolves with both once fsynced.
   */
  async accept(write: QueuedWrite): Promise<{ entry: OutboxEntry; ticket: TicketRecord }> {
    const requestId = write.requestId ?? `q-${this.nodeId}-${this.nextSeq}`
    const bytes = entryBytes({ ops: write.ops, requestId })
    const refused = this.refusal(bytes)
    if (refused !== null) throw refused
    const seq = this.nextSeq++
    const acceptedAtMs = this.now()
    const entry: OutboxEntry = {
      seq,
      kind: write.kind,
      ops: write.ops,
      requestId,
      user: write.user,
      acceptedAtMs,
    }
    const ticket: TicketRecord = {
      seq,
      status: 'pending',
      acceptedAtMs,
      finishedAtMs: 0,
      lsn: 0,
      epoch: 0,
      user: write.user,
      requestId: entry.requestId,
      error: null,
    }
    const key = seqKey(seq)
    const ops: LocalOp[] = [
      { type: 'put', space: LocalSpace.OutboxEntries, key, value: encodeOutboxEntry(entry) },
      { type: 'put', space: LocalSpace.OutboxTickets, key, value: encodeTicket(ticket) },
      { type: 'put', space: LocalSpace.OutboxMeta, key: metaNextSeq, value: seqKey(seq + 1) },
    ]
    this.accepting.entries++
    this.accepting.bytes += bytes
    try {
      await this.store.local.write(ops)
    } finally {
      this.accepting.entries--
      this.accepting.bytes -= bytes
    }
    // Group commit resolves batches in the order they were queued, so entries join in seq order.
    const last = this.pending[this.pending.length - 1]
    if (last !== undefined && last.seq > seq) {
      let at = this.pending.length
      while (at > this.head && (this.pending[at - 1] as OutboxEntry).seq > seq) at--
      this.pending.splice(at, 0, entry)
    } else {
      this.pending.push(entry)
    }
    this.pendingBytesTotal += bytes
    this.ticketCount++
    if (this.ticketCount > this.limits.ticketsMax) this.trim()
    for (const wake of this.waiters.splice(0)) wake()
    return { entry, ticket }
  }

  /** Resolves when an entry is accepted (or after `timeoutMs`). */
  whenPending(timeoutMs: number): Promise<void> {
    if (this.entries > 0) return Promise.resolve()
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        const at = this.waiters.indexOf(done)
        if (at >= 0) this.waiters.splice(at, 1)
        resolve()
      }, timeoutMs)
      const done = () => {
        clearTimeout(timer)
        resolve()
      }
      this.waiters.push(done)
    })
  }

  // ---------------------------------------------------------------- forward

  /** The oldest pending entries: at most `entriesMax`, and `bytesMax` (at least one). */
  peek(entriesMax: number, bytesMax: number): OutboxEntry[] {
    const out: OutboxEntry[] = []
    let bytes = 0
    for (let i = this.head; i < this.pending.length && out.length < entriesMax; i++) {
      const entry = this.pending[i] as OutboxEntry
      const size = entryBytes(entry)
      if (out.length > 0 && bytes + size > bytesMax) break
      out.push(entry)
      bytes += size
    }
    return out
  }

  /**
   * Records the outcomes of the oldest pending entries, in order (`outcomes[i]` is the i-th
   * pending entry's; none may be `retry`): their tickets are updated and the entries deleted,
   * in one batch.
   */
  async record(outcomes: readonly OutboxOutcome[]): Promise<void> {
    if (outcomes.length === 0) return
    const ops: LocalOp[] = []
    const finishedAtMs = this.now()
    outcomes.forEach((outcome, i) => {
      const entry = this.pending[this.head + i]
      if (entry === undefined || entry.seq !== outcome.seq || outcome.status === 'retry')
        throw new Error(
          `outcome ${i} (seq ${outcome.seq}, ${outcome.status}) is not the next entry's`,
        )
      const key = seqKey(entry.seq)
      const ticket: TicketRecord = {
        seq: entry.seq,
        status: outcome.status,
        acceptedAtMs: entry.acceptedAtMs,
        finishedAtMs,
        lsn: outcome.status === 'applied' ? outcome.lsn : 0,
        epoch: outcome.status === 'applied' ? outcome.epoch : 0,
        user: entry.user,
        requestId: entry.requestId,
        error: outcome.status === 'failed' ? outcome.error : null,
      }
      ops.push(
        { type: 'del', space: LocalSpace.OutboxEntries, key },
        { type: 'put', space: LocalSpace.OutboxTickets, key, value: encodeTicket(ticket) },
      )
      this.figures.forwarded[outcome.status]++
    })
    await this.store.local.write(ops)
    for (let i = 0; i < outcomes.length; i++) {
      this.pendingBytesTotal -= entryBytes(this.pending[this.head + i] as OutboxEntry)
    }
    this.head += outcomes.length
    if (this.head > 1024 && this.head * 2 > this.pending.length) {
      this.pending = this.pending.slice(this.head)
      this.head = 0
    }
  }

  // ---------------------------------------------------------------- tickets

  /** The ticket of `seq`, or null when there is none (never accepted here, or expired). */
  ticket(seq: number): TicketRecord | null {
    const bytes = this.store.local.getSync(LocalSpace.OutboxTickets, seqKey(seq))
    return bytes === undefined ? null : decodeTicket(bytes)
  }

  /**
   * Forgets finished tickets past `ticketRetentionMs`: examines up to `sweepTicketsMax` per
   * call, resuming where the last call stopped. Returns how many it deleted.
   */
  async sweep(): Promise<number> {
    const cutoff = this.now() - this.limits.ticketRetentionMs
    let examined = 0
    let deleted = 0
    while (examined < sweepTicketsMax) {
      const rows = await this.store.local.scan(LocalSpace.OutboxTickets, {
        ...(this.sweepCursor !== undefined ? { after: this.sweepCursor } : {}),
        limit: scanPage,
      })
      examined += rows.length
      const ops: LocalOp[] = []
      for (const row of rows) {
        const ticket = decodeTicket(row.value)
        if (ticket.status !== 'pending' && ticket.finishedAtMs < cutoff)
          ops.push({ type: 'del', space: LocalSpace.OutboxTickets, key: row.key })
      }
      if (ops.length > 0) {
        await this.store.local.write(ops, { sync: false })
        this.ticketCount -= ops.length
        deleted += ops.length
      }
      if (rows.length < scanPage) {
        this.sweepCursor = undefined
        break
      }
      this.sweepCursor = (rows[rows.length - 1] as { key: Buffer }).key
    }
    return deleted
  }

  /** Deletes the oldest finished tickets until at most `ticketsMax` are left (in the background). */
  private trim(): void {
    this.trimming ??= (async () => {
      let deleted = 0
      // Never settle synchronously: `trimming` is assigned after this function first yields.
      await Promise.resolve()
      try {
        let after: Buffer | undefined
        while (this.ticketCount > this.limits.ticketsMax) {
          const excess = this.ticketCount - this.limits.ticketsMax
          const rows = await this.store.local.scan(LocalSpace.OutboxTickets, {
            ...(after !== undefined ? { after } : {}),
            limit: Math.min(scanPage, Math.max(excess, 16)),
          })
          if (rows.length === 0) break
          const ops: LocalOp[] = []
          for (const row of rows) {
            if (ops.length >= excess) break
            if (decodeTicket(row.value).status !== 'pending')
              ops.push({ type: 'del', space: LocalSpace.OutboxTickets, key: row.key })
          }
          after = (rows[rows.length - 1] as { key: Buffer }).key
          if (ops.length > 0) {
            await this.store.local.write(ops, { sync: false })
            this.ticketCount -= ops.length
            deleted += ops.length
          }
        }
      } catch {
        // The store is closing or failed; the next accept trims again.
      } finally {
        this.trimming = null
      }
      // Tickets that finished, or arrived, while this pass ran (behind its scan, or after its
      // last check): another pass, from the start. Not when nothing could go (all pending).
      if (deleted > 0 && this.ticketCount > this.limits.ticketsMax) this.trim()
    })()
  }

  /** Resolves once a trim in progress is done (tests). */
  async settled(): Promise<void> {
    while (this.trimming !== null) await this.trimming
  }
}
