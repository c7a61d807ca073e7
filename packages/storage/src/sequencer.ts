/**
 * Turns client writes into log entries for a node that takes writes on its own authority
 * (a standalone node today; the leader's proposal path once replication lands).
 *
 * Conditions (`If-Match`, `If-None-Match`, batch conditions) are evaluated here, in arrival
 * order, against the durable state plus every write that is accepted but not yet on disk
 * (the overlay). A write that passes gets the next LSN and becomes an unconditional entry, so
 * applying the log never needs to evaluate a condition again: every replica applies the same
 * entries to the same state.
 */
import {
  EntryKind,
  KvError,
  OpType,
  type LogEntry,
  type Op,
  type Stamp,
  type StoredRecord,
} from '@kvstore/protocol'
import { requestFingerprint, sameRequest } from './fingerprint.js'
import type { Store } from './store.js'
import type { EncodedEntries } from './types.js'
import { encodeEntries } from './writer.js'

/** A put or delete as a client asked for it, with its optional condition. */
export interface WriteOp {
  type: 'put' | 'delete'
  key: Buffer
  /** Required for puts. */
  value?: Buffer
  /** Only if the key exists with exactly this version. */
  ifVersion?: number
  /** Only if the key does not exist (create-only). */
  ifAbsent?: boolean
  /** Only if the key exists, whatever its version. */
  ifExists?: boolean
  /**
   * Region mode: the stamp this op is written with, when it is given (a write shipped from
   * another region, computed by `WriteRequest.compute`). A client's op leaves it out and gets
   * one from the sequencer's stamper.
   */
  stamp?: Stamp
  /** With `stamp`: the stamp of the record the write replaced in its origin region. */
  prevStamp?: Stamp
  /**
   * Region mode: a delete that removes the record outright, tombstone and all, and is never
   * stamped or shipped (collecting a tombstone every region has).
   */
  purge?: boolean
}

/** What `WriteRequest.compute` sees: the entry's LSN and the state as of this entry. */
export interface ComputeView {
  lsn: number
  /** The key's record, tombstones included, with every earlier accepted write applied. */
  read(key: Buffer): StoredRecord | null
}

export interface WriteRequest {
  /**
   * `expiry`: the leader ending a lease (expired or revoked): deletes only, written as one
   * `EntryKind.Expiry` entry (see node/src/leases).
   */
  kind: 'put' | 'delete' | 'batch' | 'expiry'
  ops: WriteOp[]
  requestId?: string
  /**
   * What the request id is bound to. When omitted (and there is an id) it is
   * `requestFingerprint(request)`; a caller whose logged write is not the request its client
   * sent (the leaderless coordinator logs a merged state) gives the client request's own.
   */
  fingerprint?: Buffer
  /**
   * Who asks: a client (the default), or the node itself moving data between shard groups
   * (`shard`), which the `admit` check lets through to slots the group does not serve.
   */
  origin?: 'client' | 'shard' | 'region'
  /**
   * Computes the ops from the state at the moment the entry is sequenced, synchronously (a
   * region applying another region's writes decides each one against the current record, and
   * no write may slip in between). When given, `ops` is ignored.
   */
  compute?: (view: ComputeView) => WriteOp[]
}

export interface OpResult {
  key: Buffer
  /** The key's new version, or null when the op deleted it. */
  version: number | null
  /**
   * The key's version before this op (null when it did not exist). Only known for ops that
   * had to read the key: conditional ops and single-key deletes. Unconditional puts are blind
   * writes and leave it undefined, which saves a read on the hot path.
   */
  previousVersion?: number | null
  /** Region mode: the op's stamp, and the stamp of the record it replaced (null: none). */
  stamp?: Stamp
  previousStamp?: Stamp | null
}

export interface WriteResult {
  lsn: number
  epoch: number
  results: OpResult[]
  /** True when the request id was seen before: nothing new was written. */
  deduplicated: boolean
}

/**
 * Where entries go. A standalone node appends to its own store and commits at once; a
 * replicated leader takes positions from the replication core and ships what it appends.
 */
export interface LogWriter {
  /** Position of the next entry. Throws a KvError (such as KV_ERR_NOT_LEADER) when this node may not write. */
  slot(): { lsn: number; epoch: number }
  /** Hands an encoded entry to the log; resolves once it is durable (and applied) on this node. */
  append(encoded: EncodedEntries): Promise<void>
}

/**
 * The writer of a standalone node: it is the only member, so an entry commits when durable.
 * With `commit` false entries stay uncommitted (and truncatable), as on a replica; for tests.
 */
export function standaloneWriter(store: Store, commit = true): LogWriter {
  let truncationsSeen = store.truncations
  let nextLsn = store.appliedLsn + 1
  return {
    slot() {
      if (store.truncations !== truncationsSeen || nextLsn - 1 < store.appliedLsn) {
        truncationsSeen = store.truncations
        nextLsn = store.appliedLsn + 1
      }
      return { lsn: nextLsn, epoch: store.meta.epoch }
    },
    append(encoded) {
      const last = encoded.entries[encoded.entries.length - 1]
      if (last === undefined) return Promise.resolve()
      const appended = store.appendEncoded(encoded, commit ? { commitLsn: last.lsn } : {})
      nextLsn = last.lsn + 1
      return appended
    },
  }
}

/** A write with a request id that is accepted but not yet durable. */
interface InflightRequest {
  fingerprint: Buffer
  result: Promise<WriteResult>
}

const emptyBuffer = Buffer.alloc(0)

interface OverlayRecord {
  lsn: number
  record: StoredRecord | null
  /** Settles when the write that produced this record is durable (or has failed). */
  durable: Promise<void>
}

export interface SequencerOptions {
  /** Wall clock for entry timestamps (informational only). */
  now: () => number
  /** Where entries go; a standalone writer over the store when omitted. */
  writer?: LogWriter
  /**
   * A standalone node commits an entry as soon as it is durable; when false (and no writer is
   * given), entries stay uncommitted, as on a replica. For tests of truncation.
   */
  commitOnAppend?: boolean
  /**
   * Checks a request just before it gets its LSN, synchronously with sequencing (sharding:
   * the key's slot must be owned here and not fenced). Throws a KvError to refuse it; nothing
   * is written then. A check made any earlier could pass a write that a fence sequenced in
   * between should have refused.
   */
  admit?: (request: WriteRequest) => void
  /**
   * Region mode: stamps each op of a client write, given the stamp of the record it overwrites
   * (tombstones included). Every op then reads its key, and deletes leave tombstones.
   */
  stamper?: (current: Stamp | undefined) => Stamp
}

/** Assigns LSNs to writes after checking their conditions. */
export class Sequencer {
  private readonly store: Store
  private readonly options: SequencerOptions
  private readonly writer: LogWriter
  private readonly overlay = new Map<string, OverlayRecord>()
  /** Writes with a request id that are accepted but not yet durable. */
  private readonly inflightRequests = new Map<string, InflightRequest>()
  private truncationsSeen: number

  constructor(store: Store, options: SequencerOptions) {
    this.store = store
    this.options = options
    this.writer = options.writer ?? standaloneWriter(store, options.commitOnAppend !== false)
    this.truncationsSeen = store.truncations
  }

  /** Writes accepted but not yet durable (by distinct key). */
  get pending(): number {
    return this.overlay.size
  }

  /**
   * Checks and writes a request. A request id that was already applied (or is being applied)
   * for the same request returns the first result instead of writing again, so a client may
   * retry a write safely. The id is bound to its request (its fingerprint): the same id on
   * another request throws KV_ERR_REQUEST_ID_REUSED and writes nothing.
   */
  async write(request: WriteRequest): Promise<WriteResult> {
    const requestId = request.requestId
    if (requestId === undefined || requestId === '') return this.writeOnce(request, emptyBuffer)
    const fingerprint = request.fingerprint ?? requestFingerprint(request)
    let inflight = this.inflightRequests.get(requestId)
    while (inflight !== undefined && !inflight.fingerprint.equals(fingerprint)) {
      // Another request with this id is on its way to disk. Its outcome decides the answer
      // (refused if it is applied, written if it failed), and waiting for it means the 409
      // never names a write that could still vanish.
      const other = inflight
      await other.result.catch(() => {})
      inflight = this.inflightRequests.get(requestId)
      // Settled: whatever it applied is in the store now, where the check below finds it.
      if (inflight === other) inflight = undefined
    }
    if (inflight !== undefined) {
      const first = await inflight.result
      return { ...first, deduplicated: true }
    }
    const applied = this.store.getRequest(requestId)
    if (applied !== null) {
      if (!sameRequest(applied.fingerprint, fingerprint)) {
        throw new KvError(
          'KV_ERR_REQUEST_ID_REUSED',
          `kv-request-id ${JSON.stringify(requestId)} was already used for another request (applied at LSN ${applied.lsn}); nothing was written. Use a fresh id per request.`,
          { requestId, lsn: applied.lsn },
        )
      }
      return {
        lsn: applied.lsn,
        epoch: applied.epoch,
        results: request.ops.map((op) => ({
          key: op.key,
          version: op.type === 'put' ? applied.lsn : null,
        })),
        deduplicated: true,
      }
    }
    const attempt = this.writeOnce(request, fingerprint)
    this.inflightRequests.set(requestId, { fingerprint, result: attempt })
    try {
      return await attempt
    } finally {
      this.inflightRequests.delete(requestId)
    }
  }

  /**
   * Checks the write's conditions, appends it as one log entry and resolves once it is durable.
   * Throws `KV_ERR_PRECONDITION_FAILED` or `KV_ERR_KEY_NOT_FOUND` without writing anything.
   */
  private async writeOnce(request: WriteRequest, fingerprint: Buffer): Promise<WriteResult> {
    if (this.store.truncations !== this.truncationsSeen) {
      // Entries were truncated: the pending records they made no longer exist.
      this.truncationsSeen = this.store.truncations
      this.overlay.clear()
    }

    // Everything from here to the append call is synchronous, so conditions see a stable
    // state and LSNs are handed out in the same order as entries reach the log.
    this.options.admit?.(request)
    const { lsn, epoch } = this.writer.slot()
    const local = new Map<string, StoredRecord | null>()
    const results: OpResult[] = []
    const ops: Op[] = []
    const stamper = this.options.stamper
    const requestOps =
      request.compute === undefined
        ? request.ops
        : request.compute({ lsn, read: (key) => this.rawRecord(key, local) })
    let index = 0
    for (const op of requestOps) {
      const id = op.key.toString('latin1')
      // Reserved keys (auth, membership, region cursors) are never stamped: they are this
      // region's own and never shipped.
      const stamped =
        op.stamp !== undefined || (stamper !== undefined && op.key[0] !== 0x00 && op.purge !== true)
      const needsRead =
        stamped ||
        op.ifVersion !== undefined ||
        op.ifAbsent === true ||
        op.ifExists === true ||
        (request.kind === 'delete' && op.type === 'delete')
      let previousVersion: number | null | undefined
      let stamp: Stamp | undefined
      let prev: Stamp | undefined
      if (needsRead) {
        const pending = local.has(id) ? undefined : this.overlay.get(id)
        const raw = local.has(id)
          ? (local.get(id) ?? null)
          : pending !== undefined
            ? pending.record
            : this.store.getSync(op.key)
        const current = raw === null || raw.tombstone ? null : raw
        try {
          checkCondition(op, current, index, request.kind)
        } catch (err) {
          // The answer was decided by a write that is not durable yet. Before telling the
          // client about it (a 412 naming its version, or a 404 for a key it deletes), wait
          // until it is: a reader must never learn of a write that could still vanish.
          if (pending !== undefined) await this.settled(pending)
          throw err
        }
        previousVersion = current?.version ?? null
        if (op.stamp !== undefined) {
          stamp = op.stamp
          prev = op.prevStamp
        } else if (stamper !== undefined && op.key[0] !== 0x00 && op.purge !== true) {
          prev = raw?.stamp
          stamp = stamper(prev)
        }
      }
      if (op.type === 'put') {
        const value = op.value ?? Buffer.alloc(0)
        const record: StoredRecord = { value, version: lsn, tombstone: false }
        if (stamp !== undefined) record.stamp = stamp
        local.set(id, record)
        ops.push(stampedOp({ type: OpType.Put, key: op.key, value }, stamp, prev))
        results.push(withStamps({ key: op.key, version: lsn, previousVersion }, stamp, prev))
      } else {
        // In region mode a delete leaves a tombstone that keeps its stamp, so a concurrent
        // write from another region that arrives later is compared with it, not taken as new.
        local.set(
          id,
          stamp === undefined ? null : { value: emptyBuffer, version: lsn, tombstone: true, stamp },
        )
        ops.push(stampedOp({ type: OpType.Delete, key: op.key, value: emptyBuffer }, stamp, prev))
        results.push(withStamps({ key: op.key, version: null, previousVersion }, stamp, prev))
      }
      index++
    }

    const entry: LogEntry = {
      epoch,
      lsn,
      kind:
        request.kind === 'put'
          ? EntryKind.Put
          : request.kind === 'delete'
            ? EntryKind.Delete
            : request.kind === 'expiry'
              ? EntryKind.Expiry
              : EntryKind.Batch,
      ops,
      timestampMs: this.options.now(),
      requestId: request.requestId ?? '',
      requestFingerprint: fingerprint,
    }
    const encoded = encodeEntries([entry])
    // Refuse now, before the LSN is taken: a refused append after that would leave a gap.
    this.store.admit(encoded.bytes)
    const appended = this.writer.append(encoded)
    for (const [id, record] of local) this.overlay.set(id, { lsn, record, durable: appended })
    try {
      await appended
    } finally {
      for (const id of local.keys()) {
        if (this.overlay.get(id)?.lsn === lsn) this.overlay.delete(id)
      }
    }
    return { lsn, epoch, results, deduplicated: false }
  }

  /** A key's record as of this write: its own earlier ops, then pending writes, then disk. */
  private rawRecord(key: Buffer, local: Map<string, StoredRecord | null>): StoredRecord | null {
    const id = key.toString('latin1')
    if (local.has(id)) return local.get(id) ?? null
    const pending = this.overlay.get(id)
    return pending !== undefined ? pending.record : this.store.getSync(key)
  }

  /** Waits for a pending write; if it failed, the node can no longer answer for the state. */
  private async settled(pending: OverlayRecord): Promise<void> {
    try {
      await pending.durable
    } catch (err) {
      throw new KvError(
        'KV_ERR_STORAGE',
        `storage failed: ${(err as Error).message}`,
        {},
        { cause: err },
      )
    }
  }
}

function stampedOp(op: Op, stamp: Stamp | undefined, prev: Stamp | undefined): Op {
  if (stamp === undefined) return op
  op.stamp = stamp
  if (prev !== undefined) op.prev = prev
  return op
}

function withStamps(result: OpResult, stamp: Stamp | undefined, prev: Stamp | undefined): OpResult {
  if (stamp === undefined) return result
  result.stamp = stamp
  result.previousStamp = prev ?? null
  return result
}

function checkCondition(
  op: WriteOp,
  current: StoredRecord | null,
  index: number,
  kind: WriteRequest['kind'],
): void {
  const keyText = op.key.toString('utf8')
  const fail = (message: string): never => {
    throw new KvError('KV_ERR_PRECONDITION_FAILED', message, {
      key: keyText,
      currentVersion: current?.version ?? null,
      ...(kind === 'batch' ? { opIndex: index } : {}),
    })
  }
  if (op.ifAbsent === true && current !== null) {
    fail(`key ${JSON.stringify(keyText)} already exists (version ${current.version})`)
  }
  if (op.ifExists === true && current === null) {
    fail(`key ${JSON.stringify(keyText)} does not exist`)
  }
  if (op.ifVersion !== undefined) {
    if (current === null) {
      fail(`key ${JSON.stringify(keyText)} does not exist (expected version ${op.ifVersion})`)
    } else if (current.version !== op.ifVersion) {
      fail(`key ${JSON.stringify(keyText)} has version ${current.version}, not ${op.ifVersion}`)
    }
  }
  if (kind === 'delete' && op.type === 'delete' && current === null) {
    throw new KvError('KV_ERR_KEY_NOT_FOUND', `key ${JSON.stringify(keyText)} does not exist`, {
      key: keyText,
    })
  }
}
