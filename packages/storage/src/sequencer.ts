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
  type StoredRecord,
} from '@kvstore/protocol'
import { encodeEntries, type Store } from './store.js'

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
}

export interface WriteRequest {
  kind: 'put' | 'delete' | 'batch'
  ops: WriteOp[]
  requestId?: string
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
}

export interface WriteResult {
  lsn: number
  epoch: number
  results: OpResult[]
}

interface OverlayRecord {
  lsn: number
  record: StoredRecord | null
}

export interface SequencerOptions {
  /** Wall clock for entry timestamps (informational only). */
  now: () => number
  /**
   * True when an entry is committed as soon as it is durable locally (a standalone node), so
   * the commit LSN advances in the same batch.
   */
  commitOnAppend: boolean
}

/** Assigns LSNs to writes after checking their conditions. */
export class Sequencer {
  private readonly store: Store
  private readonly options: SequencerOptions
  private readonly overlay = new Map<string, OverlayRecord>()
  private nextLsn: number

  constructor(store: Store, options: SequencerOptions) {
    this.store = store
    this.options = options
    this.nextLsn = store.appliedLsn + 1
  }

  /** Writes accepted but not yet durable. */
  get pending(): number {
    return this.nextLsn - 1 - this.store.appliedLsn
  }

  /**
   * Checks the write's conditions, appends it as one log entry and resolves once it is durable.
   * Throws `KV_ERR_PRECONDITION_FAILED` or `KV_ERR_KEY_NOT_FOUND` without writing anything.
   */
  async write(request: WriteRequest): Promise<WriteResult> {
    if (this.nextLsn - 1 < this.store.appliedLsn) {
      // The log moved underneath (a truncation or an external append): resynchronise.
      this.nextLsn = this.store.appliedLsn + 1
    }

    // Everything from here to the append call is synchronous, so conditions see a stable
    // state and LSNs are handed out in the same order as entries reach the writer.
    const lsn = this.nextLsn
    const epoch = this.store.meta.epoch
    const local = new Map<string, StoredRecord | null>()
    const results: OpResult[] = []
    const ops: Op[] = []
    request.ops.forEach((op, index) => {
      const id = op.key.toString('latin1')
      const needsRead =
        op.ifVersion !== undefined ||
        op.ifAbsent === true ||
        op.ifExists === true ||
        (request.kind === 'delete' && op.type === 'delete')
      let previousVersion: number | null | undefined
      if (needsRead) {
        const current = local.has(id) ? (local.get(id) ?? null) : this.current(id, op.key)
        checkCondition(op, current, index, request.kind)
        previousVersion = current?.version ?? null
      }
      if (op.type === 'put') {
        const value = op.value ?? Buffer.alloc(0)
        local.set(id, { value, version: lsn, tombstone: false })
        ops.push({ type: OpType.Put, key: op.key, value })
        results.push({ key: op.key, version: lsn, previousVersion })
      } else {
        local.set(id, null)
        ops.push({ type: OpType.Delete, key: op.key, value: Buffer.alloc(0) })
        results.push({ key: op.key, version: null, previousVersion })
      }
    })

    const entry: LogEntry = {
      epoch,
      lsn,
      kind:
        request.kind === 'put'
          ? EntryKind.Put
          : request.kind === 'delete'
            ? EntryKind.Delete
            : EntryKind.Batch,
      ops,
      timestampMs: this.options.now(),
      requestId: request.requestId ?? '',
    }
    const encoded = encodeEntries([entry])
    // Refuse now, before the LSN is taken: a refused append after that would leave a gap.
    this.store.admit(encoded.bytes)
    const appended = this.store.appendEncoded(
      encoded,
      this.options.commitOnAppend ? { commitLsn: lsn } : {},
    )
    this.nextLsn = lsn + 1
    for (const [id, record] of local) this.overlay.set(id, { lsn, record })
    try {
      await appended
    } finally {
      for (const id of local.keys()) {
        if (this.overlay.get(id)?.lsn === lsn) this.overlay.delete(id)
      }
    }
    return { lsn, epoch, results }
  }

  /** The newest record of a key: a pending write if there is one, else the durable state. */
  private current(id: string, key: Buffer): StoredRecord | null {
    const pending = this.overlay.get(id)
    if (pending !== undefined) return pending.record
    const record = this.store.getSync(key)
    return record === null || record.tombstone ? null : record
  }
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
