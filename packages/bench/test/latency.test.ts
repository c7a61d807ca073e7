import { describe, expect, it } from 'vitest'
import { Latencies } from '../src/latency.js'

describe('Latencies (HDR histogram)', () => {
  it('reads percentiles within 0.1% of the exact nearest-rank value', () => {
    const latencies = new Latencies()
    for (let i = 1; i <= 10_000; i++) latencies.record(i / 10) // 0.1 .. 1000 ms
    expect(latencies.count).toBe(10_000)
    expect(latencies.percentile(50)).toBeCloseTo(500, 0)
    expect(Math.abs(latencies.percentile(99) - 990) / 990).toBeLessThan(0.001)
    expect(Math.abs(latencies.percentile(99.9) - 999) / 999).toBeLessThan(0.001)
    expect(Math.abs(latencies.max - 1000) / 1000).toBeLessThan(0.001)
  })

  it('summarizes a million values (no per-sample storage)', () => {
    const latencies = new Latencies()
    for (let i = 0; i < 1_000_000; i++) latencies.record((i % 5000) / 7)
    const summary = latencies.summary()
    expect(latencies.count).toBe(1_000_000)
    expect(summary.max).toBeGreaterThan(700)
    expect(summary.p50).toBeGreaterThan(300)
  })

  it('reads 0 when empty, and clamps what it cannot track', () => {
    expect(new Latencies().summary()).toEqual({ p50: 0, p99: 0, p999: 0, max: 0 })
    const odd = Latencies.of([-5, Infinity])
    expect(odd.count).toBe(2)
    expect(odd.percentile(1)).toBe(0)
    expect(odd.max).toBeGreaterThanOrEqual(3_600_000)
  })
})
