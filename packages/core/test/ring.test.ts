import { HashRing, hash32 } from '../src/ring.js'

const members = ['n1', 'n2', 'n3', 'n4', 'n5']
const keys = Array.from({ length: 20_000 }, (_, i) => `user/${i}`)

describe('hash32', () => {
  it('is stable, spreads, and hashes equal text equally whatever its code points', () => {
    expect(hash32('a')).toBe(hash32('a'))
    expect(hash32('a')).not.toBe(hash32('b'))
    expect(hash32('clé')).toBe(hash32('cl\u00e9'))
    expect(hash32('😀')).not.toBe(hash32('\ud83d'))
    // Pinned: a different function would move every key of a running cluster.
    expect(hash32('user/1')).toBe(2640660595)
    expect(hash32('')).toBe(2872998923)
    const buckets = new Array<number>(16).fill(0)
    for (const k of keys) buckets[hash32(k) >>> 28]! += 1
    for (const b of buckets) expect(b).toBeGreaterThan(keys.length / 16 / 1.25)
  })
})

describe('the hash ring', () => {
  it('gives each key N distinct members, the same on every node whatever the member order', () => {
    const a = new HashRing(members)
    const b = new HashRing([...members].reverse())
    for (const k of keys.slice(0, 2000)) {
      const list = a.preferenceList(k, 3)
      expect(list).toHaveLength(3)
      expect(new Set(list).size).toBe(3)
      expect(b.preferenceList(k, 3)).toEqual(list)
    }
    expect(new HashRing(['n1', 'n2']).preferenceList('k', 3)).toEqual(
      expect.arrayContaining(['n1', 'n2']),
    )
  })

  it('spreads ownership evenly with virtual nodes', () => {
    const ring = new HashRing(members, 64)
    const shares = ring.shares()
    let total = 0
    for (const share of shares.values()) {
      total += share
      expect(share).toBeGreaterThan(0.2 / 1.35)
      expect(share).toBeLessThan(0.2 * 1.35)
    }
    expect(total).toBeCloseTo(1, 9)
    const primaries = new Map<string, number>()
    for (const k of keys) {
      const first = ring.preferenceList(k, 1)[0] as string
      primaries.set(first, (primaries.get(first) ?? 0) + 1)
    }
    for (const count of primaries.values()) expect(count).toBeGreaterThan(keys.length / 5 / 1.4)
  })

  it('moves only about 1/M of the keys when a member joins', () => {
    const before = new HashRing(members.slice(0, 4))
    const after = new HashRing(members)
    let moved = 0
    for (const k of keys) {
      const was = before.preferenceList(k, 1)[0]
      const is = after.preferenceList(k, 1)[0]
      if (was !== is) {
        moved++
        // A key only moves to the newcomer.
        expect(is).toBe('n5')
      }
    }
    expect(moved / keys.length).toBeGreaterThan(0.1)
    expect(moved / keys.length).toBeLessThan(0.3)
  })

  it('sends a down member’s share to the next healthy member past the list, with a hint', () => {
    const ring = new HashRing(members)
    for (const k of keys.slice(0, 500)) {
      const walked = [...ring.walk(k)]
      expect(walked).toHaveLength(5)
      const down = walked[1] as string
      const { targets, hints } = ring.sloppyTargets(k, 3, (m) => m !== down)
      // The down member's place goes to the first healthy member past the list.
      expect(targets).toEqual([walked[0], walked[3], walked[2]])
      expect(targets).not.toContain(down)
      expect(hints).toEqual(new Map([[walked[3], down]]))
    }
    // With nobody to stand in, the write goes to fewer members and no hint is invented.
    const { targets, hints } = new HashRing(['n1', 'n2', 'n3']).sloppyTargets(
      'k',
      3,
      (m) => m !== 'n2',
    )
    expect(targets).toHaveLength(2)
    expect(hints.size).toBe(0)
  })

  it('refuses impossible configurations', () => {
    expect(() => new HashRing([])).toThrow(/at least one member/)
    expect(() => new HashRing(['a', 'a'])).toThrow(/duplicate/)
    expect(() => new HashRing(['a'], 0)).toThrow(/vnodes/)
    expect(() => new HashRing(['a']).preferenceList('k', 0)).toThrow(/n must be/)
  })
})
