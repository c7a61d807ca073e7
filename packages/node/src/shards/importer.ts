/**
 * The target side of a slot move, on the target group's leader. The source's leader calls:
 *
 *   begin    start (or restart) import `id` of `slots`: records of those slots left here from an
 *            earlier import are deleted, and the import is recorded as `importing`, cursor 0
 *   copy     records of the source's snapshot; the last call sets the cursor to its LSN
 *   entries  the source's log after the cursor, filtered to the slots, in order (fromLsn must be
 *            the cursor + 1); each entry keeps its request id, so a client's retry here later is
 *            answered as the write it repeats
 *   resume   a new source leader takes over the import (higher epoch), keeping what it has
 *   commit   the cursor has reached the source's fence: this group takes the slots at
 *            `version` and serves them from now on
 *   abandon  the source rolls back: unless the slots are already taken, the import ends and
 *            can never be committed; what it copied is deleted
 *
 * Every call names the source leader's epoch: a call with a lower epoch than the import's is
 * refused (a deposed leader), so only one source leader drives an import at a time. Each step
 * is written through this group's log and acknowledged by a quorum before it answers.
 */
import {
  KvError,
  formatSlotRanges,
  parseSlotRanges,
  shardLimits,
  slotBitmap,
  slotOfKey,
  type ShardImport,
  type ShardRecord,
  type SlotRange,
} from '@kvstore/protocol'
import type { Sequencer, Store, WriteOp } from '@kvstore/storage'
import type { Replicator } from '../cluster/replicator.js'
import { ShardState } from './state.js'

export interface ImportCopy {
  id: string
  sourceEpoch: number
  records: { k: string; v: string }[]
  /** Set on the last call: the LSN of the snapshot the records came from. */
  throughLsn?: number
}

export interface ImportEntries {
  id: string
  sourceEpoch: number
  fromLsn: number
  throughLsn: number
  entries: {
    ops: { k: string; v?: string; d?: true }[]
    requestId?: string
    fingerprint?: string
  }[]
}

const deleteChunkKeys = 500

function invalid(message: string): KvError {
  return new KvError('KV_ERR_INVALID_ARGUMENT', message)
}

export class ShardImporter {
  /** One call at a time: each reads the record and writes the next one. */
  private queue: Promise<unknown> = Promise.resolve()

  constructor(
    private readonly state: ShardState,
    private readonly store: Store,
    private readonly sequencer: Sequencer,
    private readonly replicator: Replicator,
    private readonly ackTimeoutMs: number,
  ) {}

  private serial<T>(work: () => Promise<T>): Promise<T> {
    const next = this.queue.then(work, work)
    this.queue = next.catch(() => {})
    return next
  }

  private leaderOnly(): void {
    if (!this.replicator.isLeader) throw this.replicator.notLeader()
  }

  private async durable(lsn: number, epoch: number): Promise<void> {
    await this.replicator.waitForAck(lsn, epoch, 'quorum', this.ackTimeoutMs)
  }

  private find(id: string): ShardImport | undefined {
    return this.state.record.imports.find((i) => i.id === id)
  }

  private driving(id: string, sourceEpoch: number): ShardImport {
    const found = this.find(id)
    if (found === undefined)
      throw new KvError('KV_ERR_SHARD_MOVE_IN_PROGRESS', `no import ${id} here; begin it first`, {
        importId: id,
      })
    if (found.state !== 'importing')
      throw new KvError('KV_ERR_SHARD_MOVE_IN_PROGRESS', `import ${id} is ${found.state}`, {
        importId: id,
        state: found.state,
      })
    if (sourceEpoch !== found.sourceEpoch)
      throw new KvError(
        'KV_ERR_STALE_EPOCH',
        `import ${id} is driven by the source's epoch ${found.sourceEpoch}, not ${sourceEpoch}`,
        { importId: id, epoch: found.sourceEpoch },
      )
    return found
  }

  private static withImport(record: ShardRecord, imp: ShardImport): ShardRecord {
    const others = record.imports.filter((i) => i.id !== imp.id)
    others.push(imp)
    // Bounded: forget the oldest finished imports first.
    while (others.length > shardLimits.importsMax) {
      const index = others.findIndex((i) => i.state !== 'importing')
      others.splice(index === -1 ? 0 : index, 1)
    }
    return { ...record, imports: others }
  }

  /** Deletes every record of `slots` this group holds (they are not its own). */
  private async deleteSlots(slots: readonly SlotRange[]): Promise<number> {
    const bits = slotBitmap(slots)
    const snapshot = await this.store.openSnapshot()
    let deleted = 0
    try {
      let batch: WriteOp[] = []
      const flush = async () => {
        if (batch.length === 0) return
        const result = await this.sequencer.write({ kind: 'batch', ops: batch, origin: 'shard' })
        await this.durable(result.lsn, result.epoch)
        deleted += batch.length
        batch = []
      }
      for await (const { key, record } of snapshot.records()) {
        if (key[0] === 0x00 || record.tombstone) continue
        if (bits[slotOfKey(key)] !== 1) continue
        if (this.state.ownsSlot(slotOfKey(key))) continue
        batch.push({ type: 'delete', key: Buffer.from(key) })
        if (batch.length >= deleteChunkKeys) await flush()
      }
      await flush()
    } finally {
      await snapshot.close()
    }
    return deleted
  }

  begin(body: {
    id: string
    source: string
    slots: string
    sourceEpoch: number
  }): Promise<ShardImport> {
    return this.serial(async () => {
      this.leaderOnly()
      if (typeof body.id !== 'string' || !/^[A-Za-z0-9._-]{1,64}$/.test(body.id))
        throw invalid('id must be 1 to 64 letters, digits, . _ -')
      if (typeof body.source !== 'string' || !this.state.groups.some((g) => g.id === body.source))
        throw invalid(`source ${JSON.stringify(body.source)} is not a group of the shard map`)
      if (!Number.isSafeInteger(body.sourceEpoch) || body.sourceEpoch < 1)
        throw invalid('sourceEpoch must be an epoch')
      let slots: SlotRange[]
      try {
        slots = parseSlotRanges(String(body.slots))
      } catch (err) {
        throw invalid(`slots: ${(err as Error).message}`)
      }
      if (slots.length === 0) throw invalid('no slots to import')
      for (const r of slots)
        for (let s = r.first; s <= r.last; s++)
          if (this.state.ownsSlot(s))
            throw new KvError(
              'KV_ERR_INVALID_ARGUMENT',
              `group ${this.state.group} already owns slot ${s}`,
            )
      const existing = this.find(body.id)
      if (existing !== undefined) {
        if (existing.state !== 'importing')
          throw new KvError(
            'KV_ERR_SHARD_MOVE_IN_PROGRESS',
            `import ${body.id} is ${existing.state}`,
            {
              importId: body.id,
              state: existing.state,
            },
          )
        if (body.sourceEpoch < existing.sourceEpoch)
          throw new KvError(
            'KV_ERR_STALE_EPOCH',
            `import ${body.id} is driven by the source's epoch ${existing.sourceEpoch}, not ${body.sourceEpoch}`,
            { importId: body.id, epoch: existing.sourceEpoch },
          )
      }
      // Whatever an earlier import of these slots left here goes first.
      await this.deleteSlots(slots)
      const bits = slotBitmap(slots)
      const imp: ShardImport = {
        id: body.id,
        slots,
        source: body.source,
        state: 'importing',
        sourceEpoch: body.sourceEpoch,
        cursorLsn: 0,
        keys: 0,
      }
      const epoch = this.replicator.epoch
      const result = await this.state.writeRecord(this.sequencer, (record) => {
        // An older import of any of these slots can never finish now: its source moved on.
        const imports = record.imports.map((i) =>
          i.id !== body.id && i.state === 'importing' && i.slots.some((r) => overlaps(r, bits))
            ? { ...i, state: 'abandoned' as const }
            : i,
        )
        return ShardImporter.withImport({ ...record, imports }, imp)
      })
      await this.durable(result.lsn, epoch)
      return imp
    })
  }

  copy(body: ImportCopy): Promise<{ cursorLsn: number; keys: number }> {
    return this.serial(async () => {
      this.leaderOnly()
      const imp = this.driving(body.id, body.sourceEpoch)
      if (!Array.isArray(body.records)) throw invalid('records must be a list')
      const bits = slotBitmap(imp.slots)
      const ops: WriteOp[] = body.records.map((r, index) => {
        const key = Buffer.from(String(r.k), 'base64')
        if (key.length === 0 || key[0] === 0x00 || bits[slotOfKey(key)] !== 1)
          throw invalid(`records[${index}] is not a key of the imported slots`)
        return { type: 'put', key, value: Buffer.from(String(r.v ?? ''), 'base64') }
      })
      const epoch = this.replicator.epoch
      const through = body.throughLsn
      if (through !== undefined && (!Number.isSafeInteger(through) || through < 0))
        throw invalid('throughLsn must be an LSN')
      const result = await this.state.writeRecord(
        this.sequencer,
        (record) =>
          ShardImporter.withImport(record, {
            ...imp,
            keys: imp.keys + ops.length,
            cursorLsn: through ?? imp.cursorLsn,
          }),
        ops,
      )
      await this.durable(result.lsn, epoch)
      return { cursorLsn: through ?? imp.cursorLsn, keys: imp.keys + ops.length }
    })
  }

  entries(body: ImportEntries): Promise<{ cursorLsn: number }> {
    return this.serial(async () => {
      this.leaderOnly()
      const imp = this.driving(body.id, body.sourceEpoch)
      if (body.fromLsn !== imp.cursorLsn + 1)
        throw new KvError(
          'KV_ERR_INVALID_ARGUMENT',
          `import ${imp.id} is at LSN ${imp.cursorLsn}; send entries from ${imp.cursorLsn + 1}, not ${body.fromLsn}`,
          { cursorLsn: imp.cursorLsn },
        )
      if (!Number.isSafeInteger(body.throughLsn) || body.throughLsn < imp.cursorLsn)
        throw invalid('throughLsn must be an LSN at or after the cursor')
      if (!Array.isArray(body.entries)) throw invalid('entries must be a list')
      const bits = slotBitmap(imp.slots)
      const epoch = this.replicator.epoch
      // Sequenced one after another in this tick, so they keep the source's order.
      const writes = body.entries.map((entry, index) => {
        const ops: WriteOp[] = entry.ops.map((op) => {
          const key = Buffer.from(String(op.k), 'base64')
          if (key.length === 0 || key[0] === 0x00 || bits[slotOfKey(key)] !== 1)
            throw invalid(`entries[${index}] has a key outside the imported slots`)
          return op.d === true
            ? { type: 'delete', key }
            : { type: 'put', key, value: Buffer.from(String(op.v ?? ''), 'base64') }
        })
        // The request id comes along, so a client's retry here is answered as the write it
        // repeats. Not when this group already knows the id: an earlier attempt of this import
        // (whose records `begin` deleted) would make the write look applied and skip it.
        const keepId =
          typeof entry.requestId === 'string' &&
          typeof entry.fingerprint === 'string' &&
          this.store.getRequest(entry.requestId) === null
        return this.sequencer.write({
          kind: 'batch',
          ops,
          origin: 'shard',
          ...(keepId
            ? {
                requestId: entry.requestId as string,
                fingerprint: Buffer.from(entry.fingerprint as string, 'base64'),
              }
            : {}),
        })
      })
      const results = await Promise.all(writes)
      const result = await this.state.writeRecord(this.sequencer, (record) =>
        ShardImporter.withImport(record, {
          ...imp,
          keys: imp.keys + results.length,
          cursorLsn: body.throughLsn,
        }),
      )
      await this.durable(result.lsn, epoch)
      return { cursorLsn: body.throughLsn }
    })
  }

  resume(body: { id: string; sourceEpoch: number }): Promise<ShardImport> {
    return this.serial(async () => {
      this.leaderOnly()
      const found = this.find(body.id)
      if (found === undefined || found.state !== 'importing')
        throw new KvError(
          'KV_ERR_SHARD_MOVE_IN_PROGRESS',
          `import ${body.id} is ${found?.state ?? 'unknown here'}`,
          { importId: body.id, state: found?.state ?? null },
        )
      if (!Number.isSafeInteger(body.sourceEpoch) || body.sourceEpoch < found.sourceEpoch)
        throw new KvError(
          'KV_ERR_STALE_EPOCH',
          `import ${body.id} is driven by the source's epoch ${found.sourceEpoch}, not ${body.sourceEpoch}`,
          { importId: body.id, epoch: found.sourceEpoch },
        )
      if (body.sourceEpoch === found.sourceEpoch) return found
      const imp = { ...found, sourceEpoch: body.sourceEpoch }
      const epoch = this.replicator.epoch
      const result = await this.state.writeRecord(this.sequencer, (record) =>
        ShardImporter.withImport(record, imp),
      )
      await this.durable(result.lsn, epoch)
      return imp
    })
  }

  commit(body: {
    id: string
    sourceEpoch: number
    throughLsn: number
    version: number
  }): Promise<{ state: 'owned'; sinceLsn: number }> {
    return this.serial(async () => {
      this.leaderOnly()
      const found = this.find(body.id)
      if (found?.state === 'owned') return { state: 'owned', sinceLsn: this.sinceOf(found) }
      const imp = this.driving(body.id, body.sourceEpoch)
      if (imp.cursorLsn < body.throughLsn)
        throw new KvError(
          'KV_ERR_INVALID_ARGUMENT',
          `import ${imp.id} has the source's log up to ${imp.cursorLsn}, not ${body.throughLsn}`,
          { cursorLsn: imp.cursorLsn },
        )
      if (!Number.isSafeInteger(body.version) || body.version <= 1)
        throw invalid("version must be above the slots' current version")
      // Every import write is applied here: a reader at this LSN sees all of them.
      const sinceLsn = this.store.appliedLsn
      const epoch = this.replicator.epoch
      const result = await this.state.writeRecord(this.sequencer, (record) => ({
        ...ShardImporter.withImport(record, { ...imp, state: 'owned' }),
        slots: ShardState.reassign(
          record.slots,
          imp.slots,
          this.state.group,
          body.version,
          sinceLsn,
        ),
      }))
      await this.durable(result.lsn, epoch)
      return { state: 'owned', sinceLsn }
    })
  }

  private sinceOf(imp: ShardImport): number {
    const first = imp.slots[0]
    if (first === undefined) return 0
    return (
      this.state.record.slots.find((c) => c.first <= first.first && c.last >= first.first)
        ?.sinceLsn ?? 0
    )
  }

  abandon(body: {
    id: string
    source?: string
    slots?: string
  }): Promise<{ state: 'owned' | 'abandoned'; sinceLsn?: number }> {
    return this.serial(async () => {
      this.leaderOnly()
      const found = this.find(body.id)
      if (found?.state === 'owned') return { state: 'owned', sinceLsn: this.sinceOf(found) }
      if (found?.state === 'abandoned') return { state: 'abandoned' }
      const epoch = this.replicator.epoch
      // Unknown here: remember it as abandoned anyway, so a late commit of it is refused.
      let slots: SlotRange[] = found?.slots ?? []
      if (found === undefined && typeof body.slots === 'string') {
        try {
          slots = parseSlotRanges(body.slots)
        } catch {
          slots = []
        }
      }
      const imp: ShardImport = found
        ? { ...found, state: 'abandoned' }
        : {
            id: body.id,
            slots: slots.length > 0 ? slots : [{ first: 0, last: 0 }],
            source:
              typeof body.source === 'string' && this.state.groups.some((g) => g.id === body.source)
                ? body.source
                : this.state.group,
            state: 'abandoned',
            sourceEpoch: 0,
            cursorLsn: 0,
            keys: 0,
          }
      const result = await this.state.writeRecord(this.sequencer, (record) =>
        ShardImporter.withImport(record, imp),
      )
      await this.durable(result.lsn, epoch)
      if (found !== undefined) await this.deleteSlots(found.slots)
      return { state: 'abandoned' }
    })
  }

  status(id: string): ShardImport | null {
    return this.find(id) ?? null
  }
}

function overlaps(range: SlotRange, bits: Uint8Array): boolean {
  for (let s = range.first; s <= range.last; s++) if (bits[s] === 1) return true
  return false
}

export { formatSlotRanges }
