/**
 * The dashboard's state (ui/state.ts): its histories stay within their limits, leadership
 * changes are recorded once each, the rollback record is summarised without keys or values;
 * and its routes on a real node (ui/routes.ts): the page and assets, the state, the stream's
 * snapshot and updates, and the limit on streams with its code.
 */
import { writeFile } from 'node:fs/promises'
import http from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { ClusterView } from '@kvstore/protocol'
import { DashboardState, rollbacksShownMax, type DashboardSource } from '../src/ui/state.js'
import { errorOf, startTestNode, type TestNode } from './helpers.js'

function view(epoch: number, leaderId: string | null, lagMs: number): ClusterView {
  const member = (id: string, role: 'leader' | 'follower', lag: number) => ({
    id,
    role,
    clientUrl: `https://${id}`,
    peerUrl: null,
    epoch,
    ackedLsn: 10,
    appliedLsn: 10,
    lagEntries: lag > 0 ? 5 : 0,
    lagMs: lag,
    lastContactMs: 0,
    connected: true,
  })
  return {
    mode: 'single-leader',
    clusterId: 'c',
    leaderId,
    leaderUrl: null,
    epoch,
    commitLsn: 10,
    self: 'n2',
    members: [
      member('n1', leaderId === 'n1' ? 'leader' : 'follower', 0),
      member('n2', leaderId === 'n2' ? 'leader' : 'follower', 0),
      member('n3', 'follower', lagMs),
    ],
  }
}

function fakeSource(state: { view: ClusterView; held: number; now: number }): DashboardSource {
  return {
    mode: 'single-leader',
    self: () => ({
      nodeId: 'n2',
      role: 'follower',
      epoch: state.view.epoch,
      appliedLsn: 10,
      commitLsn: 10,
      logStartLsn: 1,
      ready: true,
    }),
    view: () => state.view,
    rollbackHeld: () => state.held,
    rolledBackSinceStart: () => state.held,
    readRollbacks: async (after, limit) =>
      Array.from({ length: Math.max(0, Math.min(limit, state.held - after)) }, (_, i) => ({
        seq: after + i + 1,
        removedAt: new Date(0).toISOString(),
        epoch: 2,
        lsn: 100 + after + i,
        entryEpoch: 1,
        ops: 1,
      })),
    now: () => state.now,
  }
}

describe('DashboardState', () => {
  it('keeps at most historySamplesMax samples and leadershipChangesMax changes', () => {
    const s = { view: view(1, 'n1', 0), held: 0, now: 1000 }
    const state = new DashboardState(fakeSource(s), {
      sampleIntervalMs: 100,
      historySamplesMax: 10,
      leadershipChangesMax: 3,
    })
    for (let i = 0; i < 100; i++) {
      s.now += 100
      // A new epoch and leader every 10 samples: 10 changes, of which 3 are kept.
      s.view = view(1 + Math.floor(i / 10), i % 20 < 10 ? 'n1' : 'n2', i * 10)
      state.sample()
    }
    const snap = state.snapshot()
    expect(snap.history).toHaveLength(10)
    expect(snap.history.map((h) => h.atMs)).toEqual(
      Array.from({ length: 10 }, (_, i) => 1000 + 100 * (91 + i)),
    )
    expect(snap.history[9]?.values).toEqual({ n1: 0, n2: 0, n3: 990 })
    expect(snap.history[9]?.entries).toEqual({ n1: 0, n2: 0, n3: 5 })
    expect(snap.leadership.map((c) => [c.epoch, c.leaderId, c.previousEpoch])).toEqual([
      [8, 'n2', 7],
      [9, 'n1', 8],
      [10, 'n2', 9],
    ])
  })

  it('plots a member it never heard from only when it leads (the leader measures that lag)', () => {
    const unheard = (leaderId: string): ClusterView => {
      const v = view(2, leaderId, 0)
      const n1 = v.members[0] as ClusterView['members'][number]
      v.members[0] = { ...n1, epoch: null, lagMs: 5000, lagEntries: 10, connected: false }
      return v
    }
    const s = { view: unheard('n2'), held: 0, now: 0 }
    const state = new DashboardState(fakeSource(s), {
      sampleIntervalMs: 100,
      historySamplesMax: 10,
      leadershipChangesMax: 10,
    })
    expect(state.sample().sample.values.n1).toBe(5000)
    s.view = unheard('n3')
    expect(state.sample().sample.values.n1).toBeNull()
  })

  it('records a leader lost, then found, once each', () => {
    const s = { view: view(1, 'n1', 0), held: 0, now: 0 }
    const state = new DashboardState(fakeSource(s), {
      sampleIntervalMs: 100,
      historySamplesMax: 10,
      leadershipChangesMax: 10,
    })
    for (const [epoch, leader] of [
      [1, 'n1'],
      [1, 'n1'],
      [1, null],
      [2, null],
      [2, 'n2'],
      [2, 'n2'],
    ] as const) {
      s.view = view(epoch, leader, 0)
      state.sample()
    }
    expect(state.snapshot().leadership.map((c) => [c.epoch, c.leaderId])).toEqual([
      [1, 'n1'],
      [1, null],
      [2, null],
      [2, 'n2'],
    ])
  })

  it('shows the latest rollback records, counted but without keys or values', async () => {
    const s = { view: view(1, 'n1', 0), held: 250, now: 0 }
    const state = new DashboardState(fakeSource(s), {
      sampleIntervalMs: 100,
      historySamplesMax: 10,
      leadershipChangesMax: 10,
    })
    state.sample()
    await new Promise((resolve) => setTimeout(resolve, 10))
    const { rollbacks } = state.sample()
    expect(rollbacks.held).toBe(250)
    expect(rollbacks.latest).toHaveLength(rollbacksShownMax)
    expect(rollbacks.latest.at(-1)).toEqual({
      seq: 250,
      removedAt: new Date(0).toISOString(),
      epoch: 2,
      lsn: 349,
      entryEpoch: 1,
      ops: 1,
    })
    expect(Object.keys(rollbacks.latest[0] ?? {})).not.toContain('key')
  })
})

/** Opens GET /ui/v1/stream; resolves with the response once its head arrives. */
function openStream(url: string): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    http.get(`${url}/ui/v1/stream`, resolve).on('error', reject)
  })
}

/** The next whole SSE event of a stream. */
function nextEvent(res: http.IncomingMessage): Promise<{ event: string; data: unknown }> {
  return new Promise((resolve) => {
    let buffer = ''
    const onData = (chunk: Buffer): void => {
      buffer += chunk.toString('utf8')
      for (const frame of buffer.split('\n\n').slice(0, -1)) {
        const event = /^event: (.*)$/m.exec(frame)?.[1]
        const data = /^data: (.*)$/m.exec(frame)?.[1]
        if (event !== undefined && data !== undefined) {
          res.off('data', onData)
          resolve({ event, data: JSON.parse(data) })
          return
        }
      }
    }
    res.on('data', onData)
  })
}

describe('the dashboard routes on a node', () => {
  let t: TestNode
  beforeAll(async () => {
    t = await startTestNode(['--ui-sample-interval-ms', '50', '--ui-streams-max', '2'])
  })
  afterAll(async () => {
    await t.stop()
  })

  it('serves the page and the bundled uPlot, and nothing else under /ui/assets', async () => {
    const page = await fetch(`${t.url}/ui`)
    expect(page.status).toBe(200)
    expect(page.headers.get('content-security-policy')).toContain("script-src 'self'")
    expect(await page.text()).toContain('<script src="/ui/assets/app.js">')
    const uplot = await fetch(`${t.url}/ui/assets/uPlot.min.css`)
    expect(uplot.status).toBe(200)
    expect(uplot.headers.get('content-type')).toMatch(/^text\/css/)
    await uplot.text()
    for (const name of ['index.html', 'nope.js', '..%2F..%2Fpackage.json']) {
      const res = await fetch(`${t.url}/ui/assets/${name}`)
      expect([name, res.status, errorOf(await res.text()).code]).toEqual([
        name,
        404,
        'KV_ERR_ROUTE_NOT_FOUND',
      ])
    }
  })

  it('streams a snapshot, then updates, to at most uiStreamsMax pages', async () => {
    const a = await openStream(t.url)
    expect(a.headers['content-type']).toMatch(/^text\/event-stream/)
    const snapshot = (await nextEvent(a)) as {
      event: string
      data: { mode: string; history: unknown[]; view: { leaderId: string } }
    }
    expect(snapshot.event).toBe('snapshot')
    expect(snapshot.data.mode).toBe('standalone')
    expect(snapshot.data.history.length).toBeGreaterThan(0)
    const update = (await nextEvent(a)) as { event: string; data: { sample: { atMs: number } } }
    expect(update.event).toBe('update')
    expect(update.data.sample.atMs).toBeGreaterThan(0)

    const b = await openStream(t.url)
    const third = await fetch(`${t.url}/ui/v1/stream`)
    expect(third.status).toBe(503)
    expect(third.headers.get('retry-after')).toBe('1')
    expect(errorOf(await third.text())).toMatchObject({
      code: 'KV_ERR_DASHBOARD_STREAMS_TOO_MANY',
      uiStreamsMax: 2,
    })
    // A page that closes frees its place.
    a.destroy()
    b.destroy()
    await vi.waitFor(
      async () => {
        const res = await openStream(t.url)
        res.destroy()
        expect(res.statusCode).toBe(200)
      },
      { timeout: 2000, interval: 50 },
    )
  })
})

describe('the dashboard with auth on', () => {
  let t: TestNode
  const login = async (user: string, password: string): Promise<string> => {
    const res = await fetch(`${t.url}/v1/auth/token`, {
      method: 'POST',
      body: JSON.stringify({ user, password }),
    })
    expect(res.status).toBe(200)
    return ((await res.json()) as { token: string }).token
  }
  beforeAll(async () => {
    const file = join(tmpdir(), `kv-ui-root-${process.pid}.password`)
    await writeFile(file, 'root-password-1\n', { mode: 0o600 })
    t = await startTestNode(['--auth', 'true', '--root-password-file', file])
    const root = { authorization: `Bearer ${await login('root', 'root-password-1')}` }
    for (const [path, body] of [
      ['/admin/v1/roles', { name: 'ro' }],
      ['/admin/v1/roles/ro/grant', { access: 'read', prefix: '' }],
      ['/admin/v1/roles', { name: 'watcher' }],
      ['/admin/v1/roles/watcher/grant', { access: 'monitor' }],
      ['/admin/v1/users', { name: 'ann', password: 'ann-password', roles: ['ro'] }],
      ['/admin/v1/users', { name: 'mo', password: 'mo-password', roles: ['watcher'] }],
    ] as const) {
      const res = await fetch(`${t.url}${path}`, {
        method: 'POST',
        body: JSON.stringify(body),
        headers: root,
      })
      expect([path, res.status < 300]).toEqual([path, true])
      await res.text()
    }
  })
  afterAll(async () => {
    await t.stop()
  })

  it('serves the page to anyone, and its data to the monitor role only', async () => {
    expect((await fetch(`${t.url}/ui`)).status).toBe(200)
    expect((await fetch(`${t.url}/ui/assets/app.js`)).status).toBe(200)
    const reader = { authorization: `Bearer ${await login('ann', 'ann-password')}` }
    const monitor = { authorization: `Bearer ${await login('mo', 'mo-password')}` }
    for (const path of ['/ui/v1/state', '/ui/v1/stream']) {
      const nobody = await fetch(`${t.url}${path}`)
      expect([path, nobody.status, errorOf(await nobody.text()).code]).toEqual([
        path,
        401,
        'KV_ERR_UNAUTHENTICATED',
      ])
      const denied = await fetch(`${t.url}${path}`, { headers: reader })
      expect([path, denied.status, errorOf(await denied.text()).code]).toEqual([
        path,
        403,
        'KV_ERR_PERMISSION_DENIED',
      ])
    }
    const state = await fetch(`${t.url}/ui/v1/state`, { headers: monitor })
    expect(state.status).toBe(200)
    expect(((await state.json()) as { mode: string }).mode).toBe('standalone')
    const controller = new AbortController()
    const stream = await fetch(`${t.url}/ui/v1/stream`, {
      headers: monitor,
      signal: controller.signal,
    })
    expect(stream.status).toBe(200)
    controller.abort()
  })
})
