/**
 * The read side of a leaderless coordinator as a pure state machine, after Riak's
 * `riak_kv_get_core` (add_result / enough / response): the coordinator's I/O feeds it each
 * replica's answer or failure and asks it when to stop waiting, what to answer and which
 * replicas to repair. No clock: the caller owns the timeout and simply stops feeding it.
 *
 * Digest reads, as Cassandra's: the coordinator asks one replica for the data and the others
 * for their versions only (`addVersions`: the vector, the dots, their timestamps and which are
 * deletes, without the values). A versions-only answer counts toward R like a full one: it
 * says exactly which versions that replica holds, because a dot names one value (its actor
 * minted it once) and a merge looks only at vectors, dots, timestamps and deletes, never at
 * the bytes of a value. So the merge of every answer is exact in its shape; where it keeps a
 * value that only a versions-only answer holds, `missingValues` names the replicas to fetch it
 * from (`upgrade`), and only then is there a response. Unlike a hash digest, versions compare
 * without collisions, and a replica that is merely behind costs no second round trip.
 */
import { invariant } from '../invariant.js'
import { mergeStates, stateDigest, type ConflictMode, type VersionedState } from '../conflicts.js'

/** How replicas' states are merged: the cluster's conflict mode and sibling cap. */
export interface MergePolicy {
  mode: ConflictMode
  siblingsMax: number
}

/** Merges every state a read gathered (null: the replica holds nothing); null if all are. */
export function mergeReplies<V>(
  states: Iterable<VersionedState<V> | null>,
  policy: MergePolicy,
): VersionedState<V> | null {
  let merged: VersionedState<V> | null = null
  for (const s of states) {
    if (s === null) continue
    merged = merged === null ? s : mergeStates(merged, s, policy.mode, policy.siblingsMax).state
  }
  return merged
}

/**
 * Read repair: the replicas whose answer differs from the merged state (holding nothing, or
 * another version). None when the merge is empty: there is nothing to spread.
 */
export function staleReplicas<V>(
  replies: ReadonlyMap<string, VersionedState<V | Omitted> | null>,
  merged: VersionedState<V> | null,
): string[] {
  if (merged === null) return []
  const digest = stateDigest(merged)
  const out: string[] = []
  for (const [member, state] of replies) {
    if (state === null || stateDigest(state) !== digest) out.push(member)
  }
  return out
}

export type ReadStatus = 'waiting' | 'met' | 'unreachable'

/** Stands for a value a versions-only answer left out. */
export const omittedValue: unique symbol = Symbol('a value left out of a versions-only answer')
export type Omitted = typeof omittedValue

/**
 * A replica's versions without its values: each live sibling's value is `omittedValue`, each
 * delete's null, as `versionsOf` makes them.
 */
export type VersionsOnly = VersionedState<Omitted>

/** A state's versions: its values left out (deletes stay null). */
export function versionsOf<V>(state: VersionedState<V>): VersionsOnly {
  return {
    vector: state.vector,
    siblings: state.siblings.map((s) => ({
      dot: s.dot,
      value: { value: s.value.value === null ? null : omittedValue, hlc: s.value.hlc },
    })),
  }
}

function hasOmitted(state: VersionedState<unknown> | null): boolean {
  return state !== null && state.siblings.some((s) => s.value.value === omittedValue)
}

/**
 * One read of one key across its preference list: R answers make it, and it can no longer be
 * made once the replicas still outstanding cannot bring the answers up to R.
 */
export class ReadQuorum<V> {
  readonly replicas: readonly string[]
  readonly r: number
  private readonly policy: MergePolicy
  /** Full answers and versions-only ones (whose live values are `omittedValue`). */
  private readonly answers = new Map<string, VersionedState<V | Omitted> | null>()
  /** The members whose answer left the values out. */
  private readonly versionsOnly = new Set<string>()
  private readonly failures = new Set<string>()
  /**
   * The merge of the answers so far, kept until the answers change: a read asks for it
   * whenever a reply lands, then for its missing values, its response and its repairs.
   */
  private merged: VersionedState<V | Omitted> | null | undefined = undefined

  constructor(replicas: readonly string[], r: number, policy: MergePolicy) {
    invariant(
      Number.isInteger(r) && r >= 1 && r <= replicas.length,
      `R must be 1 to ${replicas.length}, not ${r}`,
    )
    invariant(new Set(replicas).size === replicas.length, 'a preference list names a member twice')
    this.replicas = replicas
    this.r = r
    this.policy = policy
  }

  /** A replica answered with its state (null: it holds nothing of the key). */
  addReply(member: string, state: VersionedState<V> | null): void {
    this.checkNew(member)
    this.answers.set(member, state)
    this.merged = undefined
  }

  /** A replica answered a versions-only read (null: it holds nothing of the key). */
  addVersions(member: string, versions: VersionsOnly | null): void {
    this.checkNew(member)
    this.answers.set(member, versions)
    this.merged = undefined
    if (hasOmitted(versions)) this.versionsOnly.add(member)
  }

  /** A replica could not answer (unreachable, refused, or its state was refused). */
  addFailure(member: string): void {
    this.checkNew(member)
    this.failures.add(member)
  }

  /**
   * The replicas to fetch values from before there is a response: for each value the merge of
   * the answers keeps and no full answer holds, one versions-only replier that holds it.
   */
  missingValues(): string[] {
    const merged = this.mergeAll()
    if (merged === null) return []
    const out = new Set<string>()
    for (const s of merged.siblings) {
      if (s.value.value !== omittedValue) continue
      for (const member of this.versionsOnly) {
        const held = this.answers.get(member)?.siblings
        if (held?.some((h) => h.dot.node === s.dot.node && h.dot.counter === s.dot.counter)) {
          out.add(member)
          break
        }
      }
    }
    return [...out]
  }

  /** A versions-only replier's full answer, fetched because `missingValues` named it. */
  upgrade(member: string, state: VersionedState<V> | null): void {
    invariant(this.versionsOnly.has(member), () => `${member} gave no versions-only answer`)
    this.versionsOnly.delete(member)
    this.answers.set(member, state)
    this.merged = undefined
  }

  /**
   * Fetching the values from a versions-only replier failed: its answer no longer counts (the
   * read may then need to wait for others, or fail).
   */
  upgradeFailed(member: string): void {
    invariant(this.versionsOnly.has(member), () => `${member} gave no versions-only answer`)
    this.versionsOnly.delete(member)
    this.answers.delete(member)
    this.merged = undefined
    this.failures.add(member)
  }
  private checkNew(member: string): void {
    invariant(this.replicas.includes(member), () => `${member} is not a replica of this read`)
    invariant(
      !this.answers.has(member) && !this.failures.has(member),
      () => `${member} answered this read twice`,
    )
  }

  /** Every answer so far (a versions-only one with its values left out). */
  get replies(): ReadonlyMap<string, VersionedState<V | Omitted> | null> {
    return this.answers
  }

  get outstanding(): number {
    return this.replicas.length - this.answers.size - this.failures.size
  }

  /** Every replica answered or failed. */
  get settled(): boolean {
    return this.outstanding === 0
  }

  get status(): ReadStatus {
    if (this.answers.size >= this.r) return 'met'
    if (this.answers.size + this.outstanding < this.r) return 'unreachable'
    return 'waiting'
  }

  /**
   * Whether the coordinator may stop waiting: R is met or cannot be, or (`waitForAll`, a
   * blocking read that repairs before answering) every replica has answered or failed.
   */
  enough(waitForAll = false): boolean {
    return waitForAll ? this.settled : this.status !== 'waiting'
  }

  /**
   * The merged answer, or null when R was not met (the read fails). Only once `missingValues`
   * is empty: the merge then holds no value it does not have.
   */
  response(): { state: VersionedState<V> | null } | null {
    if (this.answers.size < this.r) return null
    return { state: this.completeMerge() }
  }

  /**
   * Replicas to repair with the merge of every answer so far, and that merged state. Only
   * once `missingValues` is empty.
   */
  repairs(): { merged: VersionedState<V> | null; stale: string[] } {
    const merged = this.completeMerge()
    return { merged, stale: staleReplicas(this.answers, merged) }
  }

  /**
   * The merge of every answer, the full ones first: where a full and a versions-only answer
   * hold the same dot, the merge keeps the first one's copy, the one with the value.
   */
  private mergeAll(): VersionedState<V | Omitted> | null {
    if (this.merged !== undefined) return this.merged
    const full: (VersionedState<V | Omitted> | null)[] = []
    const versions: (VersionedState<V | Omitted> | null)[] = []
    for (const [member, answer] of this.answers)
      (this.versionsOnly.has(member) ? versions : full).push(answer)
    this.merged = mergeReplies([...full, ...versions], this.policy)
    return this.merged
  }

  private completeMerge(): VersionedState<V> | null {
    const merged = this.mergeAll()
    invariant(
      !hasOmitted(merged),
      'a read merged a value no full answer holds (fetch missingValues first)',
    )
    return merged as VersionedState<V> | null
  }
}
