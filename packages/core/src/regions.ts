/**
 * Regions (multi-leader): what a region does with a write shipped from another region, and the
 * stamps of its own writes (pure: the caller passes the wall clock in).
 *
 * Every user key's record carries a stamp, a hybrid logical clock time and the region that
 * wrote it. A shipped write also carries `prev`, the stamp of the record it replaced in its
 * origin region. At the receiver:
 * - the record's stamp equals `prev`: the writer saw this record, so the write is a causal
 *   overwrite and applies, with nothing to report;
 * - otherwise the two writes are concurrent (neither saw the other): the larger stamp wins, on
 *   every region alike, and the other is a conflict's loser, which the caller records.
 *
 * A record from the same region as the write is never a conflict: a region's writes form one
 * sequence, so its later write saw its earlier ones.
 *
 * The test is exact with two regions. With more it can call a causal overwrite concurrent
 * (when the writer saw the record through a third region whose write has not arrived yet),
 * never the other way: it may record a conflict that was not one, never miss one.
 */
import { HybridClock } from './hlc.js'
import { invariant } from './invariant.js'
import { compareStamps, sameStamp, type Stamp } from '@kvstore/protocol/stamps'

export type RemoteOutcome =
  /** Already here (the same stamp), or older than this region's record from the same region. */
  | 'present'
  /** The writer saw the current record: apply, no conflict. */
  | 'causal'
  /** Concurrent, and the shipped write wins: apply; the current record is the loser. */
  | 'local_lost'
  /** Concurrent, and the current record wins: skip; the shipped write is the loser. */
  | 'remote_lost'

/**
 * `current` is the key's record here: undefined when there is none, null when it has no stamp
 * (written before the region mode; it loses to any shipped write, and the loss is recorded).
 */
export function resolveRemoteWrite(
  current: Stamp | null | undefined,
  incoming: Stamp,
  prev: Stamp | undefined,
): RemoteOutcome {
  if (current === undefined) return 'causal'
  if (current === null) return 'local_lost'
  if (sameStamp(current, incoming)) return 'present'
  if (prev !== undefined && sameStamp(current, prev)) return 'causal'
  // Both from one region: its log is one sequence, so its later write saw its earlier one (a
  // re-seed sends the latest only), and an earlier one arriving now is stale.
  if (current.region === incoming.region)
    return compareStamps(incoming, current) > 0 ? 'causal' : 'present'
  return compareStamps(incoming, current) > 0 ? 'local_lost' : 'remote_lost'
}

/**
 * Stamps a region's own writes: larger than every stamp the region has seen for the key it
 * writes, so a write always beats what it overwrote, on every region.
 */
export class RegionClock {
  private readonly clock: HybridClock

  constructor(
    readonly region: string,
    readonly skewMaxMs: number,
  ) {
    this.clock = new HybridClock(region, skewMaxMs)
  }

  /** The stamp of a local write over a record stamped `current` (if any), at `nowMs`. */
  next(nowMs: number, current: Stamp | undefined): Stamp {
    if (current !== undefined) this.observe(current, nowMs)
    const t = this.clock.now(nowMs)
    const stamp = { wallMs: t.wallMs, logical: t.logical, region: this.region }
    invariant(
      current === undefined || compareStamps(stamp, current) > 0,
      'a local stamp must exceed the stamp it overwrites',
    )
    return stamp
  }

  /** How far `stamp` is ahead of `nowMs` beyond the allowed skew (0 when within it). */
  aheadBeyondSkew(stamp: Stamp, nowMs: number): number {
    const ahead = stamp.wallMs - nowMs
    return ahead > this.skewMaxMs ? ahead : 0
  }

  /** Takes in a stamp received from another region (checked against the skew first). */
  observe(stamp: Stamp, nowMs: number): void {
    // A stored stamp that was within the skew when it arrived is still within it: the clock
    // only moves on. One further ahead never got in (see aheadBeyondSkew).
    if (stamp.wallMs > nowMs + this.skewMaxMs) nowMs = stamp.wallMs - this.skewMaxMs
    this.clock.observe({ wallMs: stamp.wallMs, logical: stamp.logical, node: stamp.region }, nowMs)
  }
}
