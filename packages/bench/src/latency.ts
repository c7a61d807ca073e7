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

  /** The p-th percentile (0..100) in ms; 0 when nothing was recorded. */
  percentile(p: number): number {
    return this.count === 0 ? 0 : this.histogram.getValueAtPercentile(p) / 1000
  }

  /** The largest latency in ms (to the histogram's precision); 0 when nothing was recorded. */
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
