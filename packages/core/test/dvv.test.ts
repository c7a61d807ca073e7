import {
  covers,
  descends,
  emptyVersioned,
  merge,
  read,
  sameState,
  update,
  type Versioned,
} from '../src/dvv.js'

type S = Versioned<string>

describe('dotted version vectors', () => {
  it('keeps concurrent writes without a context as siblings, and a write with the context resolves them', () => {
    let a: S = emptyVersioned()
    a = update(a, 'n1', {}, 'x').state
    // Two clients write without having read: both survive.
    const b = update(a, 'n1', {}, 'y').state
    expect(read(b).values.sort()).toEqual(['x', 'y'])
    // A client that read both and writes with that context replaces them.
    const { values, context } = read(b)
    expect(values).toHaveLength(2)
    const c = update(b, 'n2', context, 'merged').state
    expect(read(c).values).toEqual(['merged'])
    expect(read(c).context).toEqual({ n1: 2, n2: 1 })
  })

  it('a write with an old context supersedes only what that context had seen', () => {
    let s: S = update(emptyVersioned<string>(), 'n1', {}, 'v1').state
    const seen = read(s).context
    s = update(s, 'n1', seen, 'v2').state
    // A client that read v1 (not v2) writes: v2 survives as its sibling.
    s = update(s, 'n2', seen, 'v3').state
    expect(read(s).values.sort()).toEqual(['v2', 'v3'])
  })

  it('replicas that saw different writes converge by merging, whatever the order', () => {
    const base = update(emptyVersioned<string>(), 'n1', {}, 'base').state
    const ctx = read(base).context
    const r1 = update(base, 'n1', ctx, 'from-n1').state
    const r2 = update(base, 'n2', ctx, 'from-n2').state
    const m12 = merge(r1, r2)
    const m21 = merge(r2, r1)
    expect(sameState(m12, m21)).toBe(true)
    expect(read(m12).values.sort()).toEqual(['from-n1', 'from-n2'])
    // The superseded base is gone on both, and merging again changes nothing.
    expect(sameState(merge(m12, m12), m12)).toBe(true)
    expect(sameState(merge(m12, base), m12)).toBe(true)
  })

  it('merge is commutative, associative and idempotent over random histories', () => {
    let seed = 12345
    const random = () => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0
      return seed / 2 ** 32
    }
    const nodes = ['n1', 'n2', 'n3']
    for (let round = 0; round < 300; round++) {
      // Three replicas; random writes at random replicas with contexts read from any replica,
      // and random syncs between them.
      const replicas: S[] = [emptyVersioned(), emptyVersioned(), emptyVersioned()]
      for (let step = 0; step < 12; step++) {
        const at = Math.floor(random() * 3)
        if (random() < 0.6) {
          const from = replicas[Math.floor(random() * 3)] as S
          const context = random() < 0.3 ? {} : read(from).context
          replicas[at] = update(
            replicas[at] as S,
            nodes[at] as string,
            context,
            `w${round}.${step}`,
          ).state
        } else {
          const other = Math.floor(random() * 3)
          replicas[at] = merge(replicas[at] as S, replicas[other] as S)
        }
      }
      const [a, b, c] = replicas as [S, S, S]
      expect(sameState(merge(a, b), merge(b, a))).toBe(true)
      expect(sameState(merge(merge(a, b), c), merge(a, merge(b, c)))).toBe(true)
      expect(sameState(merge(a, a), a)).toBe(true)
      // After a full exchange every replica holds the same state.
      const all = merge(merge(a, b), c)
      for (const r of [a, b, c]) expect(sameState(merge(r, all), all)).toBe(true)
      // No sibling the merged vector does not account for.
      for (const s of all.siblings) expect(covers(all.vector, s.dot)).toBe(true)
    }
  })

  it('never reuses a dot, even when the coordinator lags the context', () => {
    const s = update(emptyVersioned<string>(), 'n1', { n1: 5 }, 'v').state
    expect(s.siblings[0]?.dot).toEqual({ node: 'n1', counter: 6 })
    expect(descends(s.vector, { n1: 5 })).toBe(true)
    expect(descends({ n1: 1 }, s.vector)).toBe(false)
  })
})
