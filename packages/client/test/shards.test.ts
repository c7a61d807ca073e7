/**
 * The SDK's shard calls against small HTTP/2 servers standing in for the members of two
 * single-leader groups (the node's routes live in another package): the shard map merged from
 * every group's claims, a move sent to the source group's leader (following NOT_LEADER and
 * WRONG_SHARD), waited for and aborted; writes retried while their slot is fenced
 * (KV_ERR_SLOT_MOVING) and the shard refusals reported; and the rebalance plan.
 */
import { createServer, type Http2Server } from 'node:http2'
import type { AddressInfo } from 'node:net'
import {
  formatSlotRanges,
  parseSlotRanges,
  shardMapOfFile,
  slotCount,
  type GroupShardView,
  type MovePhase,
  type ShardMap,
  type ShardMove,
} from '@kvstore/protocol'
import { KvClient, KvError, planRebalance, slotsText } from '../src/index.js'
import { isRouterShardView, ownersOf, slotsPerGroup } from '../src/shards.js'

type Answer = { status: number; body: unknown; headers?: Record<string, string> }

interface FakeNode {
  id: string
  group: string
  url: string
  server: Http2Server
  calls: string[]
  /** Answers to POST and PUT calls, one per call; the last repeats. */
  answers: Answer[]
}

const nodes: FakeNode[] = []
const leaders: Record<string, string> = { g1: 'a1', g2: 'b1' }
/** What each group claims, and the move out of it. */
let claims: Record<string, string> = {}
let moves: Record<string, ShardMove | null> = {}
let history: Record<string, ShardMove[]> = {}

function node(id: string): FakeNode {
  return nodes.find((n) => n.id === id) as FakeNode
}

function directoryFile(slots: Record<string, string>) {
  return {
    groups: ['g1', 'g2'].map((g) => ({
      id: g,
      members: nodes.filter((n) => n.group === g).map((n) => ({ id: n.id, url: n.url })),
      slots: slots[g] ?? '',
    })),
  }
}

function move(id: string, phase: MovePhase, slots = '0-99', target = 'g2'): ShardMove {
  return {
    id,
    slots: parseSlotRanges(slots),
    target,
    phase,
    fenceLsn: 0,
    version: 2,
    startedAtMs: 1,
    updatedAtMs: phase === 'copying' ? 1 : 2,
    targetLsn: 0,
    error: phase === 'aborted' ? 'target unreachable' : '',
  }
}

function shardView(n: FakeNode): GroupShardView {
  // Each group's own claims are at version 2 when they differ from the start; its view of the
  // other group is the starting file's (stale on purpose).
  const start = shardMapOfFile(directoryFile({ g1: '0-2047', g2: '2048-4095' }))
  const own = parseSlotRanges(claims[n.group] ?? '').map((r) => ({
    ...r,
    group: n.group,
    version: 2,
    sinceLsn: 0,
  }))
  return {
    group: n.group,
    appliedLsn: 10,
    claims: own,
    fenced: '',
    map: start,
    move: moves[n.group] ?? null,
    history: history[n.group] ?? [],
    imports: [],
  }
}

function error(
  status: number,
  code: string,
  details: Record<string, unknown> = {},
  headers?: Record<string, string>,
): Answer {
  return {
    status,
    body: { error: { code, message: `${code} (fake)`, ...details } },
    ...(headers ? { headers } : {}),
  }
}

function notLeader(group: string): Answer {
  const leader = node(leaders[group] as string)
  return error(421, 'KV_ERR_NOT_LEADER', { leaderId: leader.id, leaderUrl: leader.url })
}

function clusterView(n: FakeNode) {
  const groupNodes = nodes.filter((m) => m.group === n.group)
  const leader = node(leaders[n.group] as string)
  return {
    mode: 'single-leader',
    clusterId: 'c1',
    leaderId: leader.id,
    leaderUrl: leader.url,
    epoch: 1,
    commitLsn: 10,
    self: n.id,
    writable: n.id === leader.id,
    members: groupNodes.map((m) => ({
      id: m.id,
      role: m.id === leader.id ? 'leader' : 'follower',
      clientUrl: m.url,
      peerUrl: null,
      epoch: 1,
      ackedLsn: 10,
      appliedLsn: 10,
      lagEntries: 0,
      lagMs: 0,
      lastContactMs: 0,
      connected: true,
    })),
  }
}

async function startNode(id: string, group: string): Promise<void> {
  const n: FakeNode = {
    id,
    group,
    url: '',
    server: null as unknown as Http2Server,
    calls: [],
    answers: [],
  }
  n.server = createServer((req, res) => {
    void (async () => {
      for await (const _ of req) void _
      let answer: Answer
      if (req.url === '/v1/cluster') answer = { status: 200, body: clusterView(n) }
      else if (req.url === '/v1/shards') answer = { status: 200, body: shardView(n) }
      else if (req.method === 'POST' || req.method === 'PUT') {
        n.calls.push(`${req.method} ${req.url}`)
        answer =
          n.answers.length > 1
            ? (n.answers.shift() as Answer)
            : (n.answers[0] ?? error(404, 'KV_ERR_ROUTE_NOT_FOUND'))
      } else answer = error(404, 'KV_ERR_ROUTE_NOT_FOUND')
      res.writeHead(answer.status, { 'content-type': 'application/json', ...answer.headers })
      res.end(JSON.stringify(answer.body))
    })()
  })
  await new Promise<void>((resolve) => n.server.listen(0, '127.0.0.1', resolve))
  n.url = `http://127.0.0.1:${(n.server.address() as AddressInfo).port}`
  nodes.push(n)
}

beforeAll(async () => {
  for (const id of ['a1', 'a2']) await startNode(id, 'g1')
  for (const id of ['b1', 'b2']) await startNode(id, 'g2')
})

afterAll(async () => {
  for (const n of nodes) await new Promise((resolve) => n.server.close(resolve))
})

beforeEach(() => {
  claims = { g1: '0-2047', g2: '2048-4095' }
  moves = {}
  history = {}
  for (const n of nodes) {
    n.calls = []
    n.answers = n.id === leaders[n.group] ? [] : [notLeader(n.group)]
  }
})

async function withClient<T>(seed: string, fn: (client: KvClient) => Promise<T>): Promise<T> {
  const client = new KvClient({ url: node(seed).url, retryForMs: 2000 })
  try {
    return await fn(client)
  } finally {
    await client.close()
  }
}

describe('the shard map', () => {
  it('is one group view, or every group of the directory merged', async () => {
    // g2 took 0-99 from g1 (version 2); g1's view of g2 still is the starting file's.
    claims = { g1: '100-2047', g2: '0-99,2048-4095' }
    const view = await withClient('a2', (c) => c.shards())
    if (isRouterShardView(view)) throw new Error('a member answered as a router')
    expect(view.group).toBe('g1')
    expect(view.map.groups.map((g) => g.id)).toEqual(['g1', 'g2'])
    const overview = await withClient('a2', (c) => c.shardOverview())
    expect(overview.unreachable).toEqual([])
    expect(overview.views.map((v) => v.group)).toEqual(['g1', 'g2'])
    expect(overview.map.version).toBe(2)
    expect(overview.map.slots.map((c) => [c.first, c.last, c.group, c.version])).toEqual([
      [0, 99, 'g2', 2],
      [100, 2047, 'g1', 2],
      [2048, 4095, 'g2', 2],
    ])
    expect(Object.fromEntries(slotsPerGroup(overview.map))).toEqual({ g1: 1948, g2: 2148 })
  })

  it('lists the groups that did not answer, and keeps what the others know of their slots', async () => {
    const directory = shardMapOfFile(directoryFile({ g1: '0-2047', g2: '2048-4095' }))
    const withDead: ShardMap = {
      ...directory,
      groups: [
        ...directory.groups,
        { id: 'g3', members: [{ id: 'c1', url: 'http://127.0.0.1:1' }] },
      ],
    }
    const overview = await withClient('b1', (c) => c.shardOverview({ directory: withDead }))
    expect(overview.unreachable.map((u) => [u.group, u.code])).toEqual([
      ['g3', 'KV_ERR_UNAVAILABLE'],
    ])
    expect(overview.map.slots.map((c) => c.group)).toEqual(['g1', 'g2'])
  })
})

describe('moveSlots', () => {
  it("follows the group's leader hint", async () => {
    node('a1').answers = [{ status: 202, body: { move: move('m1', 'copying') } }]
    const started = await withClient('a2', (c) => c.moveSlots({ slots: '0-99', to: 'g2' }))
    expect(started.move.id).toBe('m1')
    expect(started.url).toBe(node('a1').url)
    expect(node('a2').calls).toEqual(['POST /admin/v1/shards/moves'])
    expect(node('a1').calls).toEqual(['POST /admin/v1/shards/moves'])
  })

  it('follows WRONG_SHARD to the group that owns the slots', async () => {
    node('b2').answers = [
      error(421, 'KV_ERR_WRONG_SHARD', {
        slot: 0,
        group: 'g1',
        endpoints: [node('a2').url, node('a1').url],
        mapVersion: 1,
      }),
    ]
    node('a1').answers = [{ status: 202, body: { move: move('m2', 'copying') } }]
    const started = await withClient('b2', (c) =>
      c.moveSlots({ slots: [{ first: 0, last: 99 }], to: 'g2' }),
    )
    expect(started).toMatchObject({ group: 'g1', url: node('a1').url })
    expect(node('b2').calls).toHaveLength(1)
    // a2 (first of the endpoints) is a follower: it names a1.
    expect(node('a2').calls).toHaveLength(1)
    expect(node('a1').calls).toHaveLength(1)
  })

  it("goes straight to the source group's members with from", async () => {
    node('a1').answers = [{ status: 202, body: { move: move('m3', 'copying') } }]
    await withClient('b1', (c) => c.moveSlots({ slots: '0-99', to: 'g2', from: 'g1' }))
    expect(node('b1').calls).toEqual([])
    expect(node('a1').calls).toEqual(['POST /admin/v1/shards/moves'])
  })

  it('reports a refusal, and refuses slots that are not slots', async () => {
    node('a1').answers = [error(409, 'KV_ERR_SHARD_MOVE_IN_PROGRESS', { moveId: 'm0' })]
    const err = await withClient('a1', (c) => c.moveSlots({ slots: '0-99', to: 'g2' })).catch(
      (e: unknown) => e,
    )
    expect((err as KvError).code).toBe('KV_ERR_SHARD_MOVE_IN_PROGRESS')
    expect(node('a1').calls).toHaveLength(1)
    for (const bad of ['', '5000', '9-3', 'x']) expect(() => slotsText(bad)).toThrow(KvError)
    expect(slotsText('200, 0-99,100')).toBe('0-100,200')
  })

  it('aborts the move of a group', async () => {
    node('a1').answers = [{ status: 200, body: { move: move('m4', 'aborted') } }]
    const ended = await withClient('b1', (c) => c.abortMove({ group: 'g1' }))
    expect(ended.move.phase).toBe('aborted')
    expect(node('a1').calls).toEqual(['POST /admin/v1/shards/moves/abort'])
  })
})

describe('through a kv-router', () => {
  let router: Http2Server
  let routerUrl: string
  let routerCalls: string[] = []
  /** Member URLs the router's map names: the fakes', or ones out of reach. */
  let reachable = true

  beforeAll(async () => {
    router = createServer((req, res) => {
      void (async () => {
        for await (const _ of req) void _
        let answer: Answer
        if (req.url === '/v1/shards') {
          const file = directoryFile({ g1: '0-2047', g2: '2048-4095' })
          if (!reachable)
            for (const g of file.groups)
              g.members = g.members.map((m, i) => ({ ...m, url: `http://127.0.0.1:${i + 1}` }))
          answer = { status: 200, body: { ...shardMapOfFile(file), router: 'r1' } }
        } else {
          routerCalls.push(`${req.method} ${req.url}`)
          answer = { status: 202, body: { move: move('m9', 'copying') } }
        }
        res.writeHead(answer.status, { 'content-type': 'application/json' })
        res.end(JSON.stringify(answer.body))
      })()
    })
    await new Promise<void>((resolve) => router.listen(0, '127.0.0.1', resolve))
    routerUrl = `http://127.0.0.1:${(router.address() as AddressInfo).port}`
  })
  afterAll(async () => {
    await new Promise((resolve) => router.close(resolve))
  })
  beforeEach(() => {
    routerCalls = []
    reachable = true
  })

  async function viaRouter<T>(fn: (client: KvClient) => Promise<T>): Promise<T> {
    const client = new KvClient({ url: routerUrl, retryForMs: 500 })
    try {
      return await fn(client)
    } finally {
      await client.close()
    }
  }

  it("asks the groups the router's map names", async () => {
    claims = { g1: '100-2047', g2: '0-99,2048-4095' }
    const answer = await viaRouter((c) => c.shards())
    expect(isRouterShardView(answer)).toBe(true)
    const overview = await viaRouter((c) => c.shardOverview())
    expect(overview.router).toBeNull()
    expect(overview.views.map((v) => v.group)).toEqual(['g1', 'g2'])
    expect(overview.map.slots[0]).toMatchObject({ first: 0, last: 99, group: 'g2' })
  })

  it("keeps the router's map, and sends moves to the router, when the groups are out of reach", async () => {
    reachable = false
    const overview = await viaRouter((c) => c.shardOverview())
    expect(overview.router).toBe('r1')
    expect(overview.views).toEqual([])
    expect(overview.unreachable.map((u) => u.group)).toEqual(['g1', 'g2'])
    expect(overview.map.slots.map((c) => c.group)).toEqual(['g1', 'g2'])
    const started = await viaRouter(async (c) => {
      await c.shardOverview()
      return c.moveSlots({ slots: '0-99', to: 'g2', from: 'g1' })
    })
    expect(started).toMatchObject({ url: routerUrl, group: 'g1' })
    expect(routerCalls).toEqual(['POST /admin/v1/shards/moves'])
  })
})

describe('waitMove', () => {
  it("follows a move in its source group's view until it is done", async () => {
    moves.g1 = move('m5', 'copying')
    const seen: string[] = []
    const done = await withClient('b1', async (c) => {
      const waiting = c.waitMove('m5', {
        pollMs: 20,
        onProgress: (m) => {
          seen.push(m.phase)
          if (m.phase === 'copying') moves.g1 = move('m5', 'fenced')
          else if (m.phase === 'fenced') {
            moves.g1 = null
            history.g1 = [move('m5', 'done')]
          }
        },
      })
      return waiting
    })
    expect(done.phase).toBe('done')
    expect(seen).toEqual(['copying', 'fenced', 'done'])
  })

  it('gives up after its timeout with KV_ERR_SHARD_MOVE_IN_PROGRESS', async () => {
    moves.g2 = move('m6', 'fenced', '3000-3001', 'g1')
    const err = await withClient('a1', (c) =>
      c.waitMove('m6', { timeoutMs: 200, pollMs: 20 }),
    ).catch((e: unknown) => e)
    expect((err as KvError).code).toBe('KV_ERR_SHARD_MOVE_IN_PROGRESS')
    expect((err as KvError).details).toMatchObject({ moveId: 'm6', phase: 'fenced', group: 'g2' })
  })
})

describe('writes and shards', () => {
  it('retry a write while its slot is fenced for a move', async () => {
    node('a1').answers = [
      error(503, 'KV_ERR_SLOT_MOVING', { slot: 7, moveId: 'm7' }, { 'retry-after': '1' }),
      error(503, 'KV_ERR_SLOT_MOVING', { slot: 7, moveId: 'm7' }, { 'retry-after': '1' }),
      { status: 200, body: { key: 'k', version: 11, lsn: 11, session: '' } },
    ]
    const result = await withClient('a1', (c) => c.put('k', 'v'))
    expect(result.version).toBe(11)
    expect(node('a1').calls).toEqual(['PUT /v1/kv/k', 'PUT /v1/kv/k', 'PUT /v1/kv/k'])
  })

  it('report WRONG_SHARD and CROSS_SHARD at once', async () => {
    node('a1').answers = [
      error(421, 'KV_ERR_WRONG_SHARD', {
        slot: 3000,
        group: 'g2',
        endpoints: [node('b1').url],
        mapVersion: 1,
      }),
    ]
    const wrong = await withClient('a1', (c) => c.put('x', 'v')).catch((e: unknown) => e)
    expect((wrong as KvError).code).toBe('KV_ERR_WRONG_SHARD')
    expect((wrong as KvError).details).toMatchObject({ group: 'g2', slot: 3000 })
    node('a1').answers = [error(400, 'KV_ERR_CROSS_SHARD', { slots: '1,3000', groups: 'g1,g2' })]
    const cross = await withClient('a1', (c) =>
      c.batch([
        { op: 'put', key: 'a', value: '1' },
        { op: 'put', key: 'b', value: '2' },
      ]),
    ).catch((e: unknown) => e)
    expect((cross as KvError).code).toBe('KV_ERR_CROSS_SHARD')
    expect(node('a1').calls).toHaveLength(2)
  })
})

describe('planRebalance', () => {
  const mapOf = (slots: Record<string, string>): ShardMap => {
    const ids = Object.keys(slots)
    const file = {
      groups: ids.map((id) => ({
        id,
        members: [{ id: `${id}n1`, url: `https://127.0.0.1:${7000 + ids.indexOf(id)}` }],
        slots: slots[id] as string,
      })),
    }
    return shardMapOfFile(file)
  }

  /** The owner of every slot once the plan ran, checked move by move against the map. */
  function apply(map: ShardMap, moves: { from: string; to: string; slots: string }[]) {
    const owner = new Array<string>(slotCount)
    for (const c of map.slots) for (let s = c.first; s <= c.last; s++) owner[s] = c.group
    for (const m of moves) {
      for (const r of parseSlotRanges(m.slots))
        for (let s = r.first; s <= r.last; s++) {
          expect(owner[s]).toBe(m.from)
          owner[s] = m.to
        }
    }
    const counts: Record<string, number> = {}
    for (const g of owner) counts[g] = (counts[g] ?? 0) + 1
    return counts
  }

  it('gives a new group half of the only group', () => {
    const map = mapOf({ g1: '0-4095', g2: '' })
    const plan = planRebalance(map)
    expect(plan.moves).toEqual([{ from: 'g1', to: 'g2', slots: '2048-4095', count: 2048 }])
    expect(plan.targets).toEqual({ g1: 2048, g2: 2048 })
    expect(apply(map, plan.moves)).toEqual({ g1: 2048, g2: 2048 })
  })

  it('moves as few slots as it can when a third group joins', () => {
    const map = mapOf({ g1: '0-2047', g2: '2048-4095', g3: '' })
    const plan = planRebalance(map)
    expect(plan.moves).toEqual([
      { from: 'g1', to: 'g3', slots: '1366-2047', count: 682 },
      { from: 'g2', to: 'g3', slots: '3413-4095', count: 683 },
    ])
    expect(apply(map, plan.moves)).toEqual({ g1: 1366, g2: 1365, g3: 1365 })
  })

  it('does nothing to an even map, and spreads an uneven one', () => {
    expect(planRebalance(mapOf({ g1: '0-2047', g2: '2048-4095' })).moves).toEqual([])
    // Off by one is even: 4096 over 3 groups.
    expect(planRebalance(mapOf({ a: '0-1364', b: '1365-2730', c: '2731-4095' })).moves).toEqual([])
    const uneven = mapOf({ g1: '0-99', g2: '100-3999', g3: '4000-4095', g4: '' })
    const plan = planRebalance(uneven)
    expect(apply(uneven, plan.moves)).toEqual({ g1: 1024, g2: 1024, g3: 1024, g4: 1024 })
    // Only the group over its share gives.
    expect(new Set(plan.moves.map((m) => m.from))).toEqual(new Set(['g2']))
    expect(plan.moves.reduce((n, m) => n + m.count, 0)).toBe(2876)
  })

  it('empties groups left out, and splits moves past slotsPerMoveMax', () => {
    const map = mapOf({ g1: '0-2047', g2: '2048-4095' })
    const plan = planRebalance(map, { groups: ['g1'], slotsPerMoveMax: 1000 })
    expect(plan.moves.map((m) => [m.from, m.to, m.count])).toEqual([
      ['g2', 'g1', 1000],
      ['g2', 'g1', 1000],
      ['g2', 'g1', 48],
    ])
    expect(apply(map, plan.moves)).toEqual({ g1: 4096 })
    expect(plan.moves[0]?.slots).toBe('3096-4095')
  })

  it('is deterministic, and its moves are contiguous ranges of each source', () => {
    const map = mapOf({ g1: '0-1000', g2: '1001-4095', g3: '', g4: '', g5: '' })
    const a = planRebalance(map)
    expect(planRebalance(map)).toEqual(a)
    for (const m of a.moves) expect(m.slots).toMatch(/^\d+-\d+$/)
    // The extra slot stays with the group that holds the most.
    expect(apply(map, a.moves)).toEqual({ g1: 819, g2: 820, g3: 819, g4: 819, g5: 819 })
  })

  it('ownersOf splits slots by owner', () => {
    const map = mapOf({ g1: '0-99,200-299', g2: '100-199,300-4095' })
    expect(
      ownersOf(map, parseSlotRanges('50-250')).map((o) => [o.group, formatSlotRanges(o.slots)]),
    ).toEqual([
      ['g1', '50-99,200-250'],
      ['g2', '100-199'],
    ])
  })
})
