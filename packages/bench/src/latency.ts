/**
 * Latency recording for the benchmarks: an HDR histogram (hdr-histogram-js) instead of an array
 * of every sample, so memory stays the same whether a run records a thousand requests or a
 * billion. Values are recorded in microseconds with 3 significant digits (a reported
 * percentile is within 0.1% of the exact one) and read back in milliseconds.
 */
import * as hdr from 'hdr-histogram-js'

/** The largest latency a histogram tracks: one hour, in µs (longer ones count as one hour). */
const highestUs = 3_600_000_000

export interface LatencySummary {
  p50: number
  p99: number
  p999: number
  max: number
}

/** A latency histogram in milliseconds. */
export class Latencies {
  private readonly histogram = hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: highestUs,
    numberOfSignificantValueDigits: 3,
    autoResize: false,
  })

  /** Records one latency of `ms` milliseconds (negative counts as 0). */
  record(ms: number): void {
    this.histogram.recordValue(Math.min(highestUs, Math.max(0, Math.round(ms * 1000))))
  }

  /** How many latencies were recorded. */
  get count(): number {
    return this.histogram.totalCount
  }

  /**
   * The p-th percentile (0..100) in ms; 0 when nothing was recorded. HDR reports the top of the
   * value's bucket (up to 0.1% above it), so it is capped at the exact maximum.
   */
  percentile(p: number): number {
    if (this.count === 0) return 0
    return Math.min(this.histogram.getValueAtPercentile(p), this.histogram.maxValue) / 1000
  }

  /** The largest latency in ms (exact, to the µs); 0 when nothing was recorded. */
  get max(): number {
    return this.count === 0 ? 0 : this.histogram.maxValue / 1000
  }

  summary(): LatencySummary {
    return {
      p50: this.percentile(50),
      p99: this.percentile(99),
      p999: this.percentile(99.9),
      max: this.max,
    }
  }

  reset(): void {
    this.histogram.reset()
  }

  /** A histogram of `values` (ms), for the small sets of samples some suites take. */
  static of(values: Iterable<number>): Latencies {
    const latencies = new Latencies()
    for (const value of values) latencies.record(value)
    return latencies
  }
}

/** One second of a schedule: the requests due in it that completed, and their latencies. */
export interface SecondStats {
  /** Seconds from the start of the schedule. */
  second: number
  count: number
  p50: number
  p99: number
  max: number
}

/**
 * Latencies second by second, each request counted in the second it was due (so a stall shows
 * where the requests it held up were meant to go out). A second is summarized and its
 * histogram dropped once nothing due in it is still outstanding (`settle`), so memory holds
 * a few histograms and three numbers per second, however long the run.
 */
export class Timeline {
  private readonly open = new Map<number, Latencies>()
  private readonly closed: SecondStats[] = []

  /** Records a request due `dueMs` after the start that took `latencyMs`. */
  record(dueMs: number, latencyMs: number): void {
    const second = Math.max(0, Math.floor(dueMs / 1000))
    let latencies = this.open.get(second)
    if (latencies === undefined) {
      latencies = new Latencies()
      this.open.set(second, latencies)
    }
    latencies.record(latencyMs)
  }

  /** Summarizes every second that ended by `beforeMs` (nothing due before it is outstanding). */
  settle(beforeMs: number): void {
    for (const [second, latencies] of this.open) {
      if ((second + 1) * 1000 > beforeMs) continue
      const { p50, p99, max } = latencies.summary()
      this.closed.push({ second, count: latencies.count, p50, p99, max })
      this.open.delete(second)
    }
  }

  /** Every second of a `durationS` schedule in order (empty seconds with count 0). */
  finish(durationS: number): SecondStats[] {
    this.settle(Infinity)
    const bySecond = new Map(this.closed.map((s) => [s.second, s]))
    const last = Math.max(Math.ceil(durationS) - 1, ...bySecond.keys())
    const seconds: SecondStats[] = []
    for (let second = 0; second <= last; second++) {
      seconds.push(bySecond.get(second) ?? { second, count: 0, p50: 0, p99: 0, max: 0 })
    }
    return seconds
  }
}

/** A stretch of time in which requests took longer than the stall threshold. */
export interface StallEpisode {
  /** From the start of the schedule: when the first slow request was due. */
  startMs: number
  /** When the last slow request of the episode completed. */
  endMs: number
  /** The slowest request in it. */
  maxLatencyMs: number
}

/**
 * Stall episodes: each request slower than `thresholdMs` covers the time from when it was
 * due to when it completed; overlapping covers merge into one episode. A server that pauses
 * for a second makes one episode (every request due during the pause waits for its end), two
 * pauses apart make two. At most one episode per `thresholdMs` of run time can exist.
 */
export class Stalls {
  private readonly episodes: StallEpisode[] = []

  constructor(readonly thresholdMs = 100) {}

  record(dueMs: number, latencyMs: number): void {
    if (!(latencyMs > this.thresholdMs)) return
    const start = dueMs
    const end = dueMs + latencyMs
    // Episodes are disjoint and sorted, so by start and by end alike. Skip those wholly after
    // this cover, then take in every one that overlaps it.
    let after = this.episodes.length
    while (after > 0 && (this.episodes[after - 1] as StallEpisode).startMs > end) after--
    let first = after
    while (first > 0 && (this.episodes[first - 1] as StallEpisode).endMs >= start) first--
    const merged: StallEpisode = { startMs: start, endMs: end, maxLatencyMs: latencyMs }
    for (const e of this.episodes.slice(first, after)) {
      merged.startMs = Math.min(merged.startMs, e.startMs)
      merged.endMs = Math.max(merged.endMs, e.endMs)
      merged.maxLatencyMs = Math.max(merged.maxLatencyMs, e.maxLatencyMs)
    }
    this.episodes.splice(first, after - first, merged)
  }

  summary(): {
    thresholdMs: number
    count: number
    longestMs: number
    episodes: StallEpisode[]
  } {
    return {
      thresholdMs: this.thresholdMs,
      count: this.episodes.length,
      longestMs: this.episodes.reduce((m, e) => Math.max(m, e.endMs - e.startMs), 0),
      episodes: this.episodes.map((e) => ({ ...e })),
    }
  }
}
