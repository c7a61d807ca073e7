/**
 * The source side of a slot move, driven by this group's leader. The move's phase is in the
 * group's shard record, so a new leader picks it up where the old one left it:
 *
 *   copying    the target begins an import (deleting leftovers), gets the records of a
 *              snapshot, then follows this group's committed log, filtered to the slots. Once it
 *              is close behind, the leader writes the fence.
 *   fenced     the fence entry is in the log: the slots take no writes and no linearizable
 *              reads here. The target gets the rest of the log through the commit LSN, which is
 *              past the fence, so it holds every write ever made to the slots here.
 *   switching  recorded (and committed) before the target is asked to take the slots; only the
 *              target's answer can end it, so a slot is never writable in two groups.
 *   done       the target owns the slots (at a version above the source's), this group records
 *              the new claim, and deletes its copies.
 *   aborted    rolled back before the switch: the fence is lifted, the target abandons the import.
 *
 * A new leader restarts a move that was copying (the snapshot it copied from may hold entries
 * the new leader's log does not), and resumes a fenced one from the target's cursor: every
 * entry up to the fence is committed, so the logs agree there. A fence that lasts longer than
 * `shardFenceTimeoutMs` before the switch aborts the move.
 */
import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import {
  KvError,
  formatSlotRanges,
  parseSlotRanges,
  shardLimits,
  slotBitmap,
  slotOfKey,
  type ShardMove,
  type ShardRecord,
  type SlotRange,
} from '@kvstore/protocol'
import type { Sequencer, Store, WriteOp } from '@kvstore/storage'
import type { Replicator } from '../cluster/replicator.js'
import type { NodeConfig } from '../config.js'
import { GroupUnreachableError, type GroupClient } from './group-client.js'
import { ShardState } from './state.js'

const copyChunkBytes = 256 * 1024
const copyChunkKeys = 1000
const entriesChunkBytes = 512 * 1024
const entriesChunkEntries = 500
/** The target is close enough behind to fence when it lags by at most this many entries. */
const fenceLagEntries = 200
const tickMs = 100
/** Calls that make the target delete an earlier import's records (begin, abandon) may take long. */
const deleteCallTimeoutMs = 120_000

export interface MoverFigures {
  /** How long each fence lasted (fence written to switch answered), in ms. */
  fenceMs: number[]
  moves: { done: number; aborted: number }
}

export class ShardMover {
  private running: Promise<void> | null = null
  private timer: NodeJS.Timeout | null = null
  private abortRequested = false
  /** While slots are fenced and the switch is not written: when the fence must end (wall ms). */
  private fenceDeadlineMs: number | null = null
  private stopped = false
  readonly figures: MoverFigures = { fenceMs: [], moves: { done: 0, aborted: 0 } }

  constructor(
    private readonly state: ShardState,
    private readonly store: Store,
    private readonly sequencer: Sequencer,
    private readonly replicator: Replicator,
    private readonly client: GroupClient,
    private readonly config: NodeConfig,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  start(): void {
    this.timer = setInterval(() => this.poke(), tickMs)
    this.timer.unref()
  }

  async stop(): Promise<void> {
    this.stopped = true
    if (this.timer !== null) clearInterval(this.timer)
    await this.running?.catch(() => {})
  }

  /** Drives the move in the record, if this node leads and nobody drives it yet. */
  private poke(): void {
    if (this.running !== null || this.stopped) return
    if (!this.state.stored && this.replicator.isLeader && this.replicator.writable) {
      // The group's first leader writes the starting map into the log: from then on the
      // record, not the file, says what this group owns.
      this.running = this.seal().finally(() => {
        this.running = null
      })
      return
    }
    const move = this.state.record.move
    if (move === null || !this.replicator.isLeader || !this.replicator.writable) return
    this.running = this.drive(move.id).finally(() => {
      this.running = null
    })
  }

  private async seal(): Promise<void> {
    const epoch = this.replicator.epoch
    try {
      const result = await this.state.writeRecord(this.sequencer, (r) => r)
      await this.replicator.waitForAck(result.lsn, epoch, 'quorum', this.config.ackTimeoutMs)
      this.log.info({ lsn: result.lsn }, 'shard record written: the starting map is in the log')
    } catch (err) {
      this.log.warn({ err }, 'writing the first shard record failed; retrying')
      await sleep(500)
    }
  }

  /** POST /admin/v1/shards/moves: starts moving `slotsText` to `target`. */
  async begin(slotsText: string, target: string): Promise<ShardMove> {
    if (!this.replicator.isLeader) throw this.replicator.notLeader()
    let slots: SlotRange[]
    try {
      slots = parseSlotRanges(slotsText)
    } catch (err) {
      throw new KvError('KV_ERR_INVALID_ARGUMENT', `slots: ${(err as Error).message}`)
    }
    if (slots.length === 0) throw new KvError('KV_ERR_INVALID_ARGUMENT', 'slots names no slot')
    if (!this.state.groups.some((g) => g.id === target))
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `group ${JSON.stringify(target)} is not in the shard map (${this.state.groups.map((g) => g.id).join(', ')})`,
      )
    if (target === this.state.group)
      throw new KvError('KV_ERR_INVALID_ARGUMENT', `the slots are already in group ${target}`)
    const current = this.state.record.move
    if (current !== null)
      throw new KvError(
        'KV_ERR_SHARD_MOVE_IN_PROGRESS',
        `move ${current.id} of slots ${formatSlotRanges(current.slots)} to ${current.target} is ${current.phase}; one move at a time`,
        { moveId: current.id, phase: current.phase },
      )
    for (const r of slots)
      for (let s = r.first; s <= r.last; s++)
        if (!this.state.ownsSlot(s)) throw this.state.wrongShard(s)
    const move: ShardMove = {
      id: `m-${this.state.group}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`,
      slots,
      target,
      phase: 'copying',
      fenceLsn: 0,
      version: this.state.mapVersion + 1,
      startedAtMs: this.now(),
      updatedAtMs: this.now(),
      targetLsn: 0,
      error: '',
    }
    const epoch = this.replicator.epoch
    const result = await this.state.writeRecord(this.sequencer, (r) => ({ ...r, move }))
    await this.replicator.waitForAck(result.lsn, epoch, 'quorum', this.config.ackTimeoutMs)
    this.abortRequested = false
    this.log.info({ move: move.id, slots: formatSlotRanges(slots), target }, 'slot move started')
    this.poke()
    return move
  }

  /** POST /admin/v1/shards/moves/abort. */
  async abort(): Promise<ShardMove> {
    if (!this.replicator.isLeader) throw this.replicator.notLeader()
    const move = this.state.record.move
    if (move === null) {
      const last = this.state.record.history[this.state.record.history.length - 1]
      if (last !== undefined) return last
      throw new KvError('KV_ERR_INVALID_ARGUMENT', 'no slot move is running in this group')
    }
    this.abortRequested = true
    if (move.phase === 'switching') {
      // Only the target can say whether it took the slots.
      const answer = await this.askTargetToAbandon(move)
      if (answer.state === 'owned') {
        await this.finish(move, answer.sinceLsn ?? 0)
      } else {
        await this.rollBackSwitching(move, 'aborted by an operator')
      }
    } else {
      try {
        await this.rollBack(move, 'aborted by an operator')
      } catch (err) {
        if (!(err instanceof KvError && err.details.phase === 'switching')) throw err
        // The switch was written meanwhile: the target decides.
        const answer = await this.askTargetToAbandon(move)
        if (answer.state === 'owned') await this.finish(move, answer.sinceLsn ?? 0)
        else await this.rollBackSwitching(move, 'aborted by an operator')
        return this.state.record.history[this.state.record.history.length - 1] ?? move
      }
      // Best effort, in the background: the target cannot take the slots without a commit,
      // which is never sent now; abandoning only frees what it copied.
      void this.askTargetToAbandon(move).catch(() => {})
    }
    return this.state.record.history[this.state.record.history.length - 1] ?? move
  }

  private askTargetToAbandon(move: ShardMove): Promise<{ state: string; sinceLsn?: number }> {
    return this.client
      .call<{ state: string; sinceLsn?: number }>(
        move.target,
        '/internal/v1/shards/import/abandon',
        {
          id: move.id,
          source: this.state.group,
          slots: formatSlotRanges(move.slots),
        },
        deleteCallTimeoutMs,
      )
      .catch((err: unknown) => {
        if (err instanceof GroupUnreachableError)
          throw new KvError(
            'KV_ERR_SHARD_MOVE_IN_PROGRESS',
            `move ${move.id} is switching and group ${move.target} does not answer: only its answer can end the move (${err.message}); retry`,
            { moveId: move.id, phase: move.phase },
          )
        throw err
      })
  }

  private async setMove(
    change: (move: ShardMove) => ShardMove,
    extra?: (r: ShardRecord) => ShardRecord,
  ): Promise<number> {
    const epoch = this.replicator.epoch
    const result = await this.state.writeRecord(this.sequencer, (r) => {
      if (r.move === null) throw new KvError('KV_ERR_INTERNAL', 'the move is gone')
      const next = { ...r, move: { ...change(r.move), updatedAtMs: this.now() } }
      return extra ? extra(next) : next
    })
    await this.replicator.waitForAck(result.lsn, epoch, 'quorum', this.config.ackTimeoutMs)
    return result.lsn
  }

  private static archived(record: ShardRecord, move: ShardMove): ShardMove[] {
    const history = [...record.history, move]
    while (history.length > shardLimits.historyMax) history.shift()
    return history
  }

  /** Rolls back a switching move: only once the target has answered that it abandoned it. */
  private rollBackSwitching(move: ShardMove, why: string): Promise<void> {
    return this.rollBack(move, why, true)
  }

  private async rollBack(move: ShardMove, why: string, targetAbandoned = false): Promise<void> {
    const epoch = this.replicator.epoch
    const unfence = slotBitmap(move.slots)
    const result = await this.state.writeRecord(this.sequencer, (r) => {
      // Checked as the record is sequenced: a switch written meanwhile wins, since the target
      // may have been asked to take the slots.
      if (r.move?.id !== move.id)
        throw new KvError('KV_ERR_INVALID_ARGUMENT', `move ${move.id} is over`)
      if (r.move.phase === 'switching' && !targetAbandoned)
        throw new KvError(
          'KV_ERR_SHARD_MOVE_IN_PROGRESS',
          `move ${move.id} is switching: only group ${move.target}'s answer can end it`,
          { moveId: move.id, phase: 'switching' },
        )
      return {
        ...r,
        fenced: r.fenced.filter((f) => !covers(unfence, f)),
        move: null,
        history: ShardMover.archived(r, {
          ...move,
          phase: 'aborted',
          error: why,
          updatedAtMs: this.now(),
        }),
      }
    })
    await this.replicator.waitForAck(result.lsn, epoch, 'quorum', this.config.ackTimeoutMs)
    this.figures.moves.aborted++
    this.log.warn({ move: move.id, why }, 'slot move rolled back')
  }

  private async finish(move: ShardMove, sinceLsn: number): Promise<void> {
    const epoch = this.replicator.epoch
    const moved = slotBitmap(move.slots)
    const result = await this.state.writeRecord(this.sequencer, (r) => {
      if (r.move?.id !== move.id)
        throw new KvError('KV_ERR_INVALID_ARGUMENT', `move ${move.id} is over`)
      return {
        ...r,
        slots: ShardState.reassign(r.slots, move.slots, move.target, move.version, sinceLsn),
        fenced: r.fenced.filter((f) => !covers(moved, f)),
        move: null,
        history: ShardMover.archived(r, {
          ...move,
          phase: 'done',
          targetLsn: sinceLsn,
          updatedAtMs: this.now(),
        }),
      }
    })
    await this.replicator.waitForAck(result.lsn, epoch, 'quorum', this.config.ackTimeoutMs)
    this.figures.moves.done++
    this.log.info({ move: move.id, target: move.target, sinceLsn }, 'slot move done')
    // The records stay readable by nobody here (the slots are not owned); delete them.
    void this.sweep(move.slots).catch((err: unknown) =>
      this.log.warn(
        { err, move: move.id },
        'deleting the moved records failed; they stay, unserved',
      ),
    )
  }

  /** Deletes the records of slots this group no longer owns. */
  private async sweep(slots: readonly SlotRange[]): Promise<void> {
    const bits = slotBitmap(slots)
    // Checked again as each batch is sequenced (synchronously with its LSN): a slot that came
    // back, or that an import into this group is filling, keeps its records.
    const sweepable = (key: Uint8Array) => {
      const slot = slotOfKey(key)
      return bits[slot] === 1 && !this.state.ownsSlot(slot) && !this.state.importing(slot)
    }
    const flush = (batch: WriteOp[]) => {
      const ops = batch.filter((op) => sweepable(op.key))
      return ops.length === 0
        ? Promise.resolve()
        : this.sequencer.write({ kind: 'batch', ops, origin: 'shard' })
    }
    const snapshot = await this.store.openSnapshot()
    try {
      let batch: WriteOp[] = []
      for await (const { key, record } of snapshot.records()) {
        if (key[0] === 0x00 || record.tombstone || !sweepable(key)) continue
        batch.push({ type: 'delete', key: Buffer.from(key) })
        if (batch.length >= 500) {
          await flush(batch)
          batch = []
        }
        if (!this.replicator.isLeader) return
      }
      await flush(batch)
    } finally {
      await snapshot.close()
    }
  }

  /** Runs the move with id `id` until it is done, aborted, or this node stops leading. */
  private async drive(id: string): Promise<void> {
    const epoch = this.replicator.epoch
    const stillMine = () =>
      !this.stopped &&
      this.replicator.isLeader &&
      this.replicator.epoch === epoch &&
      this.state.record.move?.id === id
    let backoffMs = 200
    while (stillMine()) {
      const move = this.state.record.move as ShardMove
      try {
        if (move.phase === 'copying') await this.copyAndFence(move, epoch, stillMine)
        else if (move.phase === 'fenced') await this.catchUpAndSwitch(move, epoch, stillMine, false)
        else if (move.phase === 'switching') await this.switchOver(move, epoch)
        backoffMs = 200
      } catch (err) {
        if (!stillMine()) return
        const message = (err as Error).message
        this.log.warn({ err, move: id, phase: move.phase }, 'slot move step failed; retrying')
        const current = this.state.record.move
        if (current !== null && current.phase === 'fenced' && this.fenceExpired(current)) {
          await this.rollBack(
            current,
            `the fence lasted over ${this.config.shardFenceTimeoutMs} ms: ${message}`,
          ).catch(() => {})
          await this.askTargetToAbandon(current).catch(() => {})
          return
        }
        if (current !== null && current.error !== message && current.phase === 'copying') {
          await this.setMove((m) => ({ ...m, error: message })).catch(() => {})
        }
        await sleep(backoffMs)
        backoffMs = Math.min(backoffMs * 2, 5000)
      }
    }
  }

  /** A call to the target; while fenced, bounded by what is left of the fence timeout. */
  private callTarget<T>(move: ShardMove, path: string, body: unknown): Promise<T> {
    if (this.fenceDeadlineMs === null) return this.client.call<T>(move.target, path, body)
    const leftMs = this.fenceDeadlineMs - this.now()
    if (leftMs <= 0)
      return Promise.reject(
        new Error(`the fence outlasted its timeout (${this.config.shardFenceTimeoutMs} ms)`),
      )
    return this.client.call<T>(move.target, path, body, leftMs)
  }

  private fenceExpired(move: ShardMove): boolean {
    return this.now() - move.updatedAtMs > this.config.shardFenceTimeoutMs
  }

  private async copyAndFence(
    move: ShardMove,
    epoch: number,
    stillMine: () => boolean,
  ): Promise<void> {
    const slotsText = formatSlotRanges(move.slots)
    await this.client.call(
      move.target,
      '/internal/v1/shards/import/begin',
      { id: move.id, source: this.state.group, slots: slotsText, sourceEpoch: epoch },
      deleteCallTimeoutMs,
    )
    const bits = slotBitmap(move.slots)
    const snapshot = await this.store.openSnapshot()
    let throughLsn: number
    try {
      throughLsn = snapshot.appliedLsn
      let records: { k: string; v: string }[] = []
      let bytes = 0
      const started = performance.now()
      let sent = 0
      const send = async (last: boolean) => {
        await this.client.call(move.target, '/internal/v1/shards/import/copy', {
          id: move.id,
          sourceEpoch: epoch,
          records,
          ...(last ? { throughLsn } : {}),
        })
        sent += bytes
        records = []
        bytes = 0
        // Pace: never faster than shardMoveBytesPerSMax on average.
        const aheadMs =
          (sent / this.config.shardMoveBytesPerSMax) * 1000 - (performance.now() - started)
        if (aheadMs > 0) await sleep(aheadMs)
      }
      for await (const { key, record } of snapshot.records()) {
        if (key[0] === 0x00 || record.tombstone) continue
        if (bits[slotOfKey(key)] !== 1) continue
        records.push({ k: Buffer.from(key).toString('base64'), v: record.value.toString('base64') })
        bytes += key.length + record.value.length
        if (bytes >= copyChunkBytes || records.length >= copyChunkKeys) {
          if (!stillMine()) return
          await send(false)
        }
      }
      await send(true)
    } finally {
      await snapshot.close()
    }
    // Follow the log until the target is close behind, then fence.
    let cursor = throughLsn
    for (let round = 0; stillMine(); round++) {
      cursor = await this.stream(move, epoch, cursor, this.store.commitLsn, stillMine)
      if (this.abortRequested) return
      if (this.store.commitLsn - cursor <= fenceLagEntries || round >= 50) break
    }
    if (!stillMine()) return
    const fencedAt = performance.now()
    const fenceLsn = await this.setMove(
      (m) => ({ ...m, phase: 'fenced', error: '' }),
      // Test-only (config unsafeShardMoveWithoutFence): the chaos suite must catch it.
      (r) =>
        this.config.unsafeShardMoveWithoutFence
          ? r
          : { ...r, fenced: [...r.fenced, ...move.slots] },
    )
    this.log.info({ move: move.id, fenceLsn }, 'slots fenced')
    await this.catchUpAndSwitch(
      { ...move, phase: 'fenced' },
      epoch,
      stillMine,
      true,
      cursor,
      fenceLsn,
      fencedAt,
    )
  }

  /**
   * Sends the target the log after `cursor` through `throughLsn` (committed), filtered to the
   * move's slots. Returns the new cursor.
   */
  private async stream(
    move: ShardMove,
    epoch: number,
    cursor: number,
    throughLsn: number,
    stillMine: () => boolean,
  ): Promise<number> {
    const bits = slotBitmap(move.slots)
    while (cursor < throughLsn && stillMine()) {
      if (cursor + 1 < this.store.meta.logStartLsn)
        throw new Error(`the log was compacted past LSN ${cursor + 1}; the copy starts over`)
      const read = await this.store.readLog(cursor + 1, {
        entriesMax: entriesChunkEntries,
        bytesMax: entriesChunkBytes,
      })
      if (read.length === 0) break
      const entries: {
        ops: { k: string; v?: string; d?: true }[]
        requestId?: string
        fingerprint?: string
      }[] = []
      let last = cursor
      for (const entry of read) {
        if (entry.lsn > throughLsn) break
        last = entry.lsn
        const ops: { k: string; v?: string; d?: true }[] = []
        for (const op of entry.ops) {
          if (op.key[0] === 0x00 || bits[slotOfKey(op.key)] !== 1) continue
          const k = Buffer.from(op.key).toString('base64')
          ops.push(
            op.type === 2 ? { k, d: true } : { k, v: Buffer.from(op.value).toString('base64') },
          )
        }
        if (ops.length === 0) continue
        entries.push({
          ops,
          ...(entry.requestId !== '' && entry.requestFingerprint !== undefined
            ? {
                requestId: entry.requestId,
                fingerprint: Buffer.from(entry.requestFingerprint).toString('base64'),
              }
            : {}),
        })
      }
      if (last === cursor) break
      await this.callTarget(move, '/internal/v1/shards/import/entries', {
        id: move.id,
        sourceEpoch: epoch,
        fromLsn: cursor + 1,
        throughLsn: last,
        entries,
      })
      cursor = last
    }
    return cursor
  }

  private async catchUpAndSwitch(
    move: ShardMove,
    epoch: number,
    stillMine: () => boolean,
    fresh: boolean,
    cursorAt = 0,
    fenceLsnAt = 0,
    fencedAt = performance.now(),
  ): Promise<void> {
    const cursor = cursorAt
    const fenceLsn = fenceLsnAt
    // The fence lasts at most shardFenceTimeoutMs, counted from when it was written.
    this.fenceDeadlineMs =
      (this.state.record.move?.updatedAtMs ?? this.now()) + this.config.shardFenceTimeoutMs
    try {
      await this.catchUpAndSwitchFenced(move, epoch, stillMine, fresh, cursor, fenceLsn, fencedAt)
    } finally {
      this.fenceDeadlineMs = null
    }
  }

  private async catchUpAndSwitchFenced(
    move: ShardMove,
    epoch: number,
    stillMine: () => boolean,
    fresh: boolean,
    cursorAt: number,
    fenceLsnAt: number,
    fencedAt: number,
  ): Promise<void> {
    let cursor = cursorAt
    let fenceLsn = fenceLsnAt
    if (!fresh) {
      // A new leader (or a retry): the target says how far it got; this log agrees up to the fence.
      const imp = await this.callTarget<{ cursorLsn: number }>(
        move,
        '/internal/v1/shards/import/resume',
        {
          id: move.id,
          sourceEpoch: epoch,
        },
      )
      cursor = imp.cursorLsn
      // The fence entry is in this leader's log, maybe not committed yet. An entry of this
      // epoch after it, once committed, commits it: stream through that.
      fenceLsn = (await this.state.writeRecord(this.sequencer, (r) => r)).lsn
    }
    if (this.fenceExpired(this.state.record.move ?? move) && !fresh)
      throw new Error('the fence outlasted its timeout')
    // Every write to the slots is before the fence, and the fence is committed.
    await this.replicator.waitForAck(fenceLsn, epoch, 'quorum', this.config.ackTimeoutMs)
    const through = Math.max(fenceLsn, this.store.commitLsn)
    cursor = await this.stream(move, epoch, cursor, through, stillMine)
    if (!stillMine()) return
    if (cursor < fenceLsn)
      throw new Error(`the target is at LSN ${cursor}, short of the fence at ${fenceLsn}`)
    if (this.abortRequested) return
    if (this.fenceDeadlineMs !== null && this.now() > this.fenceDeadlineMs)
      throw new Error(`the fence outlasted its timeout (${this.config.shardFenceTimeoutMs} ms)`)
    this.fenceDeadlineMs = null
    await this.setMove((m) => ({ ...m, phase: 'switching', fenceLsn: cursor }))
    await this.switchOver({ ...move, phase: 'switching', fenceLsn: cursor }, epoch)
    this.figures.fenceMs.push(performance.now() - fencedAt)
    if (this.figures.fenceMs.length > 1000) this.figures.fenceMs.shift()
  }

  private async switchOver(move: ShardMove, epoch: number): Promise<void> {
    const answer = await this.client
      .call<{ state: string; sinceLsn: number }>(move.target, '/internal/v1/shards/import/commit', {
        id: move.id,
        sourceEpoch: epoch,
        throughLsn: move.fenceLsn,
        version: move.version,
      })
      .catch(async (err: unknown) => {
        // A new leader here: the target knows the import by the old epoch; take it over first.
        if (err instanceof KvError && err.code === 'KV_ERR_STALE_EPOCH') {
          await this.client.call(move.target, '/internal/v1/shards/import/resume', {
            id: move.id,
            sourceEpoch: epoch,
          })
          return this.client.call<{ state: string; sinceLsn: number }>(
            move.target,
            '/internal/v1/shards/import/commit',
            {
              id: move.id,
              sourceEpoch: epoch,
              throughLsn: move.fenceLsn,
              version: move.version,
            },
          )
        }
        if (
          err instanceof KvError &&
          err.code === 'KV_ERR_SHARD_MOVE_IN_PROGRESS' &&
          err.details.state === 'abandoned'
        ) {
          await this.rollBackSwitching(move, `group ${move.target} abandoned the import`)
          return { state: 'abandoned', sinceLsn: 0 }
        }
        throw err
      })
    if (answer.state === 'owned') await this.finish(move, answer.sinceLsn)
  }
}

function covers(bits: Uint8Array, range: SlotRange): boolean {
  for (let s = range.first; s <= range.last; s++) if (bits[s] !== 1) return false
  return true
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}
