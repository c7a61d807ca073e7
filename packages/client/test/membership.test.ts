/**
 * The SDK's membership calls against small HTTP/2 servers that stand in for single-leader
 * nodes (the node's routes live in another package): each call goes to the leader, follows a
 * KV_ERR_NOT_LEADER hint (a leader asked to remove itself hands over and names the new one),
 * retries a change still in flight, and a promotion or replacement keeps asking while the
 * learner is behind, until its time is up.
 */
import { createServer, type Http2Server } from 'node:http2'
import type { AddressInfo } from 'node:net'
import type { Membership } from '@kvstore/protocol'
import { KvClient, KvError, type CatchUpProgress } from '../src/index.js'

/** What a fake node answers to a membership call: a status and a JSON body. */
type Answer = { status: number; body: unknown }

interface FakeNode {
  id: string
  url: string
  server: Http2Server
  /** Every membership call it got: `METHOD path`. */
  calls: string[]
  /** Answers to membership calls, one per call; the last repeats. */
  answers: Answer[]
}

const nodes: FakeNode[] = []
/** Which node the fake cluster's views name as the leader. */
let leaderId = 'n1'

function membership(self: string): Membership {
  return {
    mode: 'single-leader',
    self,
    version: 7,
    members: nodes.map((n) => ({
      id: n.id,
      clientUrl: n.url,
      peerUrl: n.url.replace('http:', 'https:'),
      role: 'voter',
    })),
    removed: [],
    changeInProgress: false,
    leaderId,
  }
}

function ok(change: string, member: string, self: string): Answer {
  return { status: 200, body: { change, member, membership: membership(self) } }
}

function error(status: number, code: string, details: Record<string, unknown> = {}): Answer {
  return { status, body: { error: { code, message: `${code} (fake)`, ...details } } }
}

function notLeader(): Answer {
  const leader = nodes.find((n) => n.id === leaderId) as FakeNode
  return error(421, 'KV_ERR_NOT_LEADER', { leaderId: leader.id, leaderUrl: leader.url })
}

function view(self: string) {
  const leader = nodes.find((n) => n.id === leaderId) as FakeNode
  return {
    mode: 'single-leader',
    clusterId: 'c1',
    leaderId,
    leaderUrl: leader.url,
    epoch: 1,
    commitLsn: 10,
    self,
    writable: self === leaderId,
    members: nodes.map((n) => ({
      id: n.id,
      role: n.id === leaderId ? 'leader' : 'follower',
      clientUrl: n.url,
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

async function startNode(id: string): Promise<void> {
  const node: FakeNode = {
    id,
    url: '',
    server: null as unknown as Http2Server,
    calls: [],
    answers: [],
  }
  node.server = createServer((req, res) => {
    void (async () => {
      for await (const _ of req) void _
      let answer: Answer
      if (req.url === '/v1/cluster') answer = { status: 200, body: view(id) }
      else if (req.url?.startsWith('/admin/v1/members')) {
        node.calls.push(`${req.method} ${req.url}`)
        answer =
          node.answers.length > 1
            ? (node.answers.shift() as Answer)
            : (node.answers[0] ?? { status: 404, body: {} })
      } else answer = { status: 404, body: {} }
      res.writeHead(answer.status, { 'content-type': 'application/json' })
      res.end(JSON.stringify(answer.body))
    })()
  })
  await new Promise<void>((resolve) => node.server.listen(0, '127.0.0.1', resolve))
  node.url = `http://127.0.0.1:${(node.server.address() as AddressInfo).port}`
  nodes.push(node)
}

function node(id: string): FakeNode {
  return nodes.find((n) => n.id === id) as FakeNode
}

beforeAll(async () => {
  for (const id of ['n1', 'n2', 'n3']) await startNode(id)
})

afterAll(async () => {
  for (const n of nodes) await new Promise((resolve) => n.server.close(resolve))
})

beforeEach(() => {
  leaderId = 'n1'
  for (const n of nodes) {
    n.calls = []
    n.answers = [notLeader()]
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

describe('membership calls', () => {
  it('go to the leader, whichever node the client was given', async () => {
    node('n1').answers = [ok('add', 'n4', 'n1')]
    const result = await withClient('n3', (c) =>
      c.addMember({ id: 'n4', clientUrl: 'https://h:7004', peerUrl: 'https://h:7104' }),
    )
    expect(result).toMatchObject({ change: 'add', member: 'n4' })
    expect(node('n1').calls).toEqual(['POST /admin/v1/members'])
    expect(node('n3').calls).toEqual([])
  })

  it('list the members as the leader sees them', async () => {
    node('n1').answers = [{ status: 200, body: membership('n1') }]
    const members = await withClient('n2', (c) => c.members())
    expect(members.self).toBe('n1')
    expect(members.members.map((m) => m.id)).toEqual(['n1', 'n2', 'n3'])
    expect(node('n1').calls).toEqual(['GET /admin/v1/members'])
  })

  it('follow the leader a removed leader handed over to, where the removal is done', async () => {
    // n1 leads; asked to remove itself it hands leadership to n2 and names it.
    node('n1').answers = [
      error(421, 'KV_ERR_NOT_LEADER', { leaderId: 'n2', leaderUrl: node('n2').url }),
    ]
    node('n2').answers = [ok('remove', 'n1', 'n2')]
    const result = await withClient('n1', async (c) => {
      await c.cluster()
      // From now on the views name n2.
      leaderId = 'n2'
      return c.removeMember('n1')
    })
    expect(result).toMatchObject({ change: 'remove', member: 'n1' })
    expect(node('n1').calls).toEqual(['DELETE /admin/v1/members/n1'])
    expect(node('n2').calls).toEqual(['DELETE /admin/v1/members/n1'])
  })

  it('retry a change while another is still in flight', async () => {
    node('n1').answers = [
      error(409, 'KV_ERR_MEMBERSHIP_CHANGE_IN_PROGRESS', { pendingLsn: 12 }),
      ok('remove', 'n3', 'n1'),
    ]
    const result = await withClient('n1', (c) => c.removeMember('n3'))
    expect(result.change).toBe('remove')
    expect(node('n1').calls).toHaveLength(2)
  })

  it('do not retry a refusal', async () => {
    node('n1').answers = [error(409, 'KV_ERR_WOULD_LOSE_QUORUM', { liveVoters: 1, majority: 2 })]
    const err = await withClient('n1', (c) => c.removeMember('n2')).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(KvError)
    expect((err as KvError).code).toBe('KV_ERR_WOULD_LOSE_QUORUM')
    expect((err as KvError).details).toMatchObject({ liveVoters: 1, majority: 2 })
    expect(node('n1').calls).toHaveLength(1)
  })

  it('promote once by default: a learner behind is refused at once', async () => {
    node('n1').answers = [
      error(409, 'KV_ERR_LEARNER_BEHIND', { member: 'n4', lagEntries: 5000, connected: true }),
    ]
    const err = await withClient('n1', (c) => c.promoteMember('n4')).catch((e: unknown) => e)
    expect((err as KvError).code).toBe('KV_ERR_LEARNER_BEHIND')
    expect(node('n1').calls).toEqual(['POST /admin/v1/members/n4/promote'])
  })

  it('promote with timeoutMs: ask again while the learner catches up', async () => {
    node('n1').answers = [
      error(409, 'KV_ERR_LEARNER_BEHIND', { member: 'n4', lagEntries: 5000, connected: false }),
      error(409, 'KV_ERR_LEARNER_BEHIND', { member: 'n4', lagEntries: 1200, connected: true }),
      ok('promote', 'n4', 'n1'),
    ]
    const progress: CatchUpProgress[] = []
    const result = await withClient('n1', (c) =>
      c.promoteMember('n4', { timeoutMs: 10_000, onProgress: (p) => progress.push(p) }),
    )
    expect(result.change).toBe('promote')
    expect(progress.map((p) => [p.member, p.lagEntries, p.connected])).toEqual([
      ['n4', 5000, false],
      ['n4', 1200, true],
    ])
    expect(node('n1').calls).toHaveLength(3)
  })

  it('replace: keep calling while the new member is behind, until it is done', async () => {
    node('n1').answers = [
      error(409, 'KV_ERR_LEARNER_BEHIND', { member: 'n5', lagEntries: 900, connected: true }),
      ok('replace', 'n5', 'n1'),
    ]
    const progress: CatchUpProgress[] = []
    const result = await withClient('n2', (c) =>
      c.replaceMember(
        'n3',
        { id: 'n5', clientUrl: 'https://h:7005', peerUrl: 'https://h:7105' },
        { onProgress: (p) => progress.push(p) },
      ),
    )
    expect(result).toMatchObject({ change: 'replace', member: 'n5' })
    expect(progress).toHaveLength(1)
    expect(progress[0]).toMatchObject({ member: 'n5', lagEntries: 900 })
    expect(node('n1').calls).toEqual([
      'POST /admin/v1/members/n3/replace',
      'POST /admin/v1/members/n3/replace',
    ])
  })

  it('replace: give up with KV_ERR_LEARNER_BEHIND once timeoutMs has passed', async () => {
    node('n1').answers = [
      error(409, 'KV_ERR_LEARNER_BEHIND', { member: 'n5', lagEntries: 900, connected: false }),
    ]
    const started = Date.now()
    const err = await withClient('n1', (c) =>
      c.replaceMember(
        'n3',
        { id: 'n5', clientUrl: 'https://h:7005', peerUrl: 'https://h:7105' },
        { timeoutMs: 1500 },
      ),
    ).catch((e: unknown) => e)
    expect((err as KvError).code).toBe('KV_ERR_LEARNER_BEHIND')
    expect(Date.now() - started).toBeGreaterThanOrEqual(1400)
    expect(Date.now() - started).toBeLessThan(5000)
    expect(node('n1').calls.length).toBeGreaterThanOrEqual(2)
  })
})
