/**
 * The fingerprint a client request id is bound to. A retry sends the same request again, so
 * it has the same fingerprint and is deduplicated; the same id on another request (another
 * key, value, kind or condition) has another one and is refused with
 * KV_ERR_REQUEST_ID_REUSED, instead of being answered with the first request's result.
 *
 * It is the first `requestFingerprintBytes` of a SHA-256 over an unambiguous encoding: a
 * domain tag, the kind and the op count, then per op its type, condition flags, `ifVersion`,
 * key length, key and value length (all fixed-size fields, big-endian), and after all of that
 * the values in op order. Every length comes before the bytes it covers, so no two requests
 * share an encoding; the values are hashed where they are, never copied.
 */
import { createHash } from 'node:crypto'
import { requestFingerprintBytes } from '@kvstore/protocol'
import type { WriteRequest } from './sequencer.js'

const domain = Buffer.from('kv-request-fingerprint-v1\u0000', 'latin1')
const kindCode = { put: 1, delete: 2, batch: 3, expiry: 6 } as const
const emptyBuffer = Buffer.alloc(0)

/** type 1, flags 1, ifVersion 8, key length 4, value length 4. */
const opFixedBytes = 18
const flagIfVersion = 1
const flagIfAbsent = 2
const flagIfExists = 4

/** The fingerprint of a client write (16 bytes). Pure: the same request, the same bytes. */
export function requestFingerprint(request: WriteRequest): Buffer {
  let size = domain.length + 1 + 4
  for (const op of request.ops) size += opFixedBytes + op.key.length
  const head = Buffer.allocUnsafe(size)
  let at = domain.copy(head, 0)
  at = head.writeUInt8(kindCode[request.kind], at)
  at = head.writeUInt32BE(request.ops.length, at)
  for (const op of request.ops) {
    // The sequencer writes a put without a value as an empty one, and ignores a delete's.
    const value = op.type === 'put' ? (op.value ?? emptyBuffer) : emptyBuffer
    const flags =
      (op.ifVersion !== undefined ? flagIfVersion : 0) |
      (op.ifAbsent === true ? flagIfAbsent : 0) |
      (op.ifExists === true ? flagIfExists : 0)
    at = head.writeUInt8(op.type === 'put' ? 1 : 2, at)
    at = head.writeUInt8(flags, at)
    at = head.writeDoubleBE(op.ifVersion ?? 0, at)
    at = head.writeUInt32BE(op.key.length, at)
    head.set(op.key, at)
    at += op.key.length
    at = head.writeUInt32BE(value.length, at)
  }
  const hash = createHash('sha256').update(head)
  for (const op of request.ops) {
    if (op.type === 'put' && op.value !== undefined && op.value.length > 0) hash.update(op.value)
  }
  return hash.digest().subarray(0, requestFingerprintBytes)
}

/**
 * Whether a request with `fingerprint` is the one a remembered id was bound to. A record
 * written before fingerprints existed has an empty one: unknown, so it matches (as before).
 */
export function sameRequest(recorded: Buffer, fingerprint: Buffer): boolean {
  return recorded.length === 0 || recorded.equals(fingerprint)
}
