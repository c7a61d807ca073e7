/**
 * The read side of a leaderless coordinator as a pure state machine, after Riak's
 * `riak_kv_get_core` (add_result / enough / response): the coordinator's I/O feeds it each
 * replica's answer or failure and asks it when to stop waiting, what to answer and which
 * replicas to repair. No clock: the caller owns the timeout and simply stops feeding it.
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
  replies: ReadonlyMap<string, VersionedState<V> | null>,
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

/**
 * One read of one key across its preference list: R answers make it, and it can no longer be
 * made once the replicas still outstanding cannot bring the answers up to R.
 */
export class ReadQuorum<V> {
  readonly replicas: readonly string[]
  readonly r: number
  private readonly policy: MergePolicy
  private readonly answers = new Map<string, VersionedState<V> | null>()
  private readonly failures = new Set<string>()

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
  }

  /** A replica could not answer (unreachable, refused, or its state was refused). */
  addFailure(member: string): void {
    this.checkNew(member)
    this.failures.add(member)
  }

  private checkNew(member: string): void {
    invariant(this.replicas.includes(member), () => `${member} is not a replica of this read`)
    invariant(
      !this.answers.has(member) && !this.failures.has(member),
      () => `${member} answered this read twice`,
    )
  }

  get replies(): ReadonlyMap<string, VersionedState<V> | null> {
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

  /** The merged answer, or null when R was not met (the read fails). */
  response(): { state: VersionedState<V> | null } | null {
    if (this.answers.size < this.r) return null
    return { state: mergeReplies(this.answers.values(), this.policy) }
  }

  /** Replicas to repair with the merge of every answer so far, and that merged state. */
  repairs(): { merged: VersionedState<V> | null; stale: string[] } {
    const merged = mergeReplies(this.answers.values(), this.policy)
    return { merged, stale: staleReplicas(this.answers, merged) }
  }
}
