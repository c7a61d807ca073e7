/**
 * Dotted version vectors for leaderless mode (pure). A key's `Versioned` state is a version
 * vector (what this replica has seen of each coordinator) and the siblings still alive, each
 * tagged with the dot (coordinator, counter) that created it.
 *
 * - A write coordinated by node X with context C (the vector the client read) gets the dot
 *   (X, max counter of X + 1). It supersedes every sibling whose dot C covers, and nothing
 *   else: a concurrent write (one whose client had not seen it) survives as a sibling.
 * - Replicas merge by keeping each sibling that the other side either also holds or has not
 *   seen; merge is commutative, associative and idempotent, so replicas converge whatever
 *   order read repair, hinted handoff and anti-entropy deliver states in.
 *
 * This is the DVV set of Preguiça, Baquero et al. ("Dotted Version Vectors: Logical Clocks
 * for Optimistic Replication"), as Riak uses it.
 */

/** Counter per coordinator. */
export type VersionVector = Readonly<Record<string, number>>

export interface Dot {
  node: string
  counter: number
}

export interface Sibling<V> {
  dot: Dot
  value: V
}

export interface Versioned<V> {
  vector: VersionVector
  siblings: readonly Sibling<V>[]
}

export function emptyVersioned<V>(): Versioned<V> {
  return { vector: {}, siblings: [] }
}

/** `vector` has seen `dot`. */
export function covers(vector: VersionVector, dot: Dot): boolean {
  return (vector[dot.node] ?? 0) >= dot.counter
}

/** Pointwise maximum. */
export function mergeVectors(a: VersionVector, b: VersionVector): VersionVector {
  const out: Record<string, number> = { ...a }
  for (const [node, counter] of Object.entries(b)) out[node] = Math.max(out[node] ?? 0, counter)
  return out
}

/** a ≤ b: b has seen everything a has. */
export function descends(b: VersionVector, a: VersionVector): boolean {
  for (const [node, counter] of Object.entries(a)) if ((b[node] ?? 0) < counter) return false
  return true
}

const sameDot = (a: Dot, b: Dot) => a.node === b.node && a.counter === b.counter

/**
 * A write coordinated by `node` with the client's `context` (empty for a blind write): returns
 * the new state and the new sibling's dot.
 */
export function update<V>(
  state: Versioned<V>,
  node: string,
  context: VersionVector,
  value: V,
): { state: Versioned<V>; dot: Dot } {
  // The coordinator made every dot of its own, so its entry is normally the highest; the
  // context is counted too, so a dot is never reused even if this state lagged.
  const counter = Math.max(state.vector[node] ?? 0, context[node] ?? 0) + 1
  const dot = { node, counter }
  const survivors = state.siblings.filter((s) => !covers(context, s.dot))
  return {
    state: {
      vector: { ...mergeVectors(state.vector, context), [node]: counter },
      siblings: [...survivors, { dot, value }],
    },
    dot,
  }
}

/** Merges two replicas' states of one key (sync). */
export function merge<V>(a: Versioned<V>, b: Versioned<V>): Versioned<V> {
  const keep = (mine: readonly Sibling<V>[], theirs: Versioned<V>) =>
    mine.filter(
      (s) => theirs.siblings.some((t) => sameDot(t.dot, s.dot)) || !covers(theirs.vector, s.dot),
    )
  const siblings: Sibling<V>[] = [...keep(a.siblings, b)]
  for (const s of keep(b.siblings, a)) {
    if (!siblings.some((t) => sameDot(t.dot, s.dot))) siblings.push(s)
  }
  siblings.sort((x, y) =>
    x.dot.node === y.dot.node ? x.dot.counter - y.dot.counter : x.dot.node < y.dot.node ? -1 : 1,
  )
  return { vector: mergeVectors(a.vector, b.vector), siblings }
}

/** What a read returns: the live values and the context a follow-up write must carry. */
export function read<V>(state: Versioned<V>): { values: V[]; context: VersionVector } {
  return { values: state.siblings.map((s) => s.value), context: state.vector }
}

/** Equal states (same vector, same siblings by dot), for convergence checks. */
export function sameState<V>(a: Versioned<V>, b: Versioned<V>): boolean {
  return (
    descends(a.vector, b.vector) &&
    descends(b.vector, a.vector) &&
    a.siblings.length === b.siblings.length &&
    a.siblings.every((s) => b.siblings.some((t) => sameDot(s.dot, t.dot)))
  )
}
