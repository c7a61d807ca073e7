/**
 * The SDK's leaderless routing: the ring rebuilt from a cluster view, and the order in which a
 * key's request tries the nodes (its preference list first, members that look down last).
 */
import { HashRing, hash32 } from '@kvstore/core'
import { KvError } from '@kvstore/protocol/errors'
import {
  compareTimestamps,
  isLeaderlessView,
  quorumParam,
  ringOf,
  routeKey,
  type LeaderlessClusterView,
  type LeaderlessMember,
} from '../src/leaderless.js'

function member(id: string, up = true): LeaderlessMember {
  const n = Number(id.slice(1))
  return {
    id,
    clientUrl: `http://127.0.0.1:${7000 + n}`,
    peerUrl: `http://127.0.0.1:${7100 + n}`,
    up,
    share: 0.2,
    arcs: 64,
    hintBacklog: 0,
    lastAntiEntropyMs: null,
    antiEntropyKeysRepaired: 0,
  }
}

function view(members: LeaderlessMember[], replicas = 3, vnodes = 64): LeaderlessClusterView {
  return {
    mode: 'leaderless',
    clusterId: 'c1',
    self: 'n1',
    replicas,
    conflicts: 'siblings',
    defaultW: 'quorum',
    defaultR: 'quorum',
    vnodes,
    members,
    ring: [],
  }
}

const ids = ['n1', 'n2', 'n3', 'n4', 'n5']
const urlOf = (id: string) => member(id).clientUrl
const keys = Array.from({ length: 200 }, (_, i) => `user/${i}/profile`)

describe('leaderless routing', () => {
  it('sends a key first to its preference list, in order, then along the ring', () => {
    const v = view(ids.map((id) => member(id)))
    const ring = ringOf(v)
    const firsts = new Set<string>()
    for (const key of keys) {
      const preference = new HashRing(ids, 64).preferenceList(key, 3)
      const route = routeKey(ring, v, key)
      expect(route.slice(0, 3)).toEqual(preference.map(urlOf))
      // Every member is in the route exactly once, so the request can reach any node at last.
      expect([...route].sort()).toEqual(ids.map(urlOf).sort())
      firsts.add(route[0] as string)
    }
    // Keys spread over every member as the first replica (one node would mean no ring at all).
    expect(firsts.size).toBe(5)
  })

  it('follows the preference list hop by hop: the rest of the route is the ring walk', () => {
    const v = view(ids.map((id) => member(id)))
    for (const key of keys.slice(0, 20)) {
      expect(routeKey(ringOf(v), v, key)).toEqual([...new HashRing(ids, 64).walk(key)].map(urlOf))
    }
  })

  it('builds the same ring whatever order the view lists the members in', () => {
    const forward = view(ids.map((id) => member(id)))
    const backward = view([...ids].reverse().map((id) => member(id)))
    for (const key of keys) {
      expect(routeKey(ringOf(backward), backward, key)).toEqual(
        routeKey(ringOf(forward), forward, key),
      )
    }
  })

  it('uses the view’s vnodes and replicas', () => {
    const v = view(
      ids.map((id) => member(id)),
      2,
      8,
    )
    const ring = ringOf(v)
    expect(ring.vnodes).toBe(8)
    for (const key of keys.slice(0, 50)) {
      const preference = new HashRing(ids, 8).preferenceList(key, 2)
      expect(routeKey(ring, v, key).slice(0, 2)).toEqual(preference.map(urlOf))
    }
  })

  it('skips a member the view shows down, to the next one of the preference list', () => {
    for (const key of keys.slice(0, 50)) {
      const [first, second, third, ...rest] = [...new HashRing(ids, 64).walk(key)] as string[]
      const v = view(ids.map((id) => member(id, id !== first)))
      const route = routeKey(ringOf(v), v, key)
      // The live replicas of the key, then the live members past it, and the down one last.
      expect(route).toEqual([second, third, ...rest, first].map((id) => urlOf(id as string)))
    }
  })

  it('skips a member the client failed to reach, even when the view shows it up', () => {
    const v = view(ids.map((id) => member(id)))
    const ring = ringOf(v)
    for (const key of keys.slice(0, 50)) {
      const [first, second] = [...ring.walk(key)] as string[]
      const route = routeKey(ring, v, key, new Set([urlOf(first as string)]))
      expect(route[0]).toBe(urlOf(second as string))
      expect(route.at(-1)).toBe(urlOf(first as string))
      expect(route).toHaveLength(5)
    }
  })

  it('puts members past the preference list ahead of down replicas, so writes can go sloppy', () => {
    const key = keys[7] as string
    const walk = [...new HashRing(ids, 64).walk(key)]
    const down = new Set(walk.slice(0, 3))
    const v = view(ids.map((id) => member(id, !down.has(id))))
    const route = routeKey(ringOf(v), v, key)
    expect(route.slice(0, 2)).toEqual(walk.slice(3).map(urlOf))
    expect(route.slice(2)).toEqual(walk.slice(0, 3).map(urlOf))
  })

  it('hashes keys by their UTF-8 bytes, as the nodes do', () => {
    // A key with multi-byte characters lands where hash32 puts it, not where its UTF-16 would.
    const v = view(ids.map((id) => member(id)))
    const key = 'ünïcödé/ключ/鍵/🔑'
    expect(hash32(key)).not.toBe(hash32('unicode/key'))
    expect(routeKey(ringOf(v), v, key).slice(0, 3)).toEqual(
      new HashRing(ids, 64).preferenceList(key, 3).map(urlOf),
    )
  })

  it('recognises a leaderless view by its mode', () => {
    expect(isLeaderlessView(view([member('n1')]))).toBe(true)
    expect(isLeaderlessView({ mode: 'single-leader' })).toBe(false)
    expect(isLeaderlessView({ mode: 'standalone' })).toBe(false)
  })
})

describe('timestamps and quorum options', () => {
  it('orders timestamps by wall clock, then logical counter, then node, as numbers', () => {
    expect(compareTimestamps('9.0.n1', '10.0.n1')).toBeLessThan(0)
    expect(compareTimestamps('1700000000000.10.n1', '1700000000000.9.n2')).toBeGreaterThan(0)
    expect(compareTimestamps('5.1.n2', '5.1.n1')).toBeGreaterThan(0)
    expect(compareTimestamps('5.1.n1', '5.1.n1')).toBe(0)
    const sorted = ['10.0.n1', '9.5.n3', '10.0.n0', '9.10.n1'].sort(compareTimestamps)
    expect(sorted).toEqual(['9.5.n3', '9.10.n1', '10.0.n0', '10.0.n1'])
  })

  it('accepts w and r as a positive count, quorum or all, and refuses anything else', () => {
    expect(quorumParam('w', 2)).toBe('2')
    expect(quorumParam('r', 'quorum')).toBe('quorum')
    expect(quorumParam('r', 'all')).toBe('all')
    for (const bad of [0, -1, 1.5, Number.NaN, 'most' as 'all']) {
      const err = (() => {
        try {
          quorumParam('w', bad)
          return null
        } catch (e) {
          return e
        }
      })()
      expect(err).toBeInstanceOf(KvError)
      expect((err as KvError).code).toBe('KV_ERR_INVALID_ARGUMENT')
    }
  })
})
