import type { ListItem } from '@kvstore/protocol'
import { compareKeys, encodeListCursor, mergeListPages } from '../src/list-merge.js'

const items = (...keys: string[]): ListItem[] =>
  keys.map((key) => ({ key, version: 1, valueBytes: 1 }))
const keys = (page: { items: ListItem[] }) => page.items.map((i) => i.key)

describe('merging list pages across groups', () => {
  it('orders keys as their UTF-8 bytes do', () => {
    const sorted = ['b', 'a', '\u{1F600}', '\uFFFD', 'ab', ''].sort(compareKeys)
    expect(sorted).toEqual(['', 'a', 'ab', 'b', '\uFFFD', '\u{1F600}'])
    const bytes = [...sorted].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)))
    expect(sorted).toEqual(bytes)
  })

  it('merges complete pages in key order, up to the limit', () => {
    const merged = mergeListPages(
      [
        { items: items('a', 'd', 'e'), more: false },
        { items: items('b', 'c', 'f'), more: false },
      ],
      10,
    )
    expect(keys(merged)).toEqual(['a', 'b', 'c', 'd', 'e', 'f'])
    expect(merged.after).toBeNull()
    const limited = mergeListPages(
      [
        { items: items('a', 'd', 'e'), more: false },
        { items: items('b', 'c', 'f'), more: false },
      ],
      4,
    )
    expect(keys(limited)).toEqual(['a', 'b', 'c', 'd'])
    expect(limited.after).toBe('d')
  })

  it('stops at the last key of a group that has more, so no key is skipped', () => {
    // g2 stopped at c (its page was full): keys of g2 after c are unknown, so nothing past c.
    const merged = mergeListPages(
      [
        { items: items('a', 'd', 'e'), more: false },
        { items: items('b', 'c'), more: true },
      ],
      10,
    )
    expect(keys(merged)).toEqual(['a', 'b', 'c'])
    expect(merged.after).toBe('c')
  })

  it('pages through two groups to the same keys as one sorted list', () => {
    // Two "groups" holding interleaved keys, listed page by page with small limits.
    const all = Array.from({ length: 57 }, (_, i) => `k${String(i).padStart(3, '0')}`)
    const groups = [all.filter((_, i) => i % 3 === 0), all.filter((_, i) => i % 3 !== 0)]
    const page = (group: string[], after: string | null, limit: number) => {
      const rest = group.filter((k) => after === null || compareKeys(k, after) > 0)
      return { items: items(...rest.slice(0, limit)), more: rest.length > limit }
    }
    const seen: string[] = []
    let after: string | null = null
    for (let round = 0; round < 100; round++) {
      const merged = mergeListPages(
        groups.map((g) => page(g, after, 7)),
        7,
      )
      seen.push(...keys(merged))
      after = merged.after
      if (after === null) break
    }
    expect(seen).toEqual(all)
  })

  it('makes the node cursor', () => {
    const cursor = encodeListCursor('a/b', 'a/')
    expect(JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'))).toEqual({
      v: 1,
      after: 'a/b',
      prefix: 'a/',
    })
  })
})
