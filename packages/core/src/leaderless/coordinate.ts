/**
 * The coordinator's own write (pure): whether the sibling cap refuses it, and the state it
 * mints. The cap applies to the minted state as to every merge: a delete (never refused) with
 * a context that resolves too little would otherwise hold one sibling more than the cap on the
 * coordinator, while every replica that merged it dropped the oldest, so their states differed.
 */
import {
  resolve,
  survivorsOf,
  writeState,
  type Payload,
  type Resolved,
  type VersionedState,
} from '../conflicts.js'
import type { VersionVector } from '../dvv.js'
import type { MergePolicy } from './read-quorum.js'

/**
 * The siblings a value write would leave beside its own when that breaks the cap (refuse it:
 * the client must read and write with the context), or null when it may go ahead. Deletes
 * and last-write-wins writes are never refused.
 */
export function siblingsRefusal<V>(
  current: VersionedState<V>,
  context: VersionVector,
  isDelete: boolean,
  policy: MergePolicy,
): number | null {
  if (policy.mode !== 'siblings' || isDelete) return null
  const survivors = survivorsOf(current, context)
  return survivors + 1 > policy.siblingsMax ? survivors : null
}

/**
 * The state a write coordinated by `actor` with its new dot `counter` leaves, under the cap
 * (the oldest siblings dropped, as a replica merging it would).
 */
export function mintWrite<V>(
  current: VersionedState<V>,
  actor: string,
  counter: number,
  context: VersionVector,
  payload: Payload<V>,
  policy: MergePolicy,
): Resolved<V> {
  const state = writeState(current, actor, counter, context, payload, policy.mode)
  return resolve(state, policy.mode, policy.siblingsMax)
}
