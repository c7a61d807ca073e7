/**
 * The checks a record from a peer passes before it is merged (pure): counters within range
 * and never above what this member minted of its own actor, timestamps not too far ahead.
 */
import { counterMax, type VersionedRecord } from '@kvstore/protocol'

/** What a record from a peer is checked against (see `peerRecordProblem`). */
export interface PeerRecordBounds {
  /** This member's actor id (its data directory's). */
  actor: string
  /** Dots this actor has handed out so far (every dot it minted is at most this). */
  minted: number
  nowMs: number
  /** How far ahead of `nowMs` a timestamp may be. */
  clockSkewMaxMs: number
}

/**
 * Why a record a peer sent (to store, as a hint, in anti-entropy, or in a reply) must not be
 * merged, or null when it may be. The same rules as a client's context, checked before the
 * record touches anything:
 * - no counter above `counterMax` (the decoder refuses those too; this holds for any source);
 * - no counter of this member's own actor, in the vector or in a sibling's dot, above what it
 *   has minted: such a counter would dominate every later write this member coordinates, so
 *   an acknowledged write would vanish from reads on every replica it reached;
 * - no timestamp further ahead of this clock than `clockSkewMaxMs`.
 */
export function peerRecordProblem(
  record: VersionedRecord,
  bounds: PeerRecordBounds,
): string | null {
  for (const [actor, counter] of Object.entries(record.vector)) {
    if (!Number.isSafeInteger(counter) || counter < 1 || counter > counterMax)
      return `its vector gives ${actor} counter ${counter}, outside 1..${counterMax}`
  }
  const own = ownCounterProblem(record.vector, bounds)
  if (own !== null) return `it ${own}`
  for (const s of record.siblings) {
    const { node, counter } = s.dot
    if (!Number.isSafeInteger(counter) || counter < 1 || counter > counterMax)
      return `a sibling's dot ${node}:${counter} is outside 1..${counterMax}`
    if (node === bounds.actor && counter > bounds.minted)
      return `a sibling's dot ${node}:${counter} was never minted: ${bounds.actor} has made ${bounds.minted}`
    const ahead = s.value.hlc.wallMs - bounds.nowMs
    if (ahead > bounds.clockSkewMaxMs)
      return `a timestamp from ${s.value.hlc.node} is ${ahead} ms ahead of this clock (at most ${bounds.clockSkewMaxMs})`
  }
  return null
}

/**
 * How a vector claims more writes of this member's own actor than it minted ("claims ..."), or
 * null. The same rule for a peer's record and a client's context.
 */
export function ownCounterProblem(
  vector: Readonly<Record<string, number>>,
  bounds: Pick<PeerRecordBounds, 'actor' | 'minted'>,
): string | null {
  const own = vector[bounds.actor]
  if (own !== undefined && own > bounds.minted)
    return `claims ${own} writes coordinated by ${bounds.actor}, which has made ${bounds.minted}`
  return null
}
