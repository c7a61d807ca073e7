/**
 * The write side of a leaderless coordinator as a pure state machine: the coordinator holds
 * the write durably (its own ack), sends it to the rest of the preference list, and for each
 * replica it cannot reach to a stand-in as a hint. It answers once W acks are in, and fails
 * once the sends still pending cannot bring the acks up to W.
 *
 * A stand-in's hint counts toward W only for a sloppy write (Dynamo's sloppy quorum): a strict
 * W counts replicas of the key alone, which is what makes R + W > N overlap every later read.
 */
import { invariant } from '../invariant.js'

export interface WriteQuorumOptions {
  w: number
  /** Hints held by stand-ins count toward W. */
  sloppy: boolean
  /**
   * Test-only, breaks safety: count a stand-in's hint toward W even for a strict write. The
   * simulator turns it on to show that its checker catches the lost write it allows.
   */
  unsafeCountHintsWhenStrict?: boolean
  /**
   * During a ring change: how many pending owners (owners on the other side of the change,
   * see ring-state.ts) the write also goes to. The write then needs W acks among the key's
   * owners reads use now AND W + extra acks in all, so it is on W owners of either side.
   */
  extra?: number
  /**
   * What the coordinator's own durable copy counts as: an ack among the owners reads use (the
   * usual case), a pending owner's ack, or nothing (a coordinator that resends a write it
   * minted under an older ring, to owners a newer ring names).
   */
  ownAck?: 'counted' | 'pending' | 'none'
}

export type WriteStatus = 'waiting' | 'met' | 'unreachable'

export class WriteQuorum {
  readonly w: number
  readonly sloppy: boolean
  private readonly countHints: boolean
  /** The coordinator's own durable copy is the first ack (see `ownAck`). */
  private ackCount: number
  /** Acks of pending owners (they count toward W + extra only). */
  private extraAckCount: number
  private readonly extra: number
  private pendingCount = 0
  private readonly hintedTo: string[] = []

  constructor(options: WriteQuorumOptions) {
    invariant(
      Number.isInteger(options.w) && options.w >= 1,
      `W must be at least 1, not ${options.w}`,
    )
    this.w = options.w
    this.sloppy = options.sloppy
    this.countHints = options.sloppy || options.unsafeCountHintsWhenStrict === true
    this.extra = options.extra ?? 0
    const own = options.ownAck ?? 'counted'
    this.ackCount = own === 'counted' ? 1 : 0
    this.extraAckCount = own === 'pending' ? 1 : 0
    invariant(
      Number.isInteger(this.extra) && this.extra >= 0,
      `extra must be a count, not ${this.extra}`,
    )
  }

  /** A send (to a replica or a stand-in) left. */
  sent(): void {
    this.pendingCount++
  }

  /** A replica of the key acknowledged the write durably. */
  replicaAcked(): void {
    this.settle()
    this.ackCount++
  }

  /** A pending owner (not one reads use yet, or any more) acknowledged the write durably. */
  pendingOwnerAcked(): void {
    this.settle()
    this.extraAckCount++
  }

  /** A stand-in holds the write as a hint for `target`. */
  hintAcked(target: string, standIn: string): void {
    this.settle()
    this.hintedTo.push(`${target}@${standIn}`)
    if (this.countHints) this.ackCount++
  }

  /** A send failed (the caller may try a stand-in next, which is another `sent`). */
  failed(): void {
    this.settle()
  }

  private settle(): void {
    invariant(this.pendingCount > 0, 'a write send settled that was never sent')
    this.pendingCount--
  }

  get acks(): number {
    return this.ackCount
  }

  /** Acks of pending owners (see `extra`). */
  get pendingOwnerAcks(): number {
    return this.extraAckCount
  }

  get pending(): number {
    return this.pendingCount
  }

  /** `target@standIn` for every hint a stand-in took. */
  get hinted(): readonly string[] {
    return this.hintedTo
  }

  get status(): WriteStatus {
    if (this.ackCount >= this.w && this.ackCount + this.extraAckCount >= this.w + this.extra)
      return 'met'
    if (this.pendingCount === 0) return 'unreachable'
    return 'waiting'
  }
}

/**
 * Targets a write could reach now: the replicas believed up, and (sloppy) as many stand-ins
 * believed up as there are replicas down. Below W, the coordinator refuses before writing.
 */
export function reachableTargets(
  replicas: readonly string[],
  standIns: readonly string[],
  sloppy: boolean,
  isUp: (member: string) => boolean,
): number {
  const up = replicas.filter(isUp).length
  if (!sloppy) return up
  return up + Math.min(replicas.length - up, standIns.filter(isUp).length)
}

/**
 * Whether a write during a ring change can still be met before anything is written: W among
 * the owners reads use (`reachable`, stand-ins included for a sloppy write) and W + extra in
 * all, counting the pending owners reachable now (see `WriteQuorumOptions.extra`).
 */
export function changeReachable(
  reachable: number,
  pendingUp: number,
  w: number,
  extra: number,
): boolean {
  return reachable >= w && reachable + pendingUp >= w + extra
}
