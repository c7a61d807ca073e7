/**
 * The SDK's session against a small HTTP/2 server standing in for a kv-router in front of
 * several groups (router tokens, `r1.`) or for a node (node tokens, `s1.`). The server holds
 * every answer until the test lets it go, so answers to concurrent requests reach the client in
 * each possible order: the session must come out the same, with every group's position.
 */
import { createServer, type Http2Server, type IncomingHttpHeaders } from 'node:http2'
import type { AddressInfo } from 'node:net'
import {
  decodeRouterSession,
  decodeSession,
  encodeRouterSession,
  encodeSession,
  type RouterSession,
  type SessionPosition,
} from '@kvstore/protocol'
import { KvClient, KvError } from '../src/index.js'
import { SessionState } from '../src/session.js'

/** How the fake answers one request: the token it returns, from the request's. */
type Answerer = (method: string, key: string, sent: string | undefined) => string | null

interface Held {
  method: string
  key: string
  /** The kv-session header the request carried. */
  sent: string | undefined
  release(): void
}

let server: Http2Server
let url: string
let answerer: Answerer = () => null
/** Requests for keys, held until released, in arrival order. */
let held: Held[] = []
/** kv-session of every key request, in arrival order. */
let sentTokens: (string | undefined)[] = []

function clusterView() {
  return {
    mode: 'single-leader',
    clusterId: 'c1',
    leaderId: 'r1',
    leaderUrl: url,
    epoch: 0,
    commitLsn: 0,
    self: 'r1',
    writable: true,
    members: [
      {
        id: 'r1',
        role: 'leader',
        clientUrl: url,
        peerUrl: null,
        epoch: 0,
        ackedLsn: 0,
        appliedLsn: 0,
        lagEntries: 0,
        lagMs: 0,
        lastContactMs: 0,
        connected: true,
      },
    ],
  }
}

function headerText(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name]
  return Array.isArray(value) ? value[0] : value
}

beforeAll(async () => {
  server = createServer((req, res) => {
    void (async () => {
      for await (const _ of req) void _
      const path = req.url ?? ''
      if (path === '/v1/cluster') {
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(JSON.stringify(clusterView()))
        return
      }
      const key = decodeURIComponent(path.replace(/^\/v1\/kv\//, '').replace(/\?.*$/, ''))
      const sent = headerText(req.headers, 'kv-session')
      sentTokens.push(sent)
      await new Promise<void>((release) =>
        held.push({ method: req.method ?? '', key, sent, release }),
      )
      const token = answerer(req.method ?? '', key, sent)
      const headers: Record<string, string> = token === null ? {} : { 'kv-session': token }
      if (req.method === 'PUT') {
        res.writeHead(200, { ...headers, 'content-type': 'application/json' })
        res.end(JSON.stringify({ key, version: 1, lsn: 1, session: token ?? '' }))
      } else {
        res.writeHead(200, { ...headers, etag: '"1"', 'content-type': 'application/octet-stream' })
        res.end(`value of ${key}`)
      }
    })()
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})

afterAll(async () => {
  await new Promise((resolve) => server.close(resolve))
})

beforeEach(() => {
  held = []
  sentTokens = []
  answerer = () => null
})

async function withClient<T>(fn: (client: KvClient) => Promise<T>): Promise<T> {
  const client = new KvClient({ url, retryForMs: 2000, attempts: 1 })
  try {
    return await fn(client)
  } finally {
    await client.close()
  }
}

async function heldCount(n: number): Promise<void> {
  for (let i = 0; held.length < n; i++) {
    if (i > 1000)
      throw new Error(
        `only ${held.length} of ${n} requests arrived: ${held.map((h) => h.method + ' ' + h.key).join(', ')}`,
      )
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
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

const routerToken = (mapVersion: number, groups: Record<string, [number, number]>) =>
  encodeRouterSession({
    mapVersion,
    groups: new Map(Object.entries(groups).map(([g, [epoch, lsn]]) => [g, { epoch, lsn }])),
  })

function positions(token: string | null): { mapVersion: number; groups: object } {
  expect(token).toMatch(/^r1\./)
  const s = decodeRouterSession(token as string)
  return { mapVersion: s.mapVersion, groups: Object.fromEntries([...s.groups].sort()) }
}

/** A key `<group>/<n>` lives in `<group>`; each request moves it to a position of its own. */
const groupOf = (key: string) => key.split('/')[0] as string

/**
 * The fake router: a read answers with the token it was sent, advanced in the key's group (as
 * the router does); a write carries no token, so it answers with the key's group alone.
 */
function routerAnswers(moves: Record<string, { position: SessionPosition; mapVersion: number }>) {
  answerer = (method, key, sent) => {
    const move = moves[key] as { position: SessionPosition; mapVersion: number }
    const base: RouterSession =
      sent === undefined || method === 'PUT'
        ? { mapVersion: 0, groups: new Map() }
        : decodeRouterSession(sent)
    const groups = new Map(base.groups)
    groups.set(groupOf(key), move.position)
    return encodeRouterSession({ mapVersion: Math.max(base.mapVersion, move.mapVersion), groups })
  }
}

describe('a session through a router in front of several groups (r1 tokens)', () => {
  it('keeps every group position whatever order concurrent answers arrive in', async () => {
    const base = routerToken(1, { g1: [1, 5], g2: [1, 5], g3: [1, 5] })
    routerAnswers({
      'g1/a': { position: { epoch: 1, lsn: 11 }, mapVersion: 1 },
      'g2/a': { position: { epoch: 2, lsn: 12 }, mapVersion: 2 },
      'g3/a': { position: { epoch: 1, lsn: 13 }, mapVersion: 1 },
      'g4/a': { position: { epoch: 1, lsn: 14 }, mapVersion: 1 },
    })
    const expected = {
      mapVersion: 2,
      groups: {
        g1: { epoch: 1, lsn: 11 },
        g2: { epoch: 2, lsn: 12 },
        g3: { epoch: 1, lsn: 13 },
        g4: { epoch: 1, lsn: 14 },
      },
    }
    const keys = ['g1/a', 'g2/a', 'g3/a', 'g4/a']
    for (const order of permutations(keys)) {
      held = []
      sentTokens = []
      await withClient(async (client) => {
        client.useSession(base)
        const requests = new Map<string, Promise<unknown>>()
        // The write first: undici sends a write only once nothing else is in flight on the
        // connection (it could not retry it), while reads go beside it.
        requests.set('g4/a', client.put('g4/a', 'x'))
        await heldCount(1)
        for (const key of keys.slice(0, 3)) requests.set(key, client.get(key))
        await heldCount(keys.length)
        // Every read carried the session as it was; the write carries none.
        for (const h of held) expect(h.sent).toBe(h.method === 'PUT' ? undefined : base)
        // Answers arrive one at a time, in this order.
        for (const key of order) {
          ;(held.find((h) => h.key === key) as Held).release()
          await requests.get(key)
        }
        expect(positions(client.session)).toEqual(expected)
        // The next read sends the whole session.
        const next = client.get('g1/a')
        await heldCount(keys.length + 1)
        ;(held[keys.length] as Held).release()
        await next
        expect(positions(sentTokens[keys.length] as string)).toEqual(expected)
      })
    }
  })

  it('never goes back: an older answer arriving last leaves a group where it was', async () => {
    await withClient(async (client) => {
      answerer = () => routerToken(3, { g1: [1, 50] })
      const first = client.get('g1/a')
      await heldCount(1)
      ;(held[0] as Held).release()
      await first
      // An answer older in g1 (and in the map), newer in g2.
      answerer = () => routerToken(2, { g1: [1, 20], g2: [1, 7] })
      const second = client.get('g2/a')
      await heldCount(2)
      ;(held[1] as Held).release()
      await second
      expect(positions(client.session)).toEqual({
        mapVersion: 3,
        groups: { g1: { epoch: 1, lsn: 50 }, g2: { epoch: 1, lsn: 7 } },
      })
    })
  })

  it('merges a token given with useSession, and refuses a malformed one leaving the session as it was', async () => {
    await withClient(async (client) => {
      client.useSession(routerToken(1, { g1: [1, 9], g2: [1, 1] }))
      client.useSession(routerToken(4, { g2: [1, 6], g3: [2, 2] }))
      const merged = {
        mapVersion: 4,
        groups: { g1: { epoch: 1, lsn: 9 }, g2: { epoch: 1, lsn: 6 }, g3: { epoch: 2, lsn: 2 } },
      }
      expect(positions(client.session)).toEqual(merged)
      for (const bad of ['r1.***', `r1.${Buffer.from('[1,[["g 1",1,1]]]').toString('base64url')}`])
        expect(() => client.useSession(bad)).toThrow(
          expect.objectContaining({ code: 'KV_ERR_INVALID_SESSION' }) as Error,
        )
      // A node token names no group: it cannot join a router session.
      let caught: unknown
      try {
        client.useSession(encodeSession({ epoch: 9, lsn: 99 }))
      } catch (err) {
        caught = err
      }
      expect(caught).toBeInstanceOf(KvError)
      expect((caught as KvError).code).toBe('KV_ERR_INVALID_SESSION')
      expect(positions(client.session)).toEqual(merged)
    })
  })

  it('ignores an answer whose token it cannot read, and one of the other kind', async () => {
    await withClient(async (client) => {
      const token = routerToken(1, { g1: [1, 9] })
      client.useSession(token)
      for (const answer of ['r1.***', encodeSession({ epoch: 1, lsn: 500 })]) {
        answerer = () => answer
        const read = client.get('g1/a')
        await heldCount(held.length + 1)
        ;(held[held.length - 1] as Held).release()
        await read
        expect(client.session).toBe(token)
      }
    })
  })
})

describe('a session with a node (s1 tokens), as before', () => {
  it('keeps the latest position whatever order concurrent answers arrive in, and sends it', async () => {
    const lsns = [30, 10, 20]
    const keys = lsns.map((lsn) => `k/${lsn}`)
    answerer = (_method, key) => encodeSession({ epoch: 2, lsn: Number(key.split('/')[1]) })
    for (const order of permutations(keys)) {
      held = []
      sentTokens = []
      await withClient(async (client) => {
        client.useSession(encodeSession({ epoch: 1, lsn: 5 }))
        const requests = new Map(keys.map((key) => [key, client.get(key)] as const))
        await heldCount(keys.length)
        for (const h of held) expect(h.sent).toBe('s1.1.5')
        for (const key of order) {
          ;(held.find((h) => h.key === key) as Held).release()
          await requests.get(key)
        }
        expect(client.session).toBe(encodeSession({ epoch: 2, lsn: 30 }))
        const next = client.get('k/1')
        await heldCount(keys.length + 1)
        ;(held[keys.length] as Held).release()
        await next
        expect(sentTokens[keys.length]).toBe(encodeSession({ epoch: 2, lsn: 30 }))
      })
    }
  })

  it('keeps the later of two by LSN, then epoch, through useSession', async () => {
    await withClient(async (client) => {
      expect(client.session).toBeNull()
      client.useSession(' s1.2.a ')
      expect(client.session).toBe('s1.2.a')
      client.useSession('s1.5.3')
      expect(client.session).toBe('s1.2.a')
      client.useSession('s1.3.a')
      expect(client.session).toBe('s1.3.a')
      expect(() => client.useSession('s1.x')).toThrow(
        expect.objectContaining({ code: 'KV_ERR_INVALID_SESSION' }) as Error,
      )
      expect(decodeSession(client.session as string)).toEqual({ epoch: 3, lsn: 10 })
    })
  })

  it('gives way to a router token (a router given more groups), which keeps its positions', async () => {
    await withClient(async (client) => {
      client.useSession('s1.1.9')
      const token = routerToken(1, { g1: [1, 9] })
      client.useSession(token)
      expect(client.session).toBe(token)
    })
  })
})

describe('SessionState', () => {
  it('holds nothing, then one kind', () => {
    const state = new SessionState()
    expect(state.token).toBeNull()
    expect(state.kind).toBeNull()
    expect(state.add('s1.1.1')).toBe(true)
    expect(state.kind).toBe('node')
    expect(state.add(routerToken(1, {}))).toBe(true)
    expect(state.kind).toBe('router')
    expect(state.add('s1.1.2')).toBe(false)
    expect(state.token).toBe(routerToken(1, {}))
  })
})
