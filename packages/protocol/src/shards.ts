/**
 * Sharding: the keyspace is cut into `slotCount` hash slots (4,096), and each slot is owned by
 * one single-leader group. The slot of a key is CRC16 (XMODEM, as Redis Cluster uses) of its
 * bytes, or of its hash tag, modulo 4,096.
 *
 * A hash tag is the part of the key between the first `{` and the first `}` after it, when that
 * part is not empty: `{user42}/profile` and `{user42}/cart` hash `user42` alike, so they share
 * a slot and a batch or a conditional write may cover both. These are Redis Cluster's rules.
 *
 * Who owns what (the shard map) has no single home: each group is authoritative for the slots
 * it claims, each claim has a version, and a slot belongs to the claim with the highest version
 * (a move gives the target a version above the source's). Each group keeps its view in the
 * reserved key `\0cluster/shards` (a `ShardRecord`, proto/kv.proto), written through its own
 * log, so it is as durable and as consistent as the group's data. The directory of groups
 * (their members and URLs) comes from the shard map file every node and router is started with.
 */
import { fileURLToPath } from 'node:url'
import protobuf from 'protobufjs'
import { DecodeError, EncodeError } from './codec.js'
import { identityNamePattern } from './identity.js'
import { formatVersion } from './limits.js'

/** Hash slots in the keyspace. Fixed: changing it would move every key. */
export const slotCount = 4096

/** The reserved key each group keeps its shard record under. */
export const shardsKeyBytes: Buffer = Buffer.from('\u0000cluster/shards', 'utf8')

export const shardLimits = {
  /** Groups in one deployment. */
  groupsMax: 256,
  /** Members per group in the directory. */
  groupMembersMax: 64,
  /** Finished moves a group remembers (the oldest are forgotten first). */
  historyMax: 32,
  /** Imports a group keeps records of (running, abandoned or finished). */
  importsMax: 64,
  urlBytesMax: 512,
} as const

// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as Redis Cluster's keyHashSlot.
const crcTable = (() => {
  const table = new Uint16Array(256)
  for (let i = 0; i < 256; i++) {
    let crc = i << 8
    for (let bit = 0; bit < 8; bit++)
      crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff
    table[i] = crc
  }
  return table
})()

/** CRC16 (XMODEM) of `bytes[start, end)`. */
export function crc16(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let crc = 0
  for (let i = start; i < end; i++) {
    crc = ((crc << 8) & 0xffff) ^ (crcTable[((crc >> 8) ^ (bytes[i] as number)) & 0xff] as number)
  }
  return crc
}

/** The slot of a key given as its bytes (UTF-8) or as text. */
export function slotOfKey(key: Uint8Array | string): number {
  const bytes = typeof key === 'string' ? Buffer.from(key, 'utf8') : key
  const open = bytes.indexOf(0x7b) // {
  if (open !== -1) {
    const close = bytes.indexOf(0x7d, open + 1) // }
    if (close !== -1 && close > open + 1) return crc16(bytes, open + 1, close) % slotCount
  }
  return crc16(bytes) % slotCount
}

/** The hash tag of a key (what its slot is computed from), or null when it has none. */
export function hashTagOf(key: string): string | null {
  const open = key.indexOf('{')
  if (open === -1) return null
  const close = key.indexOf('}', open + 1)
  return close > open + 1 ? key.slice(open + 1, close) : null
}

/** Slots `first` to `last`, both included. */
export interface SlotRange {
  first: number
  last: number
}

function isSlot(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n < slotCount
}

/**
 * Parses `0-99,200,300-310` into sorted, merged ranges. An empty string is no slot. Throws an
 * Error (the caller turns it into its own coded error) on anything else.
 */
export function parseSlotRanges(text: string): SlotRange[] {
  const trimmed = text.trim()
  if (trimmed === '') return []
  if (trimmed.length > 65_536) throw new Error('the slot list is too long')
  const ranges: SlotRange[] = []
  for (const part of trimmed.split(',')) {
    const match = /^\s*([0-9]{1,5})\s*(?:-\s*([0-9]{1,5}))?\s*$/.exec(part)
    if (match === null)
      throw new Error(`${JSON.stringify(part)} is not a slot or a range of slots (such as 0-99)`)
    const first = Number(match[1])
    const last = match[2] === undefined ? first : Number(match[2])
    if (!isSlot(first) || !isSlot(last))
      throw new Error(
        `slot ${!isSlot(first) ? first : last} is out of range (0 to ${slotCount - 1})`,
      )
    if (last < first) throw new Error(`range ${part.trim()} ends before it starts`)
    ranges.push({ first, last })
  }
  return normalizeRanges(ranges)
}

/** Sorts and merges ranges (overlapping or adjacent ones become one). */
export function normalizeRanges(ranges: readonly SlotRange[]): SlotRange[] {
  const sorted = [...ranges].sort((a, b) => a.first - b.first)
  const out: SlotRange[] = []
  for (const r of sorted) {
    const last = out[out.length - 1]
    if (last !== undefined && r.first <= last.last + 1) last.last = Math.max(last.last, r.last)
    else out.push({ first: r.first, last: r.last })
  }
  return out
}

/** `0-99,200`: the text form of ranges. */
export function formatSlotRanges(ranges: readonly SlotRange[]): string {
  return normalizeRanges(ranges)
    .map((r) => (r.first === r.last ? String(r.first) : `${r.first}-${r.last}`))
    .join(',')
}

/** Slots in the ranges. */
export function countSlots(ranges: readonly SlotRange[]): number {
  return normalizeRanges(ranges).reduce((n, r) => n + r.last - r.first + 1, 0)
}

export function rangesContain(ranges: readonly SlotRange[], slot: number): boolean {
  for (const r of ranges) if (slot >= r.first && slot <= r.last) return true
  return false
}

/** A bitmap of the slots in `ranges`, for checks on the hot path. */
export function slotBitmap(ranges: readonly SlotRange[]): Uint8Array {
  const bits = new Uint8Array(slotCount)
  for (const r of ranges) bits.fill(1, r.first, r.last + 1)
  return bits
}

/** One member of a group in the directory: its id and its client URL. */
export interface ShardMember {
  id: string
  url: string
}

/** One single-leader group of the deployment. */
export interface ShardGroup {
  id: string
  members: ShardMember[]
}

/**
 * A claim on slots `first` to `last`: `group` owns them at `version`, since its own LSN
 * `sinceLsn` (0 for the slots a group was started with). A replica of the owner that has applied
 * `sinceLsn` holds every write made to those slots before they moved.
 */
export interface SlotClaim extends SlotRange {
  group: string
  version: number
  sinceLsn: number
}

/** Who owns each slot: claims that cover every slot once, in slot order. */
export interface ShardMap {
  /** The highest claim version: a map with a higher version knows of a later move. */
  version: number
  slotCount: number
  groups: ShardGroup[]
  slots: SlotClaim[]
}

/** The shard map file (`--shard-map`): the directory, and the slots each group starts with. */
export interface ShardMapFile {
  slotCount?: number
  groups: { id: string; members: ShardMember[]; slots: string }[]
}

function urlProblem(url: unknown, what: string): string | null {
  if (typeof url !== 'string') return `${what} is not a string`
  if (Buffer.byteLength(url) > shardLimits.urlBytesMax) return `${what} is too long`
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    return `${what} ${JSON.stringify(url)} is not a URL`
  }
  if ((parsed.protocol !== 'http:' && parsed.protocol !== 'https:') || parsed.origin !== url)
    return `${what} ${JSON.stringify(url)} is not an http(s) origin (such as https://10.0.0.1:7001)`
  return null
}

/** Checks a directory of groups; returns what is wrong or null. */
export function groupsProblem(groups: unknown): string | null {
  if (!Array.isArray(groups)) return 'groups is not a list'
  if (groups.length === 0) return 'no group'
  if (groups.length > shardLimits.groupsMax)
    return `${groups.length} groups (at most ${shardLimits.groupsMax})`
  const groupIds = new Set<string>()
  const memberIds = new Set<string>()
  for (const g of groups as Partial<ShardGroup>[]) {
    if (typeof g?.id !== 'string' || !identityNamePattern.test(g.id))
      return `group id ${JSON.stringify(g?.id)} is not valid (letters, digits, . _ -)`
    if (groupIds.has(g.id)) return `group ${g.id} is listed twice`
    groupIds.add(g.id)
    if (!Array.isArray(g.members) || g.members.length === 0) return `group ${g.id} has no members`
    if (g.members.length > shardLimits.groupMembersMax)
      return `group ${g.id} has ${g.members.length} members (at most ${shardLimits.groupMembersMax})`
    for (const m of g.members as Partial<ShardMember>[]) {
      if (typeof m?.id !== 'string' || !identityNamePattern.test(m.id))
        return `member id ${JSON.stringify(m?.id)} of group ${g.id} is not valid`
      if (memberIds.has(m.id))
        return `member ${m.id} is listed twice (member ids are unique across groups)`
      memberIds.add(m.id)
      const problem = urlProblem(m.url, `URL of member ${m.id}`)
      if (problem !== null) return problem
    }
  }
  return null
}

/**
 * Validates a parsed shard map file and makes the starting map (every claim at version 1,
 * since LSN 0). Throws an Error saying what is wrong: every slot must be owned by exactly one
 * group, and group and member ids must be unique.
 */
export function shardMapOfFile(file: unknown): ShardMap {
  const f = file as Partial<ShardMapFile> | null
  if (f === null || typeof f !== 'object') throw new Error('the shard map is not a JSON object')
  if (f.slotCount !== undefined && f.slotCount !== slotCount)
    throw new Error(`slotCount must be ${slotCount}; got ${JSON.stringify(f.slotCount)}`)
  const problem = groupsProblem(f.groups)
  if (problem !== null) throw new Error(problem)
  const groups = f.groups as ShardMapFile['groups']
  const owner = new Array<string | undefined>(slotCount)
  const claims: SlotClaim[] = []
  for (const g of groups) {
    if (typeof g.slots !== 'string')
      throw new Error(`slots of group ${g.id} must be a string such as "0-2047" (or "" for none)`)
    let ranges: SlotRange[]
    try {
      ranges = parseSlotRanges(g.slots)
    } catch (err) {
      throw new Error(`slots of group ${g.id}: ${(err as Error).message}`)
    }
    for (const r of ranges) {
      for (let s = r.first; s <= r.last; s++) {
        if (owner[s] !== undefined)
          throw new Error(`slot ${s} is given to both ${owner[s]} and ${g.id}`)
        owner[s] = g.id
      }
      claims.push({ ...r, group: g.id, version: 1, sinceLsn: 0 })
    }
  }
  const missing = owner.findIndex((o) => o === undefined)
  if (missing !== -1) throw new Error(`slot ${missing} is owned by no group`)
  return {
    version: 1,
    slotCount,
    groups: groups.map((g) => ({
      id: g.id,
      members: g.members.map((m) => ({ id: m.id, url: m.url })),
    })),
    slots: mergeClaims(claims),
  }
}

/** Sorts claims by slot and merges neighbours with the same group, version and since-LSN. */
export function mergeClaims(claims: readonly SlotClaim[]): SlotClaim[] {
  const sorted = [...claims].sort((a, b) => a.first - b.first)
  const out: SlotClaim[] = []
  for (const c of sorted) {
    const last = out[out.length - 1]
    if (
      last !== undefined &&
      c.first === last.last + 1 &&
      c.group === last.group &&
      c.version === last.version &&
      c.sinceLsn === last.sinceLsn
    )
      last.last = c.last
    else out.push({ ...c })
  }
  return out
}

/** The claim per slot, as an array of `slotCount` entries. */
export function claimsBySlot(claims: readonly SlotClaim[]): (SlotClaim | undefined)[] {
  const out = new Array<SlotClaim | undefined>(slotCount)
  for (const c of claims) for (let s = c.first; s <= c.last; s++) out[s] = c
  return out
}

/**
 * Merges what several groups claim into one map: per slot, the claim with the highest version
 * (ties, which a correct deployment never makes, go to the lower group id so every router
 * agrees). `fallback` fills slots no claim covers.
 */
export function mergeShardClaims(
  groups: ShardGroup[],
  claimSets: readonly (readonly SlotClaim[])[],
  fallback: ShardMap,
): ShardMap {
  const best = claimsBySlot(fallback.slots)
  for (const claims of claimSets) {
    for (const c of claims) {
      for (let s = c.first; s <= c.last; s++) {
        const current = best[s]
        if (
          current === undefined ||
          c.version > current.version ||
          (c.version === current.version && c.group < current.group && c.group !== current.group)
        )
          best[s] = c
      }
    }
  }
  const single: SlotClaim[] = []
  let version = 0
  for (let s = 0; s < slotCount; s++) {
    const c = best[s] as SlotClaim
    version = Math.max(version, c.version)
    single.push({ first: s, last: s, group: c.group, version: c.version, sinceLsn: c.sinceLsn })
  }
  return { version, slotCount, groups, slots: mergeClaims(single) }
}

/** The claim covering `slot` in a map. */
export function claimOfSlot(map: ShardMap, slot: number): SlotClaim {
  // Claims are few (one per contiguous run): a linear scan beats building an index per map.
  for (const c of map.slots) if (slot >= c.first && slot <= c.last) return c
  throw new Error(`slot ${slot} is not in the shard map`)
}

// ---- The record a group keeps under \0cluster/shards (proto/kv.proto ShardRecord) ----

/** Where a move out of this group stands. */
export type MovePhase =
  /** Copying the slots' records, then following the log, to the target. Not fenced yet. */
  | 'copying'
  /** The slots take no writes here (fence committed at `fenceLsn`); the target catches up. */
  | 'fenced'
  /** The target was asked to take the slots; only the target's answer can end this phase. */
  | 'switching'
  /** The target owns the slots (at `version`). */
  | 'done'
  /** Rolled back: the slots stayed here and are writable again. */
  | 'aborted'

export const movePhases: readonly MovePhase[] = [
  'copying',
  'fenced',
  'switching',
  'done',
  'aborted',
]

export interface ShardMove {
  id: string
  slots: SlotRange[]
  target: string
  phase: MovePhase
  /** The LSN of the fence entry (phases fenced and later); 0 before. */
  fenceLsn: number
  /** The version the target's claim gets. */
  version: number
  startedAtMs: number
  updatedAtMs: number
  /** The target's LSN at which it took the slots (phase done). */
  targetLsn: number
  /** Why the move was aborted, or the last failure it is retrying past. */
  error: string
}

/** Where an import into this group stands. */
export type ImportState = 'importing' | 'owned' | 'abandoned'
export const importStates: readonly ImportState[] = ['importing', 'owned', 'abandoned']

export interface ShardImport {
  id: string
  slots: SlotRange[]
  source: string
  state: ImportState
  /** The source's epoch that drives it: a lower epoch's calls are refused (a deposed leader). */
  sourceEpoch: number
  /** The source LSN applied so far: everything the source wrote to the slots up to it is here. */
  cursorLsn: number
  /** Records written by this import. */
  keys: number
}

export interface ShardRecord {
  /** This group's view of the whole map (its own claims are the authoritative ones). */
  slots: SlotClaim[]
  /** Slots fenced for a move out: no writes, no linearizable reads. */
  fenced: SlotRange[]
  /** The move out of this group that is not finished, or null. */
  move: ShardMove | null
  /** Finished moves out (done or aborted), newest last. */
  history: ShardMove[]
  imports: ShardImport[]
}

const root = protobuf.loadSync(fileURLToPath(new URL('../proto/kv.proto', import.meta.url)))
const ShardRecordType = root.lookupType('kv.v1.ShardRecord')

interface RawRange {
  first: number
  last: number
}
interface RawMove {
  id: string
  slots: RawRange[]
  target: string
  phase: number
  fenceLsn: number | { toNumber(): number }
  version: number | { toNumber(): number }
  startedAtMs: number | { toNumber(): number }
  updatedAtMs: number | { toNumber(): number }
  targetLsn: number | { toNumber(): number }
  error: string
}

function num(value: number | { toNumber(): number } | undefined): number {
  if (value === undefined) return 0
  return typeof value === 'number' ? value : value.toNumber()
}

function rangesProblem(ranges: readonly SlotRange[], what: string): string | null {
  for (const r of ranges) {
    if (!isSlot(r.first) || !isSlot(r.last) || r.last < r.first) return `${what}: bad slot range`
  }
  return null
}

function moveProblem(m: ShardMove): string | null {
  if (!identityNamePattern.test(m.target)) return 'move target is not a group id'
  if (m.id === '' || m.id.length > 64) return 'move id is not valid'
  if (!movePhases.includes(m.phase)) return 'move phase is not valid'
  if (m.slots.length === 0) return 'move has no slots'
  return rangesProblem(m.slots, 'move slots')
}

/** What is wrong with a record, or null. */
export function shardRecordProblem(record: ShardRecord): string | null {
  let covered = 0
  for (const c of record.slots) {
    if (!isSlot(c.first) || !isSlot(c.last) || c.last < c.first) return 'bad claim range'
    if (c.first !== covered) return `claims do not cover slot ${covered} exactly once`
    if (!identityNamePattern.test(c.group)) return 'claim group is not a group id'
    if (!Number.isSafeInteger(c.version) || c.version < 1) return 'claim version is not valid'
    if (!Number.isSafeInteger(c.sinceLsn) || c.sinceLsn < 0) return 'claim since-LSN is not valid'
    covered = c.last + 1
  }
  if (covered !== slotCount) return `claims do not cover slot ${covered}`
  const fenced = rangesProblem(record.fenced, 'fenced')
  if (fenced !== null) return fenced
  if (record.move !== null) {
    const p = moveProblem(record.move)
    if (p !== null) return p
  }
  if (record.history.length > shardLimits.historyMax) return 'history is too long'
  for (const m of record.history) {
    const p = moveProblem(m)
    if (p !== null) return p
  }
  if (record.imports.length > shardLimits.importsMax) return 'too many imports'
  for (const i of record.imports) {
    if (!identityNamePattern.test(i.source)) return 'import source is not a group id'
    if (!importStates.includes(i.state)) return 'import state is not valid'
    const p = rangesProblem(i.slots, 'import slots')
    if (p !== null) return p
  }
  return null
}

function moveToRaw(m: ShardMove): object {
  return {
    ...m,
    slots: m.slots.map((r) => ({ first: r.first, last: r.last })),
    phase: movePhases.indexOf(m.phase) + 1,
  }
}

function moveOfRaw(m: RawMove): ShardMove {
  return {
    id: m.id,
    slots: (m.slots ?? []).map((r) => ({ first: r.first, last: r.last })),
    target: m.target,
    phase: movePhases[m.phase - 1] ?? ('?' as MovePhase),
    fenceLsn: num(m.fenceLsn),
    version: num(m.version),
    startedAtMs: num(m.startedAtMs),
    updatedAtMs: num(m.updatedAtMs),
    targetLsn: num(m.targetLsn),
    error: m.error ?? '',
  }
}

export function encodeShardRecord(record: ShardRecord): Buffer {
  const problem = shardRecordProblem(record)
  if (problem !== null) throw new EncodeError('shard record', problem)
  return Buffer.from(
    ShardRecordType.encode({
      format: formatVersion,
      slots: record.slots,
      fenced: record.fenced,
      move: record.move === null ? undefined : moveToRaw(record.move),
      history: record.history.map(moveToRaw),
      imports: record.imports.map((i) => ({ ...i, state: importStates.indexOf(i.state) + 1 })),
    }).finish(),
  )
}

export function decodeShardRecord(bytes: Uint8Array): ShardRecord {
  let raw: {
    format: number
    slots: { first: number; last: number; group: string; version: unknown; sinceLsn: unknown }[]
    fenced: RawRange[]
    move?: RawMove | null
    history: RawMove[]
    imports: {
      id: string
      slots: RawRange[]
      source: string
      state: number
      sourceEpoch: unknown
      cursorLsn: unknown
      keys: unknown
    }[]
  }
  try {
    raw = ShardRecordType.decode(bytes) as unknown as typeof raw
  } catch (err) {
    throw new DecodeError('shard record', (err as Error).message, { cause: err })
  }
  if (raw.format !== formatVersion)
    throw new DecodeError('shard record', `unknown format ${String(raw.format)}`)
  const n = (v: unknown) => num(v as number | { toNumber(): number } | undefined)
  const record: ShardRecord = {
    slots: raw.slots.map((c) => ({
      first: c.first,
      last: c.last,
      group: c.group,
      version: n(c.version),
      sinceLsn: n(c.sinceLsn),
    })),
    fenced: raw.fenced.map((r) => ({ first: r.first, last: r.last })),
    move: raw.move === undefined || raw.move === null ? null : moveOfRaw(raw.move),
    history: raw.history.map(moveOfRaw),
    imports: raw.imports.map((i) => ({
      id: i.id,
      slots: i.slots.map((r) => ({ first: r.first, last: r.last })),
      source: i.source,
      state: importStates[i.state - 1] ?? ('?' as ImportState),
      sourceEpoch: n(i.sourceEpoch),
      cursorLsn: n(i.cursorLsn),
      keys: n(i.keys),
    })),
  }
  const problem = shardRecordProblem(record)
  if (problem !== null) throw new DecodeError('shard record', problem)
  return record
}

// ---- The HTTP API ----

/**
 * `GET /v1/shards` on any member: this group's view. `claims` are the slots this group owns
 * (authoritative, fenced ones included); `map` is its view of the whole map, which may be out of
 * date for other groups' slots. A router merges the claims of every group (`mergeShardClaims`).
 */
export interface GroupShardView {
  group: string
  /** This member's applied LSN when it answered. */
  appliedLsn: number
  claims: SlotClaim[]
  fenced: string
  map: ShardMap
  move: ShardMove | null
  history: ShardMove[]
  imports: ShardImport[]
}
