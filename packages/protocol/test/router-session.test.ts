import { KvError } from '../src/errors.js'
import { epochMax, lsnMax } from '../src/limits.js'
import {
  decodeRouterSession,
  encodeRouterSession,
  isRouterSessionToken,
  mergeRouterSessions,
  parseClientSession,
  routerSessionCharsMax,
  type RouterSession,
} from '../src/router-session.js'
import { encodeSession } from '../src/session.js'
import { shardLimits } from '../src/shards.js'

const token = (json: unknown) => `r1.${Buffer.from(JSON.stringify(json)).toString('base64url')}`
const session = (mapVersion: number, groups: [string, number, number][]): RouterSession => ({
  mapVersion,
  groups: new Map(groups.map(([g, epoch, lsn]) => [g, { epoch, lsn }])),
})
const entries = (s: RouterSession) => [...s.groups].sort((a, b) => (a[0] < b[0] ? -1 : 1))

function refusal(fn: () => unknown): KvError {
  try {
    fn()
  } catch (err) {
    if (err instanceof KvError) return err
    throw err
  }
  throw new Error('not refused')
}

function* permutations<T>(items: T[]): Generator<T[]> {
  if (items.length <= 1) {
    yield items
    return
  }
  for (let i = 0; i < items.length; i++) {
    const rest = [...items.slice(0, i), ...items.slice(i + 1)]
    for (const p of permutations(rest)) yield [items[i] as T, ...p]
  }
}

describe('router session tokens', () => {
  it('round-trip, and equal sessions make equal tokens whatever the insertion order', () => {
    const a = session(7, [
      ['g2', 3, 99],
      ['g1', 1, 12],
    ])
    const b = session(7, [
      ['g1', 1, 12],
      ['g2', 3, 99],
    ])
    const encoded = encodeRouterSession(a)
    expect(encoded).toMatch(/^r1\.[A-Za-z0-9_-]+$/)
    expect(encodeRouterSession(b)).toBe(encoded)
    expect(isRouterSessionToken(encoded)).toBe(true)
    expect(isRouterSessionToken(encodeSession({ epoch: 1, lsn: 2 }))).toBe(false)
    const back = decodeRouterSession(encoded)
    expect(back.mapVersion).toBe(7)
    expect(entries(back)).toEqual(entries(a))
  })

  it('fits the longest session a deployment can have within routerSessionCharsMax', () => {
    const groups: [string, number, number][] = []
    for (let i = 0; i < shardLimits.groupsMax; i++)
      groups.push([`g${String(i).padStart(63, '0')}`, epochMax, lsnMax - 1])
    const longest = session(Number.MAX_SAFE_INTEGER, groups)
    const encoded = encodeRouterSession(longest)
    expect(encoded.length).toBeLessThanOrEqual(routerSessionCharsMax)
    expect(entries(decodeRouterSession(encoded))).toEqual(entries(longest))
  })

  const tooMany = Array.from({ length: shardLimits.groupsMax + 1 }, (_, i) => [`g${i}`, 1, 1])
  it.each([
    ['not a router token', 's1.1.1', /not a router token/],
    ['not base64url', 'r1.***', /not base64url/],
    ['not JSON', `r1.${Buffer.from('{').toString('base64url')}`, /not JSON/],
    ['too short a list', token([1]), /mapVersion, groups/],
    ['an object', token({ mapVersion: 1, groups: [] }), /mapVersion, groups/],
    ['a negative map version', token([-1, []]), /map version/],
    ['a fractional map version', token([1.5, []]), /map version/],
    ['an unsafe map version', token([2 ** 53, []]), /map version/],
    ['a string map version', token(['1', []]), /map version/],
    ['groups not a list', token([1, {}]), /group list/],
    ['too many groups', token([1, tooMany]), /group list/],
    ['an entry of two', token([1, [['g1', 1]]]), /group entry/],
    ['an entry not a list', token([1, [{ g1: 1 }]]), /group entry/],
    ['a group id with a space', token([1, [['g 1', 1, 1]]]), /group id/],
    ['an empty group id', token([1, [['', 1, 1]]]), /group id/],
    ['a group id of 65 characters', token([1, [['g'.repeat(65), 1, 1]]]), /group id/],
    ['a numeric group id', token([1, [[7, 1, 1]]]), /group id/],
    ['a negative LSN', token([1, [['g1', 1, -5]]]), /position/],
    ['an LSN at lsnMax', token([1, [['g1', 1, lsnMax]]]), /position/],
    ['a fractional LSN', token([1, [['g1', 1, 1.5]]]), /position/],
    ['an epoch past epochMax', token([1, [['g1', epochMax + 1, 1]]]), /position/],
    ['a string epoch', token([1, [['g1', '1', 1]]]), /position/],
    [
      'a group twice',
      token([
        1,
        [
          ['g1', 1, 5],
          ['g1', 1, 6],
        ],
      ]),
      /twice/,
    ],
    ['a token past the bound', `r1.${'A'.repeat(routerSessionCharsMax)}`, /too long/],
  ])('refuses %s with KV_ERR_INVALID_SESSION', (_name, bad, why) => {
    const err = refusal(() => decodeRouterSession(bad))
    expect(err.code).toBe('KV_ERR_INVALID_SESSION')
    expect(err.status).toBe(400)
    expect(err.message).toMatch(why)
  })

  it('parses a token of either kind, and refuses anything else', () => {
    const s1 = encodeSession({ epoch: 2, lsn: 40 })
    expect(parseClientSession(` ${s1} `)).toEqual({
      kind: 'node',
      position: { epoch: 2, lsn: 40 },
      token: s1,
    })
    const r1 = encodeRouterSession(session(3, [['g1', 1, 2]]))
    const parsed = parseClientSession(r1)
    expect(parsed.kind).toBe('router')
    expect(parsed.kind === 'router' && entries(parsed.session)).toEqual([
      ['g1', { epoch: 1, lsn: 2 }],
    ])
    for (const bad of ['x1.2.3', 'r1.***', '', 's1.'])
      expect(refusal(() => parseClientSession(bad)).code).toBe('KV_ERR_INVALID_SESSION')
  })
})

describe('merging router sessions', () => {
  it('keeps per group the later position (by LSN, then epoch) and the higher map version', () => {
    const a = session(5, [
      ['g1', 1, 10],
      ['g2', 1, 20],
      ['g4', 1, 7],
    ])
    const b = session(3, [
      ['g1', 2, 15],
      ['g2', 1, 4],
      ['g3', 1, 1],
      ['g4', 2, 7],
    ])
    const merged = mergeRouterSessions(a, b)
    expect(merged.mapVersion).toBe(5)
    expect(entries(merged)).toEqual([
      ['g1', { epoch: 2, lsn: 15 }],
      ['g2', { epoch: 1, lsn: 20 }],
      ['g3', { epoch: 1, lsn: 1 }],
      ['g4', { epoch: 2, lsn: 7 }],
    ])
    // Neither argument is changed.
    expect(entries(a)).toEqual(
      entries(
        session(5, [
          ['g1', 1, 10],
          ['g2', 1, 20],
          ['g4', 1, 7],
        ]),
      ),
    )
    expect(b.groups.size).toBe(4)
    expect(mergeRouterSessions(b, a)).toEqual(merged)
  })

  it('gives the same session whatever order the tokens arrive in', () => {
    // What concurrent answers carry: each the same base advanced in one group, or more.
    const tokens = [
      session(1, [['g1', 1, 4]]),
      session(1, [
        ['g1', 1, 3],
        ['g2', 1, 9],
      ]),
      session(2, [['g2', 2, 9]]),
      session(1, [['g3', 1, 1]]),
      session(1, []),
    ]
    const results = new Set<string>()
    for (const order of permutations(tokens)) {
      let merged: RouterSession | null = null
      for (const t of order) {
        // A token that went through the wire, as the SDK gets it.
        const received = decodeRouterSession(encodeRouterSession(t))
        merged = merged === null ? received : mergeRouterSessions(merged, received)
      }
      results.add(encodeRouterSession(merged as RouterSession))
    }
    expect([...results]).toEqual([
      encodeRouterSession(
        session(2, [
          ['g1', 1, 4],
          ['g2', 2, 9],
          ['g3', 1, 1],
        ]),
      ),
    ])
  })

  it('refuses a merge naming more groups than a deployment can have', () => {
    const half = (from: number) =>
      session(
        1,
        Array.from(
          { length: shardLimits.groupsMax },
          (_, i) => [`g${from + i}`, 1, 1] as [string, number, number],
        ),
      )
    expect(mergeRouterSessions(half(0), half(0)).groups.size).toBe(shardLimits.groupsMax)
    expect(refusal(() => mergeRouterSessions(half(0), half(1))).code).toBe('KV_ERR_INVALID_SESSION')
  })
})
