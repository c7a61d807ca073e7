/**
 * The state digest's byte format, defined once. Two replicas with equal states give equal
 * digests; the leader hashes a snapshot as it ships it and the follower checks the same hash
 * after installing it, so both sides must feed the hash the very same bytes.
 *
 * Per record, in key order: a 17-byte header, then the key, then the value.
 *
 * One record is left out: the cluster's configuration (the reserved key
 * `\0cluster/membership`). It names members and their URLs, which a restored cluster replaces
 * with its own (and writes to its log anew), so two states with the same data and auth store
 * digest alike whatever cluster holds them.
 *
 *   u32be key length | u64be version (as two u32be) | u8 tombstone (0 or 1) | u32be value length
 */
import { createHash, type Hash } from 'node:crypto'
import { membershipKeyBytes } from '@kvstore/protocol'
import { invariant } from './invariant.js'
import type { StateDigest, StateSnapshot } from './types.js'

/** Bytes of the header hashed before each record's key and value. */
export const digestHeaderBytes = 17

const two32 = 2 ** 32
const u32Max = two32 - 1

// One header buffer, reused: the digest of a large state hashes millions of records, and
// `update` copies what it is given before returning.
const header = Buffer.alloc(digestHeaderBytes)

/** Whether a state key is left out of the digest (the cluster's configuration). */
export function outOfDigest(key: Uint8Array): boolean {
  return (
    key.length === membershipKeyBytes.length &&
    key[0] === 0x00 &&
    Buffer.from(key.buffer, key.byteOffset, key.length).equals(membershipKeyBytes)
  )
}

/** Feeds one state record (a key with its stored record) to `hash`, in the digest's format. */
export function hashDigestRecord(
  hash: Hash,
  key: Uint8Array,
  record: { version: number; tombstone: boolean; value: Uint8Array },
): void {
  if (outOfDigest(key)) return
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

/**
 * Feeds records to a hash in the digest's format, like `hashDigestRecord`, but gathers them in
 * one buffer and hands the hash 64 KiB at a time: one `update` per record field costs more
 * than the hashing itself on small records.
 */
export class DigestHasher {
  private readonly hash: Hash
  private buffer = Buffer.allocUnsafe(64 * 1024)
  private used = 0

  constructor(hash: Hash = createHash('sha256')) {
    this.hash = hash
  }

  add(key: Uint8Array, record: { version: number; tombstone: boolean; value: Uint8Array }): void {
    if (outOfDigest(key)) return
    invariant(
      Number.isSafeInteger(record.version) && record.version >= 0,
      () => `record version ${record.version} is not an lsn`,
    )
    invariant(
      key.length <= u32Max && record.value.length <= u32Max,
      'a record is too large for the digest format',
    )
    const size = digestHeaderBytes + key.length + record.value.length
    if (this.used + size > this.buffer.length) {
      this.flush()
      if (size > this.buffer.length) {
        hashDigestRecord(this.hash, key, record)
        return
      }
    }
    const out = this.buffer
    let at = this.used
    out.writeUInt32BE(key.length, at)
    out.writeUInt32BE(Math.floor(record.version / two32), at + 4)
    out.writeUInt32BE(record.version >>> 0, at + 8)
    out[at + 12] = record.tombstone ? 1 : 0
    out.writeUInt32BE(record.value.length, at + 13)
    at += digestHeaderBytes
    out.set(key, at)
    at += key.length
    out.set(record.value, at)
    this.used = at + record.value.length
  }

  private flush(): void {
    if (this.used === 0) return
    this.hash.update(this.buffer.subarray(0, this.used))
    this.used = 0
  }

  /** The digest, hex; the hasher is done. */
  hex(): string {
    this.flush()
    return this.hash.digest('hex')
  }
}

/** Hashes every record of `snapshot`, in key order, and counts the data apart from the reserved keys. */
export async function digestSnapshot(snapshot: StateSnapshot): Promise<StateDigest> {
  const hasher = new DigestHasher()
  let keys = 0
  let reservedKeys = 0
  let bytes = 0
  for await (const { key, record } of snapshot.records()) {
    hasher.add(key, record)
    // The auth store's records are hashed (replicas must agree on them too) but are not
    // keys of the data.
    if (key[0] === 0x00) {
      reservedKeys++
      continue
    }
    keys++
    bytes += key.length + record.value.length
  }
  return { appliedLsn: snapshot.appliedLsn, digest: hasher.hex(), keys, bytes, reservedKeys }
}
