/**
 * What a replica does with a state another member sent it (a write's fan-out, read repair, a
 * replayed hint, anti-entropy): the merge decision, pure. The caller loads its copy, asks
 * here, and persists the result when it changed.
 */
import { collectable, mergeStates, resolve, type VersionedState } from '../conflicts.js'
import { sameState } from '../dvv.js'
import type { MergePolicy } from './read-quorum.js'

export interface IncomingMerge<V> {
  /** Persist `state`: this replica's copy changed. */
  changed: boolean
  state: VersionedState<V>
  /** Siblings dropped by the cap (siblings mode) or by a later timestamp (lww). */
  dropped: number
}

/**
 * Merges `incoming` into this replica's copy (`current`, null when it holds nothing). Only old
 * tombstones (past `tombstoneGcMs`) for a key this replica holds nothing of are not taken: it
 * collected them already, or never held a value to delete, and taking them back would only
 * start another round of collection.
 */
export function mergeIncoming<V>(
  current: VersionedState<V> | null,
  incoming: VersionedState<V>,
  nowMs: number,
  policy: MergePolicy & { tombstoneGcMs: number },
): IncomingMerge<V> {
  if (current === null) {
    if (collectable(incoming, nowMs - policy.tombstoneGcMs)) {
      return { changed: false, state: incoming, dropped: 0 }
    }
    const { state, dropped } = resolve(incoming, policy.mode, policy.siblingsMax)
    return { changed: true, state, dropped }
  }
  const { state, dropped } = mergeStates(current, incoming, policy.mode, policy.siblingsMax)
  if (sameState(state, current)) return { changed: false, state: current, dropped: 0 }
  return { changed: true, state, dropped }
}
