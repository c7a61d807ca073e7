import { describe, expect, it } from 'vitest'
import { MarkerLag, distinctConflicts, sampleSummary } from '../src/region-lag.js'
import { DelayQueue } from '../src/region-link.js'

describe('MarkerLag', () => {
  it('measures each marker from its acknowledgement to the first poll that shows it', () => {
    const lag = new MarkerLag()
    lag.acknowledged(0, 100)
    lag.acknowledged(1, 150)
    lag.observed(0, 130) // marker 0: 30 ms
    expect(lag.seen(0)).toBe(true)
    expect(lag.seen(1)).toBe(false)
    expect(lag.unseen).toBe(1)
    lag.acknowledged(2, 160)
    // A poll showing 2 shows 1 as well (applied in log order): 1 took 50 ms, 2 took 40.
    lag.observed(2, 200)
    expect(lag.unseen).toBe(0)
    const s = lag.summary()
    expect(s.samples).toBe(3)
    expect(s.max).toBeCloseTo(50, 1)
    expect(s.p50).toBeCloseTo(40, 1)
  })

  it('ignores older or unreadable values, and counts a marker seen before its ack as 0', () => {
    const lag = new MarkerLag()
    lag.acknowledged(0, 100)
    lag.observed(0, 120)
    lag.observed(0, 500) // the same value again: nothing new
    lag.observed(Number.NaN, 600)
    lag.observed(-1, 600)
    expect(lag.summary().samples).toBe(1)
    // Seen before the bench got the answer to the write.
    lag.observed(1, 700)
    lag.acknowledged(1, 705)
    expect(lag.early).toBe(1)
    const s = lag.summary()
    expect(s.samples).toBe(2)
    expect(s.p50).toBe(0)
    expect(s.max).toBeCloseTo(20, 1)
  })
})

describe('sampleSummary', () => {
  it('gives nearest-rank percentiles and the max, zeros when empty', () => {
    expect(sampleSummary([])).toEqual({ samples: 0, p50: 0, p99: 0, max: 0 })
    const values = Array.from({ length: 100 }, (_, i) => 100 - i) // 100 .. 1, unsorted
    expect(sampleSummary(values)).toEqual({ samples: 100, p50: 50, p99: 99, max: 100 })
    expect(sampleSummary([7])).toEqual({ samples: 1, p50: 7, p99: 7, max: 7 })
  })
})

describe('distinctConflicts', () => {
  it('counts a conflict both regions recorded once, by the loser stamp', () => {
    const c = (key: string, detectedIn: string, winner: string, loser: string) => ({
      key,
      detectedIn,
      winner: { stamp: winner },
      loser: { stamp: loser },
    })
    const out = distinctConflicts([
      c('k1', 'us', '2.0@eu', '1.0@us'),
      c('k1', 'eu', '2.0@eu', '1.0@us'),
      c('k2', 'eu', '5.0@us', '4.0@eu'),
      c('k2', 'eu', '5.0@us', '4.1@eu'),
    ])
    expect(out).toEqual({ distinct: 3, keys: 2, byRegion: { us: 1, eu: 3 } })
  })
})

describe('DelayQueue', () => {
  it('releases items delayMs after they were pushed, in order, and tracks bytes', () => {
    const q = new DelayQueue<string>(25)
    expect(q.nextDueAt()).toBeNull()
    q.push('a', 0, 3)
    q.push('b', 10, 4)
    expect(q.bytes).toBe(7)
    expect(q.nextDueAt()).toBe(25)
    expect(q.take(24)).toEqual([])
    expect(q.take(25)).toEqual(['a'])
    expect(q.bytes).toBe(4)
    expect(q.nextDueAt()).toBe(35)
    q.push('c', 11)
    expect(q.take(100)).toEqual(['b', 'c'])
    expect(q.length).toBe(0)
    expect(q.bytes).toBe(0)
  })

  it('stays correct across compactions', () => {
    const q = new DelayQueue<number>(1)
    const out: number[] = []
    for (let i = 0; i < 5000; i++) {
      q.push(i, i)
      out.push(...q.take(i))
    }
    out.push(...q.take(Infinity))
    expect(out).toEqual(Array.from({ length: 5000 }, (_, i) => i))
  })

  it('refuses a negative delay', () => {
    expect(() => new DelayQueue(-1)).toThrow(/delayMs/)
  })
})
