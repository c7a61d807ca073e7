/**
 * The state digest's byte format, defined once. Two replicas with equal states give equal
 * digests; the leader hashes a snapshot as it ships it and the follower checks the same hash
 * after installing it, so both sides must feed the hash the very same bytes.
 *
 * Per record, in key order: a 17-byte header, then the key, then the value.
 *
 *   u32be key length | u64be version (as two u32be) | u8 tombstone (0 or 1) | u32be value length
 */
import { createHash, type Hash } from 'node:crypto'
import { invariant } from './invariant.js'
import type { StateDigest, StateSnapshot } from './types.js'

/** Bytes of the header hashed before each record's key and value. */
export const digestHeaderBytes = 17

const two32 = 2 ** 32
const u32Max = two32 - 1

// One header buffer, reused: the digest of a large state hashes millions of records, and
// `update` copies what it is given before returning.
const header = Buffer.alloc(digestHeaderBytes)

/** Feeds one state record (a key with its stored record) to `hash`, in the digest's format. */
export function hashDigestRecord(
  hash: Hash,
  key: Uint8Array,
  record: { version: number; tombstone: boolean; value: Uint8Array },
): void {
  invariant(
    Number.isSafeInteger(record.version) && record.version >= 0,
    () => `record version ${record.version} is not an lsn`,
  )
  invariant(
    key.length <= u32Max && record.value.length <= u32Max,
    'a record is too large for the digest format',
  )
  header.writeUInt32BE(key.length, 0)
  header.writeUInt32BE(Math.floor(record.version / two32), 4)
  header.writeUInt32BE(record.version >>> 0, 8)
  header[12] = record.tombstone ? 1 : 0
  header.writeUInt32BE(record.value.length, 13)
  hash.update(header)
  hash.update(key)
  hash.update(record.value)
}

/** Hashes every record of `snapshot`, in key order, and counts the data apart from the reserved keys. */
export async function digestSnapshot(snapshot: StateSnapshot): Promise<StateDigest> {
  const hash = createHash('sha256')
  let keys = 0
  let reservedKeys = 0
  let bytes = 0
  for await (const { key, record } of snapshot.records()) {
    hashDigestRecord(hash, key, record)
    // The auth store's records are hashed (replicas must agree on them too) but are not
    // keys of the data.
    if (key[0] === 0x00) {
      reservedKeys++
      continue
    }
    keys++
    bytes += key.length + record.value.length
  }
  return { appliedLsn: snapshot.appliedLsn, digest: hash.digest('hex'), keys, bytes, reservedKeys }
}
