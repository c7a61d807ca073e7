/**
 * Conflict handling of leaderless mode (pure), on top of the dotted version vectors of dvv.ts.
 * A sibling's payload is a value, or null for a delete (a tombstone), stamped with the hybrid
 * logical clock of the write.
 *
 * - `siblings` mode keeps every concurrent value; a write with a context resolves the ones the
 *   context saw. The number of siblings is capped: past the cap, replicas drop the oldest by
 *   timestamp (deterministically, so they converge) and report how many they dropped.
 * - `lww` mode keeps one sibling: the one with the highest timestamp (node id breaks ties).
 *
 * A write also supersedes the tombstones the coordinator holds: a delete does not conflict with
 * a later write, so a value written after a delete is simply the value.
 */
import { compareHlc, type HlcTimestamp } from './hlc.js'
import {
  covers,
  merge,
  mergeVectors,
  type Sibling,
  type Versioned,
  type VersionVector,
} from './dvv.js'
import { hash32 } from './ring.js'

export type ConflictMode = 'siblings' | 'lww'

export interface Payload<V> {
  value: V | null
  hlc: HlcTimestamp
  /**
   * Per-key TTL (leaderless `?ttlMs=`): the wall time (ms) from which the value reads as absent
   * (the write's HLC wall time plus its TTL); absent: never.
   */
  expiresAtMs?: number
}

export type VersionedState<V> = Versioned<Payload<V>>

export interface Resolved<V> {
  state: VersionedState<V>
  /** Siblings dropped by the cap (siblings mode) or by a later timestamp (lww). */
  dropped: number
}

const newestFirst = <V>(a: Sibling<Payload<V>>, b: Sibling<Payload<V>>) =>
  compareHlc(b.value.hlc, a.value.hlc)

/** Applies the mode's rule and the sibling cap to a state. */
export function resolve<V>(
  state: VersionedState<V>,
  mode: ConflictMode,
  siblingsMax: number,
): Resolved<V> {
  const keep = mode === 'lww' ? 1 : siblingsMax
  if (state.siblings.length <= keep) return { state, dropped: 0 }
  const kept = [...state.siblings].sort(newestFirst).slice(0, keep)
  const siblings = state.siblings.filter((s) => kept.includes(s))
  return { state: { vector: state.vector, siblings }, dropped: state.siblings.length - keep }
}

/** Merges two replicas' states of a key under the mode's rule. */
export function mergeStates<V>(
  a: VersionedState<V>,
  b: VersionedState<V>,
  mode: ConflictMode,
  siblingsMax: number,
): Resolved<V> {
  return resolve(merge(a, b), mode, siblingsMax)
}

/**
 * A write coordinated by `actor`, with the dot counter it minted (unique per actor across all
 * keys, so a dot is never reused, even after a collected tombstone), and the client's context.
 * It supersedes what the context saw and every tombstone in `state`.
 */
export function writeState<V>(
  state: VersionedState<V>,
  actor: string,
  counter: number,
  context: VersionVector,
  payload: Payload<V>,
  mode: ConflictMode,
): VersionedState<V> {
  const survivors =
    mode === 'lww'
      ? []
      : state.siblings.filter((s) => !covers(context, s.dot) && s.value.value !== null)
  // The vector never goes back, even if a context claims more of this actor than it minted
  // (the caller refuses such contexts; this keeps the invariant whatever it is given).
  const merged = mergeVectors(state.vector, context)
  const vector = { ...merged, [actor]: Math.max(merged[actor] ?? 0, counter) }
  return { vector, siblings: [...survivors, { dot: { node: actor, counter }, value: payload }] }
}

/** Siblings a write with `context` would leave beside its own value (for the cap check). */
export function survivorsOf<V>(state: VersionedState<V>, context: VersionVector): number {
  return state.siblings.filter((s) => !covers(context, s.dot) && s.value.value !== null).length
}

/**
 * The live values (tombstones hidden, and with `nowMs` values whose TTL has passed by then),
 * newest last by timestamp.
 */
export function liveSiblings<V>(state: VersionedState<V>, nowMs?: number): Sibling<Payload<V>>[] {
  return state.siblings
    .filter(
      (s) =>
        s.value.value !== null &&
        (nowMs === undefined || s.value.expiresAtMs === undefined || s.value.expiresAtMs > nowMs),
    )
    .sort((a, b) => compareHlc(a.value.hlc, b.value.hlc))
}

/** True when only tombstones remain and the newest is older than `beforeMs`. */
export function collectable<V>(state: VersionedState<V>, beforeMs: number): boolean {
  if (state.siblings.length === 0) return true
  return state.siblings.every((s) => s.value.value === null && s.value.hlc.wallMs < beforeMs)
}

/** True when every sibling is a tombstone (the key reads as absent). */
export function allTombstones<V>(state: VersionedState<V>): boolean {
  return state.siblings.every((s) => s.value.value === null)
}

/**
 * A 32-bit digest of a state for Merkle trees: equal states give equal digests. A dot names
 * its value (only its actor mints it, once), so the vector and the dots suffice.
 */
export function stateDigest<V>(state: VersionedState<V>): number {
  // The text hashed is "a=1,b=2|a:1,b:2t" (vector by actor, dots sorted, t for a delete),
  // built without intermediate arrays where there is one actor or one sibling, the common case
  // (an index update per write on every replica).
  const actors = Object.keys(state.vector)
  if (actors.length > 1) actors.sort()
  let text = ''
  for (let i = 0; i < actors.length; i++) {
    const actor = actors[i] as string
    text += `${i === 0 ? '' : ','}${actor}=${state.vector[actor]}`
  }
  const dot = (s: Sibling<Payload<V>>) =>
    `${s.dot.node}:${s.dot.counter}${s.value.value === null ? 't' : ''}`
  const siblings = state.siblings
  const dots =
    siblings.length === 1
      ? dot(siblings[0] as Sibling<Payload<V>>)
      : siblings.map(dot).sort().join(',')
  return hash32(`${text}|${dots}`)
}
