/**
 * What this node's group owns: the shard record (`\0cluster/shards`) as this replica has it,
 * and the checks every key operation goes through.
 *
 * - A key of a slot the group does not own is refused with KV_ERR_WRONG_SHARD, naming the
 *   owner this group knows of; a stale router learns the new owner from it.
 * - A fenced slot (moving out) refuses writes and linearizable reads with KV_ERR_SLOT_MOVING.
 * - A batch whose keys are owned by different groups gets KV_ERR_CROSS_SHARD.
 *
 * The leader checks writes inside the sequencer (`admitWrite`), in the same synchronous step that
 * hands out the LSN. A record this node writes (a fence) takes effect here as soon as it is
 * sequenced, so no write can get an LSN after a fence without being checked against it.
 */
import { readFileSync } from 'node:fs'
import type { Logger } from 'pino'
import {
  KvError,
  claimsBySlot,
  countSlots,
  decodeShardRecord,
  encodeShardRecord,
  formatSlotRanges,
  mergeClaims,
  normalizeRanges,
  shardMapOfFile,
  shardsKeyBytes,
  slotBitmap,
  slotCount,
  slotOfKey,
  type GroupShardView,
  type ShardGroup,
  type ShardMap,
  type ShardRecord,
  type SlotClaim,
  type SlotRange,
} from '@kvstore/protocol'
import type { Sequencer, Store, WriteOp, WriteRequest, WriteResult } from '@kvstore/storage'
import { ConfigError } from '../config/types.js'
import type { MemberConfig } from '../config/types.js'

/** The shard map file read at start: the directory and the starting ownership. */
export interface ShardSetup {
  group: string
  /** The map the file describes (every claim at version 1). */
  initial: ShardMap
  groups: ShardGroup[]
}

/** Reads and checks `--shard-map` against this node's group and members. */
export function loadShardSetup(
  file: string,
  group: string,
  self: string,
  /** The group's --members, which must be the file's members of the group; null: not checked. */
  members: readonly MemberConfig[] | null,
): ShardSetup {
  let parsed: unknown
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'))
  } catch (err) {
    throw new ConfigError(`--shard-map ${file}: ${(err as Error).message}`)
  }
  let initial: ShardMap
  try {
    initial = shardMapOfFile(parsed)
  } catch (err) {
    throw new ConfigError(`--shard-map ${file}: ${(err as Error).message}`)
  }
  const mine = initial.groups.find((g) => g.id === group)
  if (mine === undefined)
    throw new ConfigError(
      `--shard-group ${group} is not a group of ${file} (it has ${initial.groups.map((g) => g.id).join(', ')})`,
    )
  if (!mine.members.some((m) => m.id === self))
    throw new ConfigError(`this node (${self}) is not a member of group ${group} in ${file}`)
  const listed = new Set(mine.members.map((m) => m.id))
  const configured = members?.map((m) => m.id) ?? [...listed]
  if (configured.some((id) => !listed.has(id)) || listed.size !== configured.length)
    throw new ConfigError(
      `group ${group} in ${file} has members ${[...listed].join(', ')}, but --members names ${configured.join(', ')}`,
    )
  return { group, initial, groups: initial.groups }
}

export type ShardIntent = 'read' | 'write' | 'linearizable'

export class ShardState {
  readonly group: string
  /** The directory: every group's members and URLs (the shard map file; SIGHUP reads it again). */
  groups: ShardGroup[]
  /** True once this group's log holds its record (the first leader writes it). */
  stored = false
  private readonly store: Store
  private readonly log: Logger
  private current: ShardRecord
  private readonly initial: ShardMap
  /** Per slot: 1 when this group claims it (fenced or not). */
  private owned: Uint8Array
  private fencedBits: Uint8Array
  private bySlot: (SlotClaim | undefined)[]
  /** Record writes sequenced here and not applied yet: until then, the store's copy is older. */
  private pendingWrites = 0
  private readonly listeners: (() => void)[] = []
  /** KV_ERR_WRONG_SHARD answers given (for metrics). */
  wrongShardRefusals = 0
  slotMovingRefusals = 0

  constructor(store: Store, setup: ShardSetup, log: Logger) {
    this.store = store
    this.group = setup.group
    this.groups = setup.groups
    this.log = log
    this.initial = setup.initial
    this.current = this.initialRecord(setup.initial)
    this.owned = new Uint8Array(slotCount)
    this.fencedBits = new Uint8Array(slotCount)
    this.bySlot = []
    this.load()
    store.watchReserved((keys) => {
      if (keys !== 'all' && !keys.some((k) => k.equals(shardsKeyBytes))) return
      if (this.pendingWrites === 0 || keys === 'all') this.load()
    })
  }

  private initialRecord(map: ShardMap): ShardRecord {
    return { slots: map.slots, fenced: [], move: null, history: [], imports: [] }
  }

  /** Reads the record from the store (the starting map when there is none yet). */
  load(): void {
    const stored = this.store.getSync(shardsKeyBytes)
    this.stored = stored !== null && !stored.tombstone
    if (stored !== null && !stored.tombstone) {
      try {
        this.set(decodeShardRecord(stored.value))
      } catch (err) {
        // A record this group's own log wrote does not decode: never serve on a guess.
        throw new Error(`the shard record does not decode: ${(err as Error).message}`)
      }
    } else {
      // No record yet (or a truncation took the first one away): the file's starting map.
      this.set(this.initialRecord(this.initial))
    }
  }

  private set(record: ShardRecord): void {
    this.current = record
    const mine = record.slots.filter((c) => c.group === this.group)
    this.owned = slotBitmap(mine)
    this.fencedBits = slotBitmap(record.fenced)
    this.bySlot = claimsBySlot(record.slots)
    for (const listener of this.listeners) listener()
  }

  onChange(listener: () => void): void {
    this.listeners.push(listener)
  }

  get record(): ShardRecord {
    return this.current
  }

  /** The highest claim version this group knows. */
  get mapVersion(): number {
    let version = 0
    for (const c of this.current.slots) version = Math.max(version, c.version)
    return version
  }

  ownedSlots(): number {
    let n = 0
    for (let s = 0; s < slotCount; s++) n += this.owned[s] as number
    return n
  }

  fencedSlots(): number {
    return countSlots(this.current.fenced)
  }

  ownsSlot(slot: number): boolean {
    return this.owned[slot] === 1
  }

  /** True while an import into this group covers `slot` (or has just taken it). */
  importing(slot: number): boolean {
    return this.current.imports.some(
      (i) => i.state !== 'abandoned' && i.slots.some((r) => slot >= r.first && slot <= r.last),
    )
  }

  /** True when a listing may show this key: its slot is owned here (reserved keys never are listed anyway). */
  lists(key: Uint8Array): boolean {
    return key[0] === 0x00 || this.owned[slotOfKey(key)] === 1
  }

  endpointsOf(group: string): string[] {
    return this.groups.find((g) => g.id === group)?.members.map((m) => m.url) ?? []
  }

  wrongShard(slot: number): KvError {
    const claim = this.bySlot[slot]
    const owner = claim?.group ?? null
    this.wrongShardRefusals++
    return new KvError(
      'KV_ERR_WRONG_SHARD',
      `slot ${slot} is owned by group ${owner ?? '?'}, not ${this.group} (shard map version ${this.mapVersion})`,
      {
        slot,
        group: owner,
        endpoints: owner === null ? [] : this.endpointsOf(owner),
        mapVersion: this.mapVersion,
      },
    )
  }

  private slotMoving(slot: number): KvError {
    this.slotMovingRefusals++
    const move = this.current.move
    return new KvError(
      'KV_ERR_SLOT_MOVING',
      `slot ${slot} is moving to group ${move?.target ?? '?'}: it takes no writes or linearizable reads for a moment; retry`,
      { slot, moveId: move?.id ?? null, retryAfterSeconds: 1 },
    )
  }

  /** Throws unless this group serves `key` for `intent`. Reserved keys are always served. */
  check(key: Uint8Array, intent: ShardIntent): void {
    if (key[0] === 0x00) return
    const slot = slotOfKey(key)
    if (this.owned[slot] !== 1) throw this.wrongShard(slot)
    if (intent !== 'read' && this.fencedBits[slot] === 1) throw this.slotMoving(slot)
  }

  /** The sequencer's check of a client write: every key here, none fenced, one owner. */
  admitWrite(request: WriteRequest): void {
    if (request.origin === 'shard') return
    if (request.ops.length === 1) {
      this.check((request.ops[0] as WriteOp).key, 'write')
      return
    }
    let foreign: { slot: number; group: string }[] | null = null
    for (const op of request.ops) {
      if (op.key[0] === 0x00) continue
      const slot = slotOfKey(op.key)
      if (this.owned[slot] !== 1) {
        foreign ??= []
        foreign.push({ slot, group: this.bySlot[slot]?.group ?? '?' })
      }
    }
    if (foreign !== null) {
      const owners = new Set(foreign.map((f) => f.group))
      const mine = request.ops.some(
        (op) => op.key[0] !== 0x00 && this.owned[slotOfKey(op.key)] === 1,
      )
      if (mine || owners.size > 1) {
        const slots = [
          ...new Set(request.ops.filter((op) => op.key[0] !== 0x00).map((op) => slotOfKey(op.key))),
        ]
        const groups = [...new Set(slots.map((s) => this.bySlot[s]?.group ?? '?'))]
        throw new KvError(
          'KV_ERR_CROSS_SHARD',
          `the batch touches slots ${slots.join(', ')} of groups ${groups.join(', ')}; a batch must stay in one group (use a {hash tag})`,
          { slots, groups },
        )
      }
      throw this.wrongShard((foreign[0] as { slot: number }).slot)
    }
    for (const op of request.ops) this.check(op.key, 'write')
  }

  /**
   * Writes a new record through the log: `change` gets the current record and returns the new
   * one. It takes effect here at once (before it is durable); if the write fails the record is
   * read back from the store. `extra` data ops go in the same entry.
   */
  writeRecord(
    sequencer: Sequencer,
    change: (record: ShardRecord) => ShardRecord,
    extra: WriteOp[] = [],
  ): Promise<WriteResult> {
    const next = change(structuredClone(this.current))
    next.slots = mergeClaims(next.slots)
    next.fenced = normalizeRanges(next.fenced)
    const value = encodeShardRecord(next)
    const written = sequencer.write({
      kind: 'batch',
      ops: [...extra, { type: 'put', key: shardsKeyBytes, value }],
      origin: 'shard',
    })
    this.pendingWrites++
    this.set(next)
    return written.then(
      (result) => {
        this.settle()
        return result
      },
      (err: unknown) => {
        this.settle()
        this.load()
        throw err
      },
    )
  }

  private settle(): void {
    this.pendingWrites--
    if (this.pendingWrites === 0) this.load()
  }

  /** GET /v1/shards. */
  view(): GroupShardView {
    const r = this.current
    return {
      group: this.group,
      appliedLsn: this.store.appliedLsn,
      claims: r.slots.filter((c) => c.group === this.group),
      fenced: formatSlotRanges(r.fenced),
      map: {
        version: this.mapVersion,
        slotCount,
        groups: this.groups,
        slots: r.slots,
      },
      move: r.move,
      history: r.history,
      imports: r.imports,
    }
  }

  /** Claims of `slots` to `group` at `version` since `sinceLsn`, replacing what the record had. */
  static reassign(
    claims: readonly SlotClaim[],
    slots: readonly SlotRange[],
    group: string,
    version: number,
    sinceLsn: number,
  ): SlotClaim[] {
    const bySlot = claimsBySlot(claims)
    const moving = slotBitmap(slots)
    const out: SlotClaim[] = []
    for (let s = 0; s < slotCount; s++) {
      const c = bySlot[s] as SlotClaim
      out.push(
        moving[s] === 1
          ? { first: s, last: s, group, version, sinceLsn }
          : { first: s, last: s, group: c.group, version: c.version, sinceLsn: c.sinceLsn },
      )
    }
    return mergeClaims(out)
  }

  logger(): Logger {
    return this.log
  }
}
