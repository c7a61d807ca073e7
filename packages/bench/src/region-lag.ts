/**
 * Pure pieces of the regions suite (regions.ts), kept apart so that they have unit tests.
 *
 * Cross-region lag is measured with a marker key: the bench writes it in one region, one write
 * at a time (each acknowledged before the next is sent, so their order in the log is the order
 * of their numbers), with the write's sequence number as the value, and polls the other
 * region for it. A poll that reads number `n` shows that every marker up to `n` is readable
 * there (the receiver applies the shipped writes in log order). The lag of marker `i` is the
 * time from its acknowledgement in the writing region to the first poll answer that showed
 * `i` or later in the other.
 */
import { Latencies, type LatencySummary } from './latency.js'

export class MarkerLag {
  /** Acknowledgement time of each marker not yet seen, by sequence number. */
  private readonly acked = new Map<number, number>()
  /** Markers seen before their acknowledgement came back: when. */
  private readonly seenEarly = new Map<number, number>()
  /** The highest marker seen so far (-1: none). */
  private seenThrough = -1
  readonly lags = new Latencies()
  /** Markers seen before their acknowledgement reached the bench (counted as lag 0). */
  early = 0

  /** Marker `seq` was acknowledged at `atMs`. */
  acknowledged(seq: number, atMs: number): void {
    if (seq <= this.seenThrough) {
      const seenAt = this.seenEarly.get(seq) ?? atMs
      this.seenEarly.delete(seq)
      this.early++
      this.lags.record(Math.max(0, seenAt - atMs))
      return
    }
    this.acked.set(seq, atMs)
  }

  /** A poll answered at `atMs` showed marker `seq` (NaN or negative: nothing yet). */
  observed(seq: number, atMs: number): void {
    if (!Number.isSafeInteger(seq) || seq <= this.seenThrough) return
    for (let s = this.seenThrough + 1; s <= seq; s++) {
      const ackedAt = this.acked.get(s)
      if (ackedAt === undefined) {
        this.seenEarly.set(s, atMs)
        continue
      }
      this.acked.delete(s)
      this.lags.record(Math.max(0, atMs - ackedAt))
    }
    this.seenThrough = seq
  }

  /** Whether marker `seq` has been seen. */
  seen(seq: number): boolean {
    return seq <= this.seenThrough
  }

  /** Acknowledged markers never seen. */
  get unseen(): number {
    return this.acked.size
  }

  summary(): LatencySummary & { samples: number; unseen: number } {
    return { samples: this.lags.count, unseen: this.unseen, ...this.lags.summary() }
  }
}

/** p50, p99 and max of a set of samples (0 when empty). */
export function sampleSummary(values: readonly number[]): {
  samples: number
  p50: number
  p99: number
  max: number
} {
  if (values.length === 0) return { samples: 0, p50: 0, p99: 0, max: 0 }
  const sorted = [...values].sort((a, b) => a - b)
  const at = (p: number) =>
    sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number
  return {
    samples: sorted.length,
    p50: at(50),
    p99: at(99),
    max: sorted[sorted.length - 1] as number,
  }
}

/** A conflict as `GET /admin/v1/conflicts` lists it (the fields the suite reads). */
export interface ConflictEntry {
  key: string
  detectedIn: string
  winner: { stamp: string }
  loser: { stamp: string }
}

/**
 * Conflicts across the regions' records, once each: both regions may record the same one
 * (each detects it when the other's write arrives), so they are told apart by the loser's
 * stamp, as the chaos checker does. Also how many each region recorded.
 */
export function distinctConflicts(records: readonly ConflictEntry[]): {
  distinct: number
  byRegion: Record<string, number>
  keys: number
} {
  const losers = new Set<string>()
  const keys = new Set<string>()
  const byRegion: Record<string, number> = {}
  for (const c of records) {
    losers.add(c.loser.stamp)
    keys.add(c.key)
    byRegion[c.detectedIn] = (byRegion[c.detectedIn] ?? 0) + 1
  }
  return { distinct: losers.size, byRegion, keys: keys.size }
}
