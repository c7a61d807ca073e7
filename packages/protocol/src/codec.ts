/**
 * Encoders and decoders for the formats in `proto/kv.proto`.
 *
 * The schema is compiled once, when this module loads. Encoding checks a record before it is
 * written; decoding validates every field after it is read and throws `DecodeError` on
 * anything malformed. A caller decides what a bad record means: from disk it is corruption
 * and the node stops; from a peer it is a refused frame.
 */
import { fileURLToPath } from 'node:url'
import protobuf from 'protobufjs'
import { formatVersion, isEpoch, isLsn, limitsCeiling, lsnMax } from './limits.js'

// LSNs and epochs are uint64 on the wire but exact integers in memory: decode them to plain
// numbers (protobufjs would otherwise produce Long objects) and reject anything out of range:
// an LSN must be below lsnMax and an epoch at most epochMax (see limits.ts), so that the next
// one is still exact.
protobuf.util.Long = undefined as unknown as typeof protobuf.util.Long
protobuf.configure()

const schemaPath = fileURLToPath(new URL('../proto/kv.proto', import.meta.url))
const root = protobuf.loadSync(schemaPath)

const LogEntryType = root.lookupType('kv.v1.LogEntry')
const StoredRecordType = root.lookupType('kv.v1.StoredRecord')
const UndoRecordType = root.lookupType('kv.v1.UndoRecord')
const RequestRecordType = root.lookupType('kv.v1.RequestRecord')

/** The protobufjs reflection root, for tests that compare it with the TypeScript types. */
export const schemaRoot: protobuf.Root = root

/** The reserved key the cluster's configuration is stored under (single-leader mode). */
export const membershipKeyBytes: Buffer = Buffer.from('\u0000cluster/membership', 'utf8')

/** Operation types, numbered as in `kv.proto`. */
export const OpType = { Put: 1, Delete: 2 } as const
export type OpType = (typeof OpType)[keyof typeof OpType]

/** Entry kinds, numbered as in `kv.proto`. */
export const EntryKind = { Put: 1, Delete: 2, Batch: 3, Noop: 4, Membership: 5, Expiry: 6 } as const
export type EntryKind = (typeof EntryKind)[keyof typeof EntryKind]

/**
 * Regions (multi-leader): a hybrid logical clock timestamp and the region that made it.
 * Ordered by wallMs, then logical, then region; the larger one wins a conflict (see
 * `compareStamps` in regions.ts).
 */
export interface Stamp {
  wallMs: number
  logical: number
  region: string
}

/** One put or delete inside a log entry. */
export interface Op {
  type: OpType
  key: Buffer
  /** Empty for deletes. */
  value: Buffer
  /** Region mode only: the write's stamp. A delete with a stamp leaves a tombstone. */
  stamp?: Stamp
  /** Region mode only: the stamp of the record the write replaced in its origin region. */
  prev?: Stamp
}

/** Bytes of a request fingerprint (the first half of a SHA-256). */
export const requestFingerprintBytes = 16

/** One position of the write-ahead log. */
export interface LogEntry {
  epoch: number
  lsn: number
  kind: EntryKind
  ops: Op[]
  timestampMs: number
  /** Empty when the client sent no request id. */
  requestId: string
  /**
   * The fingerprint of the client request the request id is bound to
   * (`requestFingerprintBytes` long). Absent or empty when there is no request id, and in
   * entries written before it existed; decoding always sets it.
   */
  requestFingerprint?: Buffer
}

/** The applied state of one key. */
export interface StoredRecord {
  value: Buffer
  /** LSN of the entry that last wrote the key; the key's ETag. */
  version: number
  tombstone: boolean
  /** Region mode only: the stamp of the write that made the record. */
  stamp?: Stamp
}

/** The image of one key before a log entry changed it. */
export interface UndoImage {
  key: Buffer
  /** Null when the key did not exist. */
  prior: StoredRecord | null
}

/** The prior images of every key one log entry changed. */
export interface UndoRecord {
  lsn: number
  images: UndoImage[]
}

/** The entry that applied a client request id. */
export interface RequestRecord {
  lsn: number
  epoch: number
  timestampMs: number
  /**
   * The fingerprint of the request the id is bound to (`requestFingerprintBytes` long), or
   * empty when unknown (a record written before it existed), which matches any request.
   */
  fingerprint: Buffer
}

/** A record or frame that failed validation. `what` names the message type. */
export class DecodeError extends Error {
  readonly what: string
  constructor(what: string, reason: string, options?: ErrorOptions) {
    super(`invalid ${what}: ${reason}`, options)
    this.name = 'DecodeError'
    this.what = what
  }
}

/** An attempt to encode a record that breaks the format's rules: a bug in the caller. */
export class EncodeError extends Error {
  constructor(what: string, reason: string) {
    super(`refusing to encode ${what}: ${reason}`)
    this.name = 'EncodeError'
  }
}

const emptyBuffer = Buffer.alloc(0)

/** A time in milliseconds, or another count that is never incremented: any safe integer >= 0. */
function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 && value <= lsnMax
}

function asBuffer(value: unknown): Buffer | null {
  if (value === undefined || value === null) return emptyBuffer
  // protobufjs decodes an absent bytes field to its default, a shared empty array.
  if (Array.isArray(value) && value.length === 0) return emptyBuffer
  if (Buffer.isBuffer(value)) return value
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.length)
  return null
}

/** Reasons a request fingerprint breaks the format, or null when it is valid. */
function fingerprintProblem(value: unknown): string | null {
  const bytes = asBuffer(value)
  if (bytes === null) return 'request fingerprint is not bytes'
  if (bytes.length !== 0 && bytes.length !== requestFingerprintBytes) {
    return `request fingerprint is ${bytes.length} bytes, not 0 or ${requestFingerprintBytes}`
  }
  return null
}

/** Reasons an op breaks the format, or null when it is valid. */
/** Largest logical counter of a stamp (uint32 on the wire; far more than one ms ever needs). */
export const stampLogicalMax = 0x7fffffff
/** A region id: lowercase letter, then letters, digits and dashes, at most 32 characters. */
export const regionIdPattern = /^[a-z][a-z0-9-]{0,31}$/

/** Why a stamp is malformed, or null. Absent (undefined or null) is valid: no stamp. */
export function stampProblem(stamp: unknown): string | null {
  if (stamp === undefined || stamp === null) return null
  const s = stamp as { wallMs?: unknown; logical?: unknown; region?: unknown }
  if (!isCount(s.wallMs) || s.wallMs === 0) return `stamp time ${String(s.wallMs)} is not valid`
  if (
    typeof s.logical !== 'number' ||
    !Number.isInteger(s.logical) ||
    s.logical < 0 ||
    s.logical > stampLogicalMax
  )
    return `stamp counter ${String(s.logical)} is not valid`
  if (typeof s.region !== 'string' || !regionIdPattern.test(s.region))
    return `stamp region ${JSON.stringify(s.region)} is not a region id`
  return null
}

function asStamp(raw: unknown): Stamp | undefined {
  if (raw === undefined || raw === null) return undefined
  const s = raw as Stamp
  return { wallMs: s.wallMs, logical: s.logical, region: s.region }
}

function opProblem(op: {
  type: unknown
  key: unknown
  value: unknown
  stamp?: unknown
  prev?: unknown
}): string | null {
  const stamp = stampProblem(op.stamp)
  if (stamp !== null) return stamp
  const prev = stampProblem(op.prev)
  if (prev !== null) return `previous ${prev}`
  if ((op.stamp === undefined || op.stamp === null) && op.prev !== undefined && op.prev !== null)
    return 'op has a previous stamp without a stamp'
  if (op.type !== OpType.Put && op.type !== OpType.Delete)
    return `unknown op type ${String(op.type)}`
  const key = asBuffer(op.key)
  if (key === null || key.length === 0) return 'op key is empty'
  if (key.length > limitsCeiling.keyBytesMax) return `op key is ${key.length} bytes`
  const value = asBuffer(op.value)
  if (value === null) return 'op value is not bytes'
  if (value.length > limitsCeiling.valueBytesMax) return `op value is ${value.length} bytes`
  if (op.type === OpType.Delete && value.length !== 0) return 'delete op carries a value'
  return null
}

function entryProblem(e: {
  epoch: unknown
  lsn: unknown
  kind: unknown
  ops: unknown
  timestampMs: unknown
  requestId: unknown
  requestFingerprint?: unknown
}): string | null {
  if (!isEpoch(e.epoch)) return `epoch ${String(e.epoch)} is not a valid epoch`
  if (!isLsn(e.lsn, 1)) return `lsn ${String(e.lsn)} is not a valid lsn`
  if (!Array.isArray(e.ops)) return 'ops is not a list'
  const ops = e.ops as { type: unknown; key: unknown; value: unknown }[]
  switch (e.kind) {
    case EntryKind.Put:
      if (ops.length !== 1 || ops[0]?.type !== OpType.Put) return 'PUT entry must hold one put op'
      break
    case EntryKind.Delete:
      if (ops.length !== 1 || ops[0]?.type !== OpType.Delete) {
        return 'DELETE entry must hold one delete op'
      }
      break
    case EntryKind.Batch:
      if (ops.length < 1 || ops.length > limitsCeiling.batchOpsMax) {
        return `BATCH entry holds ${ops.length} ops`
      }
      break
    case EntryKind.Noop:
      if (ops.length !== 0) return 'NOOP entry holds ops'
      break
    case EntryKind.Expiry:
      if (ops.length < 1 || ops.length > limitsCeiling.batchOpsMax) {
        return `EXPIRY entry holds ${ops.length} ops`
      }
      if (ops.some((op) => op.type !== OpType.Delete)) return 'EXPIRY entry holds a put'
      break
    case EntryKind.Membership: {
      const key = ops.length === 1 ? asBuffer(ops[0]?.key) : null
      if (ops[0]?.type !== OpType.Put || key === null || !key.equals(membershipKeyBytes)) {
        return 'MEMBERSHIP entry must hold one put of the membership key'
      }
      break
    }
    default:
      return `unknown entry kind ${String(e.kind)}`
  }
  for (const op of ops) {
    const problem = opProblem(op)
    if (problem !== null) return problem
  }
  if (!isCount(e.timestampMs)) return `timestamp ${String(e.timestampMs)} is not valid`
  if (typeof e.requestId !== 'string') return 'request id is not a string'
  if (Buffer.byteLength(e.requestId) > limitsCeiling.requestIdBytesMax) {
    return 'request id is too long'
  }
  const fingerprint = fingerprintProblem(e.requestFingerprint)
  if (fingerprint !== null) return fingerprint
  if (e.requestId === '' && (asBuffer(e.requestFingerprint)?.length ?? 0) !== 0) {
    return 'request fingerprint without a request id'
  }
  return null
}

function recordProblem(r: {
  value: unknown
  version: unknown
  tombstone: unknown
  stamp?: unknown
}): string | null {
  const stamp = stampProblem(r.stamp)
  if (stamp !== null) return stamp
  const value = asBuffer(r.value)
  if (value === null) return 'value is not bytes'
  if (value.length > limitsCeiling.valueBytesMax) return `value is ${value.length} bytes`
  if (!isLsn(r.version, 1)) return `version ${String(r.version)} is not a valid lsn`
  if (typeof r.tombstone !== 'boolean') return 'tombstone is not a boolean'
  if (r.tombstone && value.length !== 0) return 'tombstone carries a value'
  return null
}

function decodeWith<T>(
  type: protobuf.Type,
  what: string,
  bytes: Uint8Array,
): T & { format: number } {
  let message: protobuf.Message
  try {
    message = type.decode(bytes)
  } catch (err) {
    throw new DecodeError(what, (err as Error).message, { cause: err })
  }
  const decoded = message as unknown as T & { format: number }
  if (decoded.format !== formatVersion) {
    throw new DecodeError(what, `unknown format ${String(decoded.format)}`)
  }
  return decoded
}

/** An op as decoded (checked by the caller): stamps only when present, as written. */
export function decodedOp(op: Op): Op {
  const out: Op = {
    type: op.type,
    key: asBuffer(op.key) ?? emptyBuffer,
    value: asBuffer(op.value) ?? emptyBuffer,
  }
  const stamp = asStamp(op.stamp)
  if (stamp !== undefined) {
    out.stamp = stamp
    const prev = asStamp(op.prev)
    if (prev !== undefined) out.prev = prev
  }
  return out
}

/** Encodes a log entry after checking it. */
export function encodeLogEntry(entry: LogEntry): Uint8Array {
  const problem = entryProblem(entry)
  if (problem !== null) throw new EncodeError('log entry', problem)
  return LogEntryType.encode({
    format: formatVersion,
    epoch: entry.epoch,
    lsn: entry.lsn,
    kind: entry.kind,
    ops: entry.ops,
    timestampMs: entry.timestampMs,
    requestId: entry.requestId,
    // Left out when empty, so an entry without one has the bytes it had before the field.
    requestFingerprint:
      entry.requestFingerprint !== undefined && entry.requestFingerprint.length > 0
        ? entry.requestFingerprint
        : undefined,
  }).finish()
}

/** Decodes and validates a log entry. */
export function decodeLogEntry(bytes: Uint8Array): LogEntry {
  const raw = decodeWith<LogEntry>(LogEntryType, 'log entry', bytes)
  const problem = entryProblem(raw)
  if (problem !== null) throw new DecodeError('log entry', problem)
  return {
    epoch: raw.epoch,
    lsn: raw.lsn,
    kind: raw.kind,
    ops: raw.ops.map(decodedOp),
    timestampMs: raw.timestampMs,
    requestId: raw.requestId,
    requestFingerprint: asBuffer(raw.requestFingerprint) ?? emptyBuffer,
  }
}

/** Encodes a key's stored record after checking it. */
export function encodeStoredRecord(record: StoredRecord): Uint8Array {
  const problem = recordProblem(record)
  if (problem !== null) throw new EncodeError('stored record', problem)
  return StoredRecordType.encode({
    format: formatVersion,
    value: record.value,
    version: record.version,
    tombstone: record.tombstone,
    stamp: record.stamp,
  }).finish()
}

/** Decodes and validates a key's stored record. */
export function decodeStoredRecord(bytes: Uint8Array): StoredRecord {
  const raw = decodeWith<StoredRecord>(StoredRecordType, 'stored record', bytes)
  const problem = recordProblem(raw)
  if (problem !== null) throw new DecodeError('stored record', problem)
  return storedRecordOf(raw)
}

function storedRecordOf(raw: StoredRecord): StoredRecord {
  const record: StoredRecord = {
    value: asBuffer(raw.value) ?? emptyBuffer,
    version: raw.version,
    tombstone: raw.tombstone,
  }
  const stamp = asStamp(raw.stamp)
  if (stamp !== undefined) record.stamp = stamp
  return record
}

/** Encodes an undo record after checking it. */
export function encodeUndoRecord(undo: UndoRecord): Uint8Array {
  if (!isLsn(undo.lsn, 1)) throw new EncodeError('undo record', `lsn ${undo.lsn} is not valid`)
  for (const image of undo.images) {
    if (image.key.length === 0) throw new EncodeError('undo record', 'image key is empty')
    if (image.prior !== null) {
      const problem = recordProblem(image.prior)
      if (problem !== null) throw new EncodeError('undo record', problem)
    }
  }
  return UndoRecordType.encode({
    format: formatVersion,
    lsn: undo.lsn,
    images: undo.images.map((image) => ({
      key: image.key,
      prior:
        image.prior === null
          ? undefined
          : {
              format: formatVersion,
              value: image.prior.value,
              version: image.prior.version,
              tombstone: image.prior.tombstone,
              stamp: image.prior.stamp,
            },
    })),
  }).finish()
}

/** Decodes and validates an undo record. */
export function decodeUndoRecord(bytes: Uint8Array): UndoRecord {
  const raw = decodeWith<{
    lsn: number
    images: { key: unknown; prior?: (StoredRecord & { format: number }) | null }[]
  }>(UndoRecordType, 'undo record', bytes)
  if (!isLsn(raw.lsn, 1)) throw new DecodeError('undo record', `lsn ${String(raw.lsn)}`)
  const images: UndoImage[] = []
  for (const image of raw.images) {
    const key = asBuffer(image.key)
    if (key === null || key.length === 0) throw new DecodeError('undo record', 'image key is empty')
    let prior: StoredRecord | null = null
    if (image.prior !== undefined && image.prior !== null) {
      if (image.prior.format !== formatVersion) {
        throw new DecodeError('undo record', `prior has unknown format ${image.prior.format}`)
      }
      const problem = recordProblem(image.prior)
      if (problem !== null) throw new DecodeError('undo record', problem)
      prior = storedRecordOf(image.prior)
    }
    images.push({ key, prior })
  }
  return { lsn: raw.lsn, images }
}

/** Encodes a request record after checking it. */
export function encodeRequestRecord(record: RequestRecord): Uint8Array {
  if (!isLsn(record.lsn, 1) || !isEpoch(record.epoch) || !isCount(record.timestampMs)) {
    throw new EncodeError('request record', 'lsn, epoch or timestamp out of range')
  }
  const problem = fingerprintProblem(record.fingerprint)
  if (problem !== null) throw new EncodeError('request record', problem)
  return RequestRecordType.encode({
    format: formatVersion,
    lsn: record.lsn,
    epoch: record.epoch,
    timestampMs: record.timestampMs,
    fingerprint: record.fingerprint.length > 0 ? record.fingerprint : undefined,
  }).finish()
}

/**
 * Decodes and validates a request record. One written before fingerprints existed decodes
 * with an empty one (the format did not change: proto3 reads an absent field as empty).
 */
export function decodeRequestRecord(bytes: Uint8Array): RequestRecord {
  const raw = decodeWith<RequestRecord>(RequestRecordType, 'request record', bytes)
  if (!isLsn(raw.lsn, 1) || !isEpoch(raw.epoch) || !isCount(raw.timestampMs)) {
    throw new DecodeError('request record', 'lsn, epoch or timestamp out of range')
  }
  const problem = fingerprintProblem(raw.fingerprint)
  if (problem !== null) throw new DecodeError('request record', problem)
  return {
    lsn: raw.lsn,
    epoch: raw.epoch,
    timestampMs: raw.timestampMs,
    fingerprint: asBuffer(raw.fingerprint) ?? emptyBuffer,
  }
}
