/**
 * The consistent-hash ring of leaderless mode (pure: no I/O, no randomness). Each member owns
 * `vnodes` points on a 32-bit ring; a key's preference list is the first N distinct members
 * met walking clockwise from the key's hash. Adding or removing one member moves only the
 * ranges next to its points (about 1/M of the keys), and virtual nodes spread each member's
 * share evenly.
 *
 * Hinted handoff asks for the list beyond N: `walk(key)` yields every distinct member in ring
 * order, so the first healthy ones past the preference list stand in for the down ones.
 */
import { invariant } from './invariant.js'

/** FNV-1a over UTF-8 bytes, then a murmur3 finalizer for avalanche: a stable 32-bit hash. */
export function hash32(text: string): number {
  // The core has no TextEncoder (no DOM or Node types): UTF-8 is encoded on the fly, by UTF-16
  // unit (a string iterator per call cost more than the hashing). A lone surrogate counts as
  // its own code point, as iterating the string would give it.
  let h = 0x811c9dc5
  for (let i = 0; i < text.length; i++) {
    let c = text.charCodeAt(i)
    if (c < 0x80) {
      h = Math.imul(h ^ c, 0x01000193)
      continue
    }
    if (c >= 0xd800 && c < 0xdc00 && i + 1 < text.length) {
      const low = text.charCodeAt(i + 1)
      if (low >= 0xdc00 && low < 0xe000) {
        c = 0x10000 + ((c - 0xd800) << 10) + (low - 0xdc00)
        i++
      }
    }
    if (c < 0x800) {
      h = Math.imul(h ^ (0xc0 | (c >> 6)), 0x01000193)
      h = Math.imul(h ^ (0x80 | (c & 63)), 0x01000193)
    } else if (c < 0x10000) {
      h = Math.imul(h ^ (0xe0 | (c >> 12)), 0x01000193)
      h = Math.imul(h ^ (0x80 | ((c >> 6) & 63)), 0x01000193)
      h = Math.imul(h ^ (0x80 | (c & 63)), 0x01000193)
    } else {
      h = Math.imul(h ^ (0xf0 | (c >> 18)), 0x01000193)
      h = Math.imul(h ^ (0x80 | ((c >> 12) & 63)), 0x01000193)
      h = Math.imul(h ^ (0x80 | ((c >> 6) & 63)), 0x01000193)
      h = Math.imul(h ^ (0x80 | (c & 63)), 0x01000193)
    }
  }
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

interface Point {
  position: number
  member: string
}

/** One arc of the ring: keys hashing into (start, end] belong first to `member`. */
export interface RingRange {
  start: number
  end: number
  member: string
}

export class HashRing {
  readonly members: readonly string[]
  readonly vnodes: number
  private readonly points: Point[]
  /** The walk from each point, once asked for. */
  private readonly walks: (readonly string[] | undefined)[] = []
  /** Per n, the replica set of the keys of each point, once asked for. */
  private readonly sets = new Map<number, (string | undefined)[]>()

  /**
   * `tokensOf` names the points of a member: by default its own id, so its points are
   * hash32("id#0") ... A replacement member takes the points of the member it replaces (its
   * tokens name is that member's), so it takes over exactly that member's ranges and no other
   * range moves, as Cassandra's replace_address keeps the dead node's tokens.
   */
  constructor(
    members: readonly string[],
    vnodes = 64,
    tokensOf: (member: string) => string = (member) => member,
  ) {
    invariant(members.length > 0, 'a ring needs at least one member')
    invariant(new Set(members).size === members.length, 'duplicate ring members')
    invariant(Number.isInteger(vnodes) && vnodes >= 1, `vnodes must be at least 1, not ${vnodes}`)
    this.members = [...members].sort()
    this.vnodes = vnodes
    const tokens = this.members.map(tokensOf)
    invariant(new Set(tokens).size === tokens.length, 'two ring members share their tokens')
    const points: Point[] = []
    for (const member of this.members) {
      const name = tokensOf(member)
      for (let v = 0; v < vnodes; v++) points.push({ position: hash32(`${name}#${v}`), member })
    }
    // Equal positions (rare) are ordered by member id, so every node builds the same ring.
    points.sort((a, b) => a.position - b.position || (a.member < b.member ? -1 : 1))
    this.points = points
  }

  /** Index of the first point at or after `position` (wrapping). */
  private firstAtOrAfter(position: number): number {
    let lo = 0
    let hi = this.points.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if ((this.points[mid] as Point).position < position) lo = mid + 1
      else hi = mid
    }
    return lo === this.points.length ? 0 : lo
  }

  /** Every distinct member in ring order from the key's position. */
  walk(key: string): readonly string[] {
    return this.walkFrom(hash32(key))
  }

  /**
   * Every distinct member in ring order from a ring position. The ring never changes, so the
   * order from each point is worked out once and kept (members x vnodes short lists): a
   * leaderless write asks for it several times on every replica.
   */
  walkFrom(position: number): readonly string[] {
    return this.walkAt(this.firstAtOrAfter(position))
  }

  private walkAt(start: number): readonly string[] {
    const known = this.walks[start]
    if (known !== undefined) return known
    const seen = new Set<string>()
    for (let i = 0; i < this.points.length && seen.size < this.members.length; i++)
      seen.add((this.points[(start + i) % this.points.length] as Point).member)
    const order = Object.freeze([...seen])
    this.walks[start] = order
    return order
  }

  /** The key's preference list: its first `n` distinct members (fewer if the ring is smaller). */
  preferenceList(key: string, n: number): string[] {
    return this.preferenceListAt(hash32(key), n)
  }

  /** The preference list of every key hashing to `position` (an arc's end, say). */
  preferenceListAt(position: number, n: number): string[] {
    invariant(Number.isInteger(n) && n >= 1, `n must be at least 1, not ${n}`)
    return this.walkFrom(position).slice(0, n)
  }

  /**
   * The replica set of the key: its preference list sorted and joined by commas ("n1,n2,n4"),
   * the name anti-entropy keeps its trees under. Kept per point, as the walks are.
   */
  replicaSet(key: string, n: number): string {
    invariant(Number.isInteger(n) && n >= 1, `n must be at least 1, not ${n}`)
    const start = this.firstAtOrAfter(hash32(key))
    let sets = this.sets.get(n)
    if (sets === undefined) this.sets.set(n, (sets = []))
    const known = sets[start]
    if (known !== undefined) return known
    const set = this.walkAt(start).slice(0, n).sort().join(',')
    sets[start] = set
    return set
  }

  /**
   * Where a write goes when some of the preference list is down: the healthy members of the
   * list, and for each down one the next healthy member past the list (a stand-in holding a
   * hint for it). Returns who stores the value, and which stand-in holds a hint for whom.
   */
  sloppyTargets(
    key: string,
    n: number,
    healthy: (member: string) => boolean,
  ): { targets: string[]; hints: Map<string, string> } {
    const walked = [...this.walk(key)]
    const preferred = walked.slice(0, n)
    const spare = walked.slice(n).filter(healthy)
    const targets: string[] = []
    const hints = new Map<string, string>()
    for (const member of preferred) {
      if (healthy(member)) {
        targets.push(member)
        continue
      }
      const standIn = spare.shift()
      if (standIn === undefined) continue
      targets.push(standIn)
      hints.set(standIn, member)
    }
    return { targets, hints }
  }

  /** The arcs of the ring with their first owner, in ring order (for /v1/cluster). */
  ranges(): RingRange[] {
    const out: RingRange[] = []
    for (let i = 0; i < this.points.length; i++) {
      const point = this.points[i] as Point
      const previous = this.points[(i - 1 + this.points.length) % this.points.length] as Point
      out.push({ start: previous.position, end: point.position, member: point.member })
    }
    return out
  }

  /** Each member's share of the ring as a primary owner (0 to 1), for balance checks. */
  shares(): Map<string, number> {
    const share = new Map<string, number>(this.members.map((m) => [m, 0]))
    for (const r of this.ranges()) {
      const width = r.end > r.start ? r.end - r.start : 2 ** 32 - r.start + r.end
      share.set(r.member, (share.get(r.member) ?? 0) + width / 2 ** 32)
    }
    return share
  }
}
