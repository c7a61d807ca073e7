/**
 * Token buckets keyed by who is asking (a client address, a credential). A request takes
 * `cost` tokens (a listing with values costs more than a lookup); a bucket refills at `rate`
 * tokens a second up to `burst`. The map of buckets is bounded: past `bucketsMax` the least
 * recently seen bucket is dropped (its owner starts again with a full bucket, which is the
 * most an attacker who floods the map with fresh keys can win). Pure: time is passed in.
 */
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; atMs: number }>()

  constructor(
    private readonly ratePerSecond: number,
    private readonly burst: number,
    private readonly bucketsMax: number,
  ) {
    if (!(ratePerSecond > 0) || !(burst >= 1) || !(bucketsMax >= 1))
      throw new Error('a rate limiter needs a positive rate, a burst of at least 1 and room')
  }

  get size(): number {
    return this.buckets.size
  }

  /**
   * Takes `cost` tokens from `key`'s bucket. Returns 0 when the request may go on, else the
   * seconds to wait before it would (at least 1, for Retry-After). A cost above the burst is
   * charged as the whole burst, so an expensive request is possible, if rare.
   */
  take(key: string, cost: number, nowMs: number): number {
    const charge = Math.min(cost, this.burst)
    let bucket = this.buckets.get(key)
    if (bucket === undefined) {
      if (this.buckets.size >= this.bucketsMax) {
        const oldest = this.buckets.keys().next().value
        if (oldest !== undefined) this.buckets.delete(oldest)
      }
      bucket = { tokens: this.burst, atMs: nowMs }
    } else {
      // Re-inserted below: the map stays in least-recently-seen order.
      this.buckets.delete(key)
      const elapsedMs = Math.max(0, nowMs - bucket.atMs)
      bucket.tokens = Math.min(this.burst, bucket.tokens + (elapsedMs / 1000) * this.ratePerSecond)
      bucket.atMs = nowMs
    }
    this.buckets.set(key, bucket)
    if (bucket.tokens >= charge) {
      bucket.tokens -= charge
      return 0
    }
    return Math.max(1, Math.ceil((charge - bucket.tokens) / this.ratePerSecond))
  }
}
