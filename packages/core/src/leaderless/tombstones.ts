/**
 * Tombstone collection (pure). A deleted key keeps a tombstone so the delete wins every merge
 * with the older value. It may be dropped once it is old enough that no hint of an older
 * value can still be replayed (`tombstoneGcMs` beyond `hintWindowMs`), and once every other
 * replica of the key confirms it holds the same tombstone or nothing: a replica that may
 * still hold the deleted value would otherwise bring it back through anti-entropy.
 */
import { collectable, stateDigest, type VersionedState } from '../conflicts.js'

/** Only tombstones, the newest older than `tombstoneGcMs` at `nowMs`. */
export function tombstoneCollectable<V>(
  state: VersionedState<V>,
  nowMs: number,
  tombstoneGcMs: number,
): boolean {
  return collectable(state, nowMs - tombstoneGcMs)
}

/** One replica's answer when asked for its copy: its state, or 'unreachable'. */
export type ConfirmationAnswer<V> = VersionedState<V> | null | 'unreachable'

/** The replica holds the same tombstone (`digest`) or nothing. */
export function confirmsTombstone<V>(answer: ConfirmationAnswer<V>, digest: number): boolean {
  if (answer === 'unreachable') return false
  return answer === null || stateDigest(answer) === digest
}

/**
 * Whether a tombstone may be collected given every other replica's answer. `unsafeSkip` is
 * test-only and breaks safety: collect without confirmations (the simulator's unsafe switch).
 */
export function collectionConfirmed<V>(
  state: VersionedState<V>,
  answers: readonly ConfirmationAnswer<V>[],
  unsafeSkip = false,
): boolean {
  if (unsafeSkip) return true
  const digest = stateDigest(state)
  return answers.every((a) => confirmsTombstone(a, digest))
}
