/**
 * Regions (multi-leader across regions): stamps, the regions file, the reserved keys a region
 * keeps its cursors and conflict record under, and the codecs of what regions ship.
 *
 * A region is a normal single-leader group. Each user key's record carries a stamp (a hybrid
 * logical clock time and the region that wrote it); the larger stamp wins, the same way on
 * every region, so regions converge. Shipping carries each write's stamp and the stamp it
 * replaced (`prev`), which tells a causal overwrite from a concurrent one.
 */
import { fileURLToPath } from 'node:url'
import protobuf from 'protobufjs'
import {
  DecodeError,
  EncodeError,
  decodedOp,
  regionIdPattern,
  stampProblem,
  type Op,
  type Stamp,
} from './codec.js'
import { formatVersion, isEpoch, isLsn, limitsCeiling } from './limits.js'
import { groupsProblem, type ShardGroup } from './shards.js'

export { regionIdPattern, type Stamp } from './codec.js'
export { compareStamps, sameStamp } from './stamps.js'

const root = protobuf.loadSync(fileURLToPath(new URL('../proto/kv.proto', import.meta.url)))
const RegionBatchType = root.lookupType('kv.v1.RegionBatch')
const RegionCursorType = root.lookupType('kv.v1.RegionCursor')
const ConflictRecordType = root.lookupType('kv.v1.ConflictRecord')

export const regionLimits = {
  regionsMax: 16,
  /** Entries in one shipped batch (the bytes are bounded by the node's config). */
  batchEntriesMax: 4096,
} as const

/** `"<wallMs>.<logical>@<region>"`, as the API shows stamps. */
export function formatStamp(stamp: Stamp): string {
  return `${stamp.wallMs}.${stamp.logical}@${stamp.region}`
}

/** Reads a stamp as `formatStamp` writes it; throws on anything else. */
export function parseStamp(text: string): Stamp {
  const m = /^([0-9]{1,16})\.([0-9]{1,10})@(.{1,32})$/.exec(text)
  if (m === null)
    throw new Error(`${JSON.stringify(text)} is not a stamp (<wallMs>.<counter>@<region>)`)
  const stamp = { wallMs: Number(m[1]), logical: Number(m[2]), region: m[3] as string }
  const problem = stampProblem(stamp)
  if (problem !== null) throw new Error(problem)
  return stamp
}

// ---- reserved keys ----

const cursorPrefix = '\u0000region/cursor/'
const conflictPrefix = '\u0000region/conflict/'

/** The reserved key holding how far this region applied `source`'s log. */
export function regionCursorKey(source: string): Buffer {
  return Buffer.from(cursorPrefix + source, 'utf8')
}

/**
 * The reserved key holding how far region `to` has confirmed this region's log: every member
 * keeps its log from there (within logRetentionEntriesMax), so a new leader can resume.
 */
export function regionShippedKey(to: string): Buffer {
  return Buffer.from(`\u0000region/shipped/${to}`, 'utf8')
}

export const regionCursorPrefixBytes: Buffer = Buffer.from(cursorPrefix, 'utf8')
export const conflictPrefixBytes: Buffer = Buffer.from(conflictPrefix, 'utf8')

/** The reserved key of the `n`th conflict recorded by the entry at `lsn` (sorts by LSN). */
export function conflictKey(lsn: number, n: number): Buffer {
  return Buffer.from(`${conflictPrefix}${conflictId(lsn, n)}`, 'utf8')
}

export function conflictId(lsn: number, n: number): string {
  return `${String(lsn).padStart(20, '0')}-${n}`
}

/** The id part of a conflict key (`00000000000000000042-0`), or null for another key. */
export function conflictIdOfKey(key: Buffer): string | null {
  if (!key.subarray(0, conflictPrefixBytes.length).equals(conflictPrefixBytes)) return null
  return key.subarray(conflictPrefixBytes.length).toString('utf8')
}

// ---- the regions file ----

export interface RegionMember {
  id: string
  /** The member's client URL as seen from this node (a proxy address is fine). */
  url: string
}

export interface Region {
  id: string
  members: RegionMember[]
}

export interface RegionsFile {
  regions: Region[]
}

/** Checks a parsed regions file; returns its regions or throws with what is wrong. */
export function regionsOfFile(file: unknown): Region[] {
  const f = file as Partial<RegionsFile> | null
  if (f === null || typeof f !== 'object') throw new Error('the regions file is not a JSON object')
  if (!Array.isArray(f.regions) || f.regions.length < 2)
    throw new Error('regions must list at least two regions')
  if (f.regions.length > regionLimits.regionsMax)
    throw new Error(`${f.regions.length} regions (at most ${regionLimits.regionsMax})`)
  for (const r of f.regions as Partial<Region>[]) {
    if (typeof r?.id !== 'string' || !regionIdPattern.test(r.id))
      throw new Error(
        `region id ${JSON.stringify(r?.id)} is not valid (a lowercase letter, then letters, digits or -, at most 32)`,
      )
  }
  const problem = groupsProblem(f.regions)
  if (problem !== null) throw new Error(problem.replaceAll('group', 'region'))
  return (f.regions as ShardGroup[]).map((r) => ({
    id: r.id,
    members: r.members.map((m) => ({ id: m.id, url: m.url })),
  }))
}

// ---- shipped batches ----

export interface RegionEntry {
  lsn: number
  ops: Op[]
  timestampMs: number
}

export interface RegionBatch {
  source: string
  sourceEpoch: number
  fromLsn: number
  throughLsn: number
  entries: RegionEntry[]
  sourceCommitLsn: number
  sentAtMs: number
  /** A re-seed from a snapshot (see kv.proto); absent or false for log shipping. */
  copy?: boolean
  copyLast?: boolean
}

function batchProblem(b: RegionBatch): string | null {
  if (typeof b.source !== 'string' || !regionIdPattern.test(b.source))
    return `source ${JSON.stringify(b.source)} is not a region id`
  if (!isEpoch(b.sourceEpoch)) return 'source epoch is not valid'
  if (!isLsn(b.fromLsn, 1) || !isLsn(b.throughLsn, 1) || b.throughLsn < b.fromLsn)
    return `lsn range ${b.fromLsn}..${b.throughLsn} is not valid`
  if (!isLsn(b.sourceCommitLsn, 0) || b.sourceCommitLsn < b.throughLsn)
    return `source commit lsn ${b.sourceCommitLsn} is below the batch's end ${b.throughLsn}`
  if (!isLsn(b.sentAtMs, 0)) return 'sent-at time is not valid'
  if (!Array.isArray(b.entries) || b.entries.length > regionLimits.batchEntriesMax)
    return `batch holds ${Array.isArray(b.entries) ? b.entries.length : '?'} entries (at most ${regionLimits.batchEntriesMax})`
  if (b.copyLast === true && b.copy !== true) return 'copy_last without copy'
  if (
    b.copy === true &&
    (b.entries.length > 1 || (b.entries[0] !== undefined && b.entries[0].lsn !== b.throughLsn))
  )
    return 'a copy batch holds at most one entry, at its through_lsn'
  let last = b.fromLsn - 1
  for (const e of b.entries) {
    if (!isLsn(e.lsn, 1) || e.lsn <= last || e.lsn > b.throughLsn)
      return `entry lsn ${e.lsn} is out of order or outside ${b.fromLsn}..${b.throughLsn}`
    last = e.lsn
    if (!Array.isArray(e.ops) || e.ops.length === 0 || e.ops.length > limitsCeiling.batchOpsMax)
      return `entry ${e.lsn} holds ${Array.isArray(e.ops) ? e.ops.length : '?'} ops`
    for (const op of e.ops) {
      if (op.type !== 1 && op.type !== 2) return `entry ${e.lsn} has an op of unknown type`
      const key = op.key
      if (!(key instanceof Uint8Array) || key.length === 0 || key[0] === 0x00)
        return `entry ${e.lsn} writes an empty or reserved key`
      if (key.length > limitsCeiling.keyBytesMax) return `entry ${e.lsn} has a key too long`
      if (op.value.length > limitsCeiling.valueBytesMax)
        return `entry ${e.lsn} has a value too large`
      if (op.type === 2 && op.value.length !== 0) return `entry ${e.lsn} deletes with a value`
      if (op.stamp === undefined) return `entry ${e.lsn} has an op without a stamp`
      const problem = stampProblem(op.stamp) ?? stampProblem(op.prev)
      if (problem !== null) return `entry ${e.lsn}: ${problem}`
      if (op.stamp.region !== b.source)
        return `entry ${e.lsn} carries a write of region ${op.stamp.region}, not of ${b.source}`
    }
  }
  return null
}

export function encodeRegionBatch(batch: RegionBatch): Uint8Array {
  const problem = batchProblem(batch)
  if (problem !== null) throw new EncodeError('region batch', problem)
  return RegionBatchType.encode({ format: formatVersion, ...batch }).finish()
}

/** Decodes and validates a shipped batch (from another region: checked, never trusted). */
export function decodeRegionBatch(bytes: Uint8Array): RegionBatch {
  let raw: RegionBatch & { format: number }
  try {
    raw = RegionBatchType.decode(bytes) as unknown as RegionBatch & { format: number }
  } catch (err) {
    throw new DecodeError('region batch', (err as Error).message, { cause: err })
  }
  if (raw.format !== formatVersion)
    throw new DecodeError('region batch', `unknown format ${String(raw.format)}`)
  const batch: RegionBatch = {
    source: raw.source,
    sourceEpoch: raw.sourceEpoch,
    fromLsn: raw.fromLsn,
    throughLsn: raw.throughLsn,
    sourceCommitLsn: raw.sourceCommitLsn,
    sentAtMs: raw.sentAtMs,
    ...(raw.copy === true ? { copy: true, copyLast: raw.copyLast === true } : {}),
    entries: raw.entries.map((e) => ({
      lsn: e.lsn,
      timestampMs: e.timestampMs,
      ops: e.ops.map((op) => decodedOp(op)),
    })),
  }
  const problem = batchProblem(batch)
  if (problem !== null) throw new DecodeError('region batch', problem)
  return batch
}

export interface RegionCursor {
  source: string
  lsn: number
  appliedAtMs: number
  sourceCommitLsn: number
  sourceSentAtMs: number
  caughtUpSentAtMs: number
}

export function encodeRegionCursor(cursor: RegionCursor): Uint8Array {
  if (!regionIdPattern.test(cursor.source) || !isLsn(cursor.lsn, 0))
    throw new EncodeError('region cursor', 'source or lsn not valid')
  return RegionCursorType.encode({ format: formatVersion, ...cursor }).finish()
}

export function decodeRegionCursor(bytes: Uint8Array): RegionCursor {
  let raw: RegionCursor & { format: number }
  try {
    raw = RegionCursorType.decode(bytes) as unknown as RegionCursor & { format: number }
  } catch (err) {
    throw new DecodeError('region cursor', (err as Error).message, { cause: err })
  }
  if (raw.format !== formatVersion || !regionIdPattern.test(raw.source) || !isLsn(raw.lsn, 0))
    throw new DecodeError('region cursor', 'format, source or lsn not valid')
  return {
    source: raw.source,
    lsn: raw.lsn,
    appliedAtMs: raw.appliedAtMs,
    sourceCommitLsn: raw.sourceCommitLsn,
    sourceSentAtMs: raw.sourceSentAtMs,
    caughtUpSentAtMs: raw.caughtUpSentAtMs,
  }
}

export interface ConflictSide {
  stamp: Stamp
  deleted: boolean
  value: Buffer
}

export interface ConflictRecord {
  key: Buffer
  winner: ConflictSide
  loser: ConflictSide
  detectedIn: string
  detectedAtMs: number
  lsn: number
}

function sideProblem(side: ConflictSide | null | undefined): string | null {
  if (side === null || side === undefined) return 'side missing'
  if (side.stamp === undefined || side.stamp === null) return 'stamp missing'
  return stampProblem(side.stamp)
}

export function encodeConflictRecord(record: ConflictRecord): Uint8Array {
  const problem = sideProblem(record.winner) ?? sideProblem(record.loser)
  if (problem !== null) throw new EncodeError('conflict record', problem)
  return ConflictRecordType.encode({ format: formatVersion, ...record }).finish()
}

export function decodeConflictRecord(bytes: Uint8Array): ConflictRecord {
  let raw: ConflictRecord & { format: number }
  try {
    raw = ConflictRecordType.decode(bytes) as unknown as ConflictRecord & { format: number }
  } catch (err) {
    throw new DecodeError('conflict record', (err as Error).message, { cause: err })
  }
  const problem =
    raw.format !== formatVersion
      ? `unknown format ${String(raw.format)}`
      : (sideProblem(raw.winner) ?? sideProblem(raw.loser))
  if (problem !== null) throw new DecodeError('conflict record', problem)
  const side = (s: ConflictSide): ConflictSide => ({
    stamp: { wallMs: s.stamp.wallMs, logical: s.stamp.logical, region: s.stamp.region },
    deleted: s.deleted,
    value: Buffer.from(s.value ?? []),
  })
  return {
    key: Buffer.from(raw.key),
    winner: side(raw.winner),
    loser: side(raw.loser),
    detectedIn: raw.detectedIn,
    detectedAtMs: raw.detectedAtMs,
    lsn: raw.lsn,
  }
}
