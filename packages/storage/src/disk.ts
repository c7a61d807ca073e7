/**
 * Small helpers over the one LevelDB database that every storage module shares.
 */
import type { ClassicLevel } from 'classic-level'
import { KvError } from '@kvstore/protocol'
import type { MetaName } from './layout.js'
import { Prefix, metaKey, prefixRange } from './layout.js'

export type Db = ClassicLevel<Buffer, Buffer>
export type BatchOp = { type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer }
export type ChainedBatch = ReturnType<Db['batch']>

export const emptyBuffer = Buffer.alloc(0)

/** The same bytes as a Buffer, without copying. */
export function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length)
}

/** A put of one metadata entry, for an array batch. */
export function putMeta(name: MetaName, value: Buffer): BatchOp {
  return { type: 'put', key: metaKey(name), value }
}

/** The first key in `range` (the last with `reverse`), or undefined when it is empty. */
export async function firstKey(
  db: Db,
  range: { gte: Buffer; lt: Buffer },
  reverse = false,
): Promise<Buffer | undefined> {
  const keys = await db.keys({ ...range, limit: 1, reverse }).all()
  return keys[0]
}

/** The prefixes a snapshot install replaces: the state, the log and what hangs off the log. */
export const replacedBySnapshot = [
  Prefix.State,
  Prefix.Log,
  Prefix.Undo,
  Prefix.Request,
  Prefix.RequestByTime,
] as const

/** Deletes every key under each of `prefixes`. */
export async function clearPrefixes(db: Db, prefixes: readonly number[]): Promise<void> {
  for (const prefix of prefixes) await db.clear(prefixRange(prefix))
}

/** The error every write gets once the store has failed. */
export function storageFailedError(cause: Error): KvError {
  return new KvError('KV_ERR_STORAGE', `storage failed: ${cause.message}`, {}, { cause })
}
