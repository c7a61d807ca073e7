import { KvError, encodeSession } from '@kvstore/protocol'
import {
  advanceRouterSession,
  decodeRouterSession,
  encodeRouterSession,
  laterPosition,
  parseClientSession,
  routerSessionCharsMax,
} from '../src/session.js'

describe('router session tokens', () => {
  it('round-trips, and equal sessions make equal tokens whatever the insertion order', () => {
    const a = {
      mapVersion: 7,
      groups: new Map([
        ['g2', { epoch: 3, lsn: 99 }],
        ['g1', { epoch: 1, lsn: 12 }],
      ]),
    }
    const b = {
      mapVersion: 7,
      groups: new Map([
        ['g1', { epoch: 1, lsn: 12 }],
        ['g2', { epoch: 3, lsn: 99 }],
      ]),
    }
    const token = encodeRouterSession(a)
    expect(token).toMatch(/^r1\.[A-Za-z0-9_-]+$/)
    expect(encodeRouterSession(b)).toBe(token)
    const back = decodeRouterSession(token)
    expect(back.mapVersion).toBe(7)
    expect([...back.groups]).toEqual([
      ['g1', { epoch: 1, lsn: 12 }],
      ['g2', { epoch: 3, lsn: 99 }],
    ])
  })

  it.each([
    ['r1.***', /not base64url/],
    [`r1.${Buffer.from('{').toString('base64url')}`, /not JSON/],
    [`r1.${Buffer.from('[1]').toString('base64url')}`, /mapVersion, groups/],
    [`r1.${Buffer.from('[-1,[]]').toString('base64url')}`, /map version/],
    [`r1.${Buffer.from('[1,[["g 1",1,1]]]').toString('base64url')}`, /group id/],
    [`r1.${Buffer.from('[1,[["g1",1,-5]]]').toString('base64url')}`, /position/],
    [`r1.${Buffer.from('[1,[["g1",1,5],["g1",1,6]]]').toString('base64url')}`, /twice/],
    [`r1.${'A'.repeat(routerSessionCharsMax)}`, /too long/],
  ])('refuses %s with KV_ERR_INVALID_SESSION', (token, why) => {
    let caught: unknown
    try {
      decodeRouterSession(token)
    } catch (err) {
      caught = err
    }
    expect(caught).toBeInstanceOf(KvError)
    expect((caught as KvError).code).toBe('KV_ERR_INVALID_SESSION')
    expect((caught as KvError).message).toMatch(why)
  })

  it('takes node tokens too, and refuses anything else', () => {
    const s1 = encodeSession({ epoch: 2, lsn: 40 })
    expect(parseClientSession(s1)).toEqual({
      kind: 'node',
      position: { epoch: 2, lsn: 40 },
      token: s1,
    })
    const r1 = encodeRouterSession({ mapVersion: 1, groups: new Map() })
    expect(parseClientSession(r1).kind).toBe('router')
    expect(() => parseClientSession('x1.2.3')).toThrow(KvError)
  })

  it('advances one group, keeps the others, never goes back, and keeps the highest map version', () => {
    const base = {
      mapVersion: 5,
      groups: new Map([
        ['g1', { epoch: 1, lsn: 10 }],
        ['g2', { epoch: 1, lsn: 20 }],
      ]),
    }
    const next = advanceRouterSession(base, 3, 'g1', { epoch: 2, lsn: 15 })
    expect(next.mapVersion).toBe(5)
    expect(next.groups.get('g1')).toEqual({ epoch: 2, lsn: 15 })
    expect(next.groups.get('g2')).toEqual({ epoch: 1, lsn: 20 })
    // The base is not changed.
    expect(base.groups.get('g1')).toEqual({ epoch: 1, lsn: 10 })
    const older = advanceRouterSession(next, 9, 'g2', { epoch: 1, lsn: 4 })
    expect(older.groups.get('g2')).toEqual({ epoch: 1, lsn: 20 })
    expect(older.mapVersion).toBe(9)
    const fresh = advanceRouterSession(null, 1, 'g3', undefined)
    expect(fresh.groups.size).toBe(0)
    expect(laterPosition({ epoch: 1, lsn: 5 }, { epoch: 2, lsn: 5 })).toEqual({ epoch: 2, lsn: 5 })
  })
})
