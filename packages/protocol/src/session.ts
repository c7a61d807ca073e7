/**
 * Session tokens. Every write returns one, and a read that carries it waits until the replica
 * has applied that far, which gives read-your-writes and monotonic reads. To users a token is
 * opaque; the SDK reads it to keep the newest of the tokens it has seen.
 */
import { KvError } from './errors.js'
import { isEpoch, isLsn } from './limits.js'

export interface SessionPosition {
  /** Epoch of the leader that wrote the position. */
  epoch: number
  /** The log position the session has written or read. */
  lsn: number
}

const pattern = /^s1\.([0-9a-z]{1,11})\.([0-9a-z]{1,11})$/

export function encodeSession(position: SessionPosition): string {
  return `s1.${position.epoch.toString(36)}.${position.lsn.toString(36)}`
}

/** Parses a token; throws KV_ERR_INVALID_SESSION when it is not one this store issued. */
export function decodeSession(token: string): SessionPosition {
  const match = pattern.exec(token.trim())
  const epoch = match ? parseInt(match[1] as string, 36) : NaN
  const lsn = match ? parseInt(match[2] as string, 36) : NaN
  // The same bounds as on the wire: an epoch at most epochMax, an LSN below lsnMax.
  if (!isEpoch(epoch) || !isLsn(lsn)) {
    throw new KvError(
      'KV_ERR_INVALID_SESSION',
      'the session token is malformed; send one a write returned',
    )
  }
  return { epoch, lsn }
}

/** The later of two positions (by LSN, then epoch). */
export function laterSession(
  a: SessionPosition | null,
  b: SessionPosition | null,
): SessionPosition | null {
  if (a === null) return b
  if (b === null) return a
  if (a.lsn !== b.lsn) return a.lsn > b.lsn ? a : b
  return a.epoch >= b.epoch ? a : b
}
