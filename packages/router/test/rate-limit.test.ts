import { RateLimiter } from '../src/rate-limit.js'

describe('the rate limiter', () => {
  it('allows a burst, then the rate, and says how long to wait', () => {
    const limiter = new RateLimiter(10, 20, 100)
    let allowed = 0
    for (let i = 0; i < 25; i++) if (limiter.take('a', 1, 0) === 0) allowed++
    expect(allowed).toBe(20)
    expect(limiter.take('a', 1, 0)).toBe(1)
    // 100 ms refill one token at 10 a second.
    expect(limiter.take('a', 1, 100)).toBe(0)
    expect(limiter.take('a', 1, 100)).toBeGreaterThan(0)
    // Another key has its own bucket.
    expect(limiter.take('b', 1, 100)).toBe(0)
  })

  it('charges expensive requests more, and at most the whole burst', () => {
    const limiter = new RateLimiter(1, 10, 100)
    expect(limiter.take('a', 4, 0)).toBe(0)
    expect(limiter.take('a', 4, 0)).toBe(0)
    // 2 tokens left: a cost of 4 waits 2 s.
    expect(limiter.take('a', 4, 0)).toBe(2)
    // A cost above the burst is charged as the burst: possible after a full refill.
    expect(limiter.take('b', 1000, 0)).toBe(0)
    expect(limiter.take('b', 1, 0)).toBe(1)
  })

  it('keeps at most bucketsMax buckets, dropping the least recently seen', () => {
    const limiter = new RateLimiter(1, 1, 3)
    limiter.take('a', 1, 0)
    limiter.take('b', 1, 0)
    limiter.take('c', 1, 0)
    limiter.take('a', 1, 0) // a is now the most recent
    limiter.take('d', 1, 0) // drops b
    expect(limiter.size).toBe(3)
    expect(limiter.take('a', 1, 0)).toBeGreaterThan(0) // still limited: kept
    expect(limiter.take('b', 1, 0)).toBe(0) // forgotten: a fresh bucket
  })

  it('refuses a nonsensical configuration', () => {
    expect(() => new RateLimiter(0, 1, 1)).toThrow()
  })
})
