/**
 * The leaderless simulator's network: packets arrive after a random delay of 1 to
 * `delayTicksMax` ticks (which reorders them), some are dropped, and a partition cuts the
 * links between two random groups of members until it heals. Every choice draws from the
 * run's seeded PRNG, in a fixed order, so a seed replays exactly.
 */
import type { Prng } from '../prng.js'

export interface NetworkRates {
  dropRate: number
  delayTicksMax: number
  partitionRate: number
}

export class SimNetwork<P> {
  /** Packets by the tick they arrive at, in send order. */
  private readonly schedule = new Map<number, P[]>()
  /** Unordered pairs "a|b" that are cut. */
  private readonly cut = new Set<string>()
  private healTick = -1
  /** Faults (drops, partitions) happen only until the run heals. */
  faulty = true
  messages = 0
  partitions = 0

  constructor(
    private readonly rng: Prng,
    private readonly rates: NetworkRates,
  ) {}

  /** Sends a packet at `tick`: dropped, or delivered 1 to delayTicksMax ticks later. */
  send(tick: number, packet: P): void {
    this.messages++
    if (this.faulty && this.rng.chance(this.rates.dropRate)) return
    const at = tick + this.rng.int(1, this.rates.delayTicksMax)
    let bucket = this.schedule.get(at)
    if (bucket === undefined) this.schedule.set(at, (bucket = []))
    bucket.push(packet)
  }

  /** The packets arriving at `tick`, in send order (taken off the network). */
  arriving(tick: number): P[] {
    const due = this.schedule.get(tick)
    if (due === undefined) return []
    this.schedule.delete(tick)
    return due
  }

  /** No partition separates `a` and `b`. */
  linked(a: string, b: string): boolean {
    return !this.cut.has(a < b ? `${a}|${b}` : `${b}|${a}`)
  }

  /** Heals a partition whose time is up, and maybe starts one between random groups. */
  partitionMaybe(tick: number, members: readonly string[]): void {
    const r = this.rng
    if (this.cut.size > 0 && tick >= this.healTick) this.cut.clear()
    if (this.cut.size === 0 && r.chance(this.rates.partitionRate)) {
      const shuffled = [...members].sort(() => r.float() - 0.5)
      const side = new Set(shuffled.slice(0, r.int(1, 2)))
      for (const a of members)
        for (const b of members) if (a < b && side.has(a) !== side.has(b)) this.cut.add(`${a}|${b}`)
      this.healTick = tick + r.int(30, 500)
      this.partitions++
    }
  }

  /** Every link up, no more drops. */
  heal(): void {
    this.faulty = false
    this.cut.clear()
  }
}
