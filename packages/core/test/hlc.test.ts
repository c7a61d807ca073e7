import { HybridClock, compareHlc, type HlcTimestamp } from '../src/hlc.js'

describe('the hybrid logical clock', () => {
  it('moves with the wall clock, and counts when the wall clock stands still or goes back', () => {
    const clock = new HybridClock('n1')
    const a = clock.now(1000)
    const b = clock.now(1000)
    const c = clock.now(999) // the wall clock stepped back
    const d = clock.now(1500)
    expect([a, b, c, d].map((t) => [t.wallMs, t.logical])).toEqual([
      [1000, 0],
      [1000, 1],
      [1000, 2],
      [1500, 0],
    ])
    for (const [x, y] of [
      [a, b],
      [b, c],
      [c, d],
    ] as const)
      expect(compareHlc(x, y)).toBeLessThan(0)
  })

  it('orders a write after every write it observed, even from a node whose clock runs ahead', () => {
    const fast = new HybridClock('n1')
    const slow = new HybridClock('n2')
    const remote = fast.now(5000)
    slow.observe(remote, 1000)
    const local = slow.now(1001)
    expect(compareHlc(local, remote)).toBeGreaterThan(0)
    expect(local.wallMs).toBe(5000)
  })

  it('breaks exact ties by node id, so every replica picks the same winner', () => {
    const a: HlcTimestamp = { wallMs: 7, logical: 3, node: 'n1' }
    const b: HlcTimestamp = { wallMs: 7, logical: 3, node: 'n2' }
    expect(compareHlc(a, b)).toBeLessThan(0)
    expect(compareHlc(b, a)).toBeGreaterThan(0)
    expect(compareHlc(a, { ...a })).toBe(0)
  })

  it('is strictly monotone over random interleavings of local events and receipts', () => {
    let seed = 99
    const random = () => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0
      return seed / 2 ** 32
    }
    const clocks = ['n1', 'n2', 'n3'].map((n) => new HybridClock(n))
    const last: (HlcTimestamp | null)[] = [null, null, null]
    const sent: HlcTimestamp[] = []
    let wall = 10_000
    for (let i = 0; i < 5000; i++) {
      wall += Math.floor(random() * 3) - 1 // jitters, sometimes backwards
      const at = Math.floor(random() * 3)
      const clock = clocks[at] as HybridClock
      const skewed = wall + at * 50
      if (random() < 0.3 && sent.length > 0) {
        const remote = sent[Math.floor(random() * sent.length)] as HlcTimestamp
        clock.observe(remote, skewed)
        const next = clock.now(skewed)
        expect(compareHlc(next, remote)).toBeGreaterThan(0)
        if (last[at]) expect(compareHlc(next, last[at] as HlcTimestamp)).toBeGreaterThan(0)
        last[at] = next
      } else {
        const next = clock.now(skewed)
        if (last[at]) expect(compareHlc(next, last[at] as HlcTimestamp)).toBeGreaterThan(0)
        last[at] = next
        sent.push(next)
      }
    }
  })

  it('refuses a timestamp from further ahead than the tolerated skew', () => {
    const clock = new HybridClock('n1', 1000)
    expect(() => clock.observe({ wallMs: 10_000, logical: 0, node: 'n9' }, 1000)).toThrow(
      /9000 ms ahead/,
    )
    // Its own clock did not move.
    expect(clock.now(1000).wallMs).toBe(1000)
  })
})
