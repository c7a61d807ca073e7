/**
 * Leases and fencing tokens (proto/leases.proto): the reserved keys they live under, their
 * records, and the limits and validation of what clients send. Encoders check a record
 * before it is written; decoders validate every field and throw `DecodeError`.
 */
import { fileURLToPath } from 'node:url'
import protobuf from 'protobufjs'
import { DecodeError, EncodeError } from './codec.js'
import { formatVersion, isLsn, limitsCeiling } from './limits.js'

const root = protobuf.loadSync(fileURLToPath(new URL('../proto/leases.proto', import.meta.url)))
const LeaseRecordType = root.lookupType('kv.v1.LeaseRecord')
const FenceRecordType = root.lookupType('kv.v1.FenceRecord')

/** The protobufjs reflection root of leases.proto, for schema tests. */
export const leasesSchemaRoot: protobuf.Root = root

/** Reserved prefix of lease records: `\0lease/<id>`. */
export const leaseKeyPrefix: Buffer = Buffer.from('\u0000lease/', 'utf8')
/** Reserved prefix of fence records: `\0fence/<lock>`. */
export const fenceKeyPrefix: Buffer = Buffer.from('\u0000fence/', 'utf8')

/** Shortest lease TTL a client may ask for. */
export const leaseTtlMsMin = 100
/** Longest lease TTL a client may ask for (7 days). */
export const leaseTtlMsMax = 7 * 24 * 3600 * 1000
/** Longest lock name (`Fence-Lock`), in bytes. */
export const fenceLockBytesMax = 256
/** Largest fencing token (an LSN). */
export const fenceTokenMax = Number.MAX_SAFE_INTEGER

/** A lease id: `<lsn of the grant>-<epoch of the grant>`, both decimal. */
export const leaseIdPattern = /^[1-9][0-9]{0,15}-[1-9][0-9]{0,15}$/

export interface LeasedKey {
  key: Buffer
  version: number
}

export interface LeaseRecord {
  id: string
  ttlMs: number
  grantedLsn: number
  keys: LeasedKey[]
}

export function leaseIdOf(lsn: number, epoch: number): string {
  return `${lsn}-${epoch}`
}

export function leaseKeyOf(id: string): Buffer {
  return Buffer.concat([leaseKeyPrefix, Buffer.from(id, 'utf8')])
}

/** The lease id a reserved key names, or null when it is not a lease key. */
export function parseLeaseKey(key: Uint8Array): string | null {
  const k = Buffer.from(key.buffer, key.byteOffset, key.length)
  if (
    k.length <= leaseKeyPrefix.length ||
    !k.subarray(0, leaseKeyPrefix.length).equals(leaseKeyPrefix)
  )
    return null
  const id = k.subarray(leaseKeyPrefix.length).toString('utf8')
  return leaseIdPattern.test(id) ? id : null
}

export function fenceKeyOf(lock: string): Buffer {
  return Buffer.concat([fenceKeyPrefix, Buffer.from(lock, 'utf8')])
}

function isTtl(value: unknown): value is number {
  return (
    typeof value === 'number' &&
    Number.isSafeInteger(value) &&
    value >= leaseTtlMsMin &&
    value <= leaseTtlMsMax
  )
}

export function encodeLeaseRecord(record: LeaseRecord): Buffer {
  if (!leaseIdPattern.test(record.id)) throw new EncodeError('LeaseRecord', `id ${record.id}`)
  if (!isTtl(record.ttlMs)) throw new EncodeError('LeaseRecord', `ttlMs ${record.ttlMs}`)
  if (!isLsn(record.grantedLsn, 1))
    throw new EncodeError('LeaseRecord', `grantedLsn ${record.grantedLsn}`)
  for (const k of record.keys) {
    if (k.key.length === 0 || k.key.length > limitsCeiling.keyBytesMax || !isLsn(k.version, 1))
      throw new EncodeError('LeaseRecord', 'a leased key is malformed')
  }
  return Buffer.from(
    LeaseRecordType.encode(
      LeaseRecordType.fromObject({
        format: formatVersion,
        id: record.id,
        ttlMs: record.ttlMs,
        grantedLsn: record.grantedLsn,
        keys: record.keys.map((k) => ({ key: k.key, version: k.version })),
      }),
    ).finish(),
  )
}

function asBuffer(value: unknown): Buffer | null {
  if (Buffer.isBuffer(value)) return value
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.length)
  return null
}

export function decodeLeaseRecord(bytes: Uint8Array): LeaseRecord {
  let raw: Record<string, unknown>
  try {
    raw = LeaseRecordType.toObject(LeaseRecordType.decode(bytes), {
      defaults: true,
      arrays: true,
    }) as Record<string, unknown>
  } catch (err) {
    throw new DecodeError('LeaseRecord', (err as Error).message, { cause: err })
  }
  if (raw.format !== formatVersion)
    throw new DecodeError('LeaseRecord', `format ${String(raw.format)}`)
  if (typeof raw.id !== 'string' || !leaseIdPattern.test(raw.id))
    throw new DecodeError('LeaseRecord', `id ${JSON.stringify(raw.id)}`)
  if (!isTtl(raw.ttlMs)) throw new DecodeError('LeaseRecord', `ttlMs ${String(raw.ttlMs)}`)
  if (!isLsn(raw.grantedLsn, 1))
    throw new DecodeError('LeaseRecord', `grantedLsn ${String(raw.grantedLsn)}`)
  const keys: LeasedKey[] = []
  for (const k of raw.keys as { key: unknown; version: unknown }[]) {
    const key = asBuffer(k.key)
    if (key === null || key.length === 0 || key.length > limitsCeiling.keyBytesMax)
      throw new DecodeError('LeaseRecord', 'a leased key is malformed')
    if (!isLsn(k.version, 1)) throw new DecodeError('LeaseRecord', `version ${String(k.version)}`)
    keys.push({ key: Buffer.from(key), version: k.version })
  }
  return { id: raw.id, ttlMs: raw.ttlMs, grantedLsn: raw.grantedLsn, keys }
}

export function encodeFenceRecord(token: number): Buffer {
  if (!Number.isSafeInteger(token) || token < 1)
    throw new EncodeError('FenceRecord', `token ${token}`)
  return Buffer.from(
    FenceRecordType.encode(FenceRecordType.fromObject({ format: formatVersion, token })).finish(),
  )
}

export function decodeFenceRecord(bytes: Uint8Array): number {
  let raw: Record<string, unknown>
  try {
    raw = FenceRecordType.toObject(FenceRecordType.decode(bytes), { defaults: true }) as Record<
      string,
      unknown
    >
  } catch (err) {
    throw new DecodeError('FenceRecord', (err as Error).message, { cause: err })
  }
  if (raw.format !== formatVersion)
    throw new DecodeError('FenceRecord', `format ${String(raw.format)}`)
  const token = raw.token
  if (typeof token !== 'number' || !Number.isSafeInteger(token) || token < 1)
    throw new DecodeError('FenceRecord', `token ${String(token)}`)
  return token
}
