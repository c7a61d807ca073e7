import { describe, expect, it } from 'vitest'
import { Latencies, Stalls, Timeline } from '../src/latency.js'

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

  it('never reads a percentile above the maximum', () => {
    const one = Latencies.of([1096.4])
    expect(one.percentile(50)).toBe(one.max)
    expect(one.max).toBeCloseTo(1096.4, 3)
  })

  it('reads 0 when empty, and clamps what it cannot track', () => {
    expect(new Latencies().summary()).toEqual({ p50: 0, p99: 0, p999: 0, max: 0 })
    const odd = Latencies.of([-5, Infinity])
    expect(odd.count).toBe(2)
    expect(odd.percentile(1)).toBe(0)
    expect(odd.max).toBeGreaterThanOrEqual(3_600_000)
  })
})

describe('Timeline', () => {
  it('summarizes each second of the schedule by when requests were due', () => {
    const timeline = new Timeline()
    for (let i = 0; i < 100; i++) timeline.record(i * 10, 2) // second 0: 2 ms each
    timeline.record(1500, 400) // second 1: one slow request
    timeline.settle(1000) // second 0 is done; second 1 still open
    timeline.record(2500, 1) // second 2
    const seconds = timeline.finish(4)
    expect(seconds.map((s) => s.count)).toEqual([100, 1, 1, 0])
    expect(seconds[0]?.p99).toBeCloseTo(2, 2)
    expect(seconds[1]?.max).toBeCloseTo(400, 0)
    expect(seconds[3]).toEqual({ second: 3, count: 0, p50: 0, p99: 0, max: 0 })
  })
})

describe('Stalls', () => {
  it('counts requests over the threshold as episodes, merging those that overlap', () => {
    const stalls = new Stalls(100)
    stalls.record(0, 50) // fast: ignored
    // A 1-second pause at 1000 ms: every request due in it waits for its end.
    for (let due = 1000; due < 2000; due += 10) stalls.record(due, 2000 - due + 5)
    // Another pause, well apart, recorded out of order.
    stalls.record(5100, 150)
    stalls.record(5000, 200)
    const summary = stalls.summary()
    expect(summary.count).toBe(2)
    expect(summary.episodes[0]).toEqual({ startMs: 1000, endMs: 2005, maxLatencyMs: 1005 })
    expect(summary.episodes[1]).toEqual({ startMs: 5000, endMs: 5250, maxLatencyMs: 200 })
    expect(summary.longestMs).toBe(1005)
  })

  it('merges a late cover that bridges two episodes', () => {
    const stalls = new Stalls(100)
    stalls.record(0, 150)
    stalls.record(1000, 150)
    stalls.record(100, 1000)
    expect(stalls.summary().episodes).toEqual([{ startMs: 0, endMs: 1150, maxLatencyMs: 1000 }])
  })
})
