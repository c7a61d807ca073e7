/**
 * A hybrid logical clock (Kulkarni et al., "Logical Physical Clocks"), for last-write-wins
 * in leaderless mode (pure: the caller passes the wall clock in). A timestamp is
 * (wall ms, logical counter, node id); timestamps order every write totally, agree with
 * causality (a write that saw another gets a larger timestamp), and stay within the clock
 * skew of real time. The node id breaks exact ties, so two replicas always pick the same
 * winner.
 */
import { invariant } from './invariant.js'

export interface HlcTimestamp {
  wallMs: number
  logical: number
  node: string
}

/** Negative, zero or positive, as a is before, equal to or after b. */
export function compareHlc(a: HlcTimestamp, b: HlcTimestamp): number {
  if (a.wallMs !== b.wallMs) return a.wallMs - b.wallMs
  if (a.logical !== b.logical) return a.logical - b.logical
  return a.node < b.node ? -1 : a.node > b.node ? 1 : 0
}

export class HybridClock {
  private wallMs = 0
  private logical = 0

  constructor(
    readonly node: string,
    /** Largest clock skew tolerated in a received timestamp (ms); beyond it, it is refused. */
    private readonly maxSkewMs = 60_000,
  ) {}

  /** A timestamp for a local event (a write this node coordinates) at wall time `nowMs`. */
  now(nowMs: number): HlcTimestamp {
    if (nowMs > this.wallMs) {
      this.wallMs = nowMs
      this.logical = 0
    } else {
      this.logical++
    }
    return { wallMs: this.wallMs, logical: this.logical, node: this.node }
  }

  /**
   * Takes in a timestamp from another node (a write it replicated here), so that every later
   * local timestamp comes after it. Refuses one from further in the future than maxSkewMs: a node
   * with a runaway clock must not drag every clock forward.
   */
  observe(remote: HlcTimestamp, nowMs: number): void {
    invariant(
      remote.wallMs <= nowMs + this.maxSkewMs,
      () =>
        `timestamp from ${remote.node} is ${remote.wallMs - nowMs} ms ahead of this clock (at most ${this.maxSkewMs})`,
    )
    // The clock only has to reach the remote timestamp: the next now() is strictly after.
    if (
      remote.wallMs > this.wallMs ||
      (remote.wallMs === this.wallMs && remote.logical > this.logical)
    ) {
      this.wallMs = remote.wallMs
      this.logical = remote.logical
    }
  }
}
