/**
 * The ring on one leaderless member, its peer handler called directly (no port is opened):
 * the ring version on requests, learning and keeping a newer ring, the acceptor's answers, and
 * the membership service's refusals.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import { afterEach, describe, expect, it } from 'vitest'
import { planJoin, type RingState } from '@kvstore/core'
import type { PeerReply, PeerRequest, PeerRequestBody } from '@kvstore/protocol'
import { Sequencer, Store } from '@kvstore/storage'
import { clusterOf, parseConfig } from '../src/config.js'
import { LeaderlessEngine } from '../src/leaderless/engine.js'
import { PeerRoster } from '../src/membership/roster.js'

const members = ['n1', 'n2', 'n3']
  .map((id, i) => `${id}@http://127.0.0.1:${17_001 + i}@http://127.0.0.1:${17_101 + i}`)
  .join(',')

interface Harness {
  engine: LeaderlessEngine
  handle(from: string, ringVersion: number, body: PeerRequestBody): Promise<PeerReply>
  close(): Promise<void>
}

const dirs: string[] = []
const open: Harness[] = []
afterEach(async () => {
  await Promise.all(open.splice(0).map((h) => h.close()))
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })))
})

async function startEngine(dir?: string): Promise<Harness> {
  const where = dir ?? (await mkdtemp(join(tmpdir(), 'kv-ring-')))
  if (dir === undefined) dirs.push(where)
  const { config } = parseConfig(
    [
      '--id',
      'n1',
      '--mode',
      'leaderless',
      '--members',
      members,
      '--replicas',
      '3',
      '--data-dir',
      join(where, 'data'),
      '--log-level',
      'silent',
      '--unsafe-plaintext-peers',
      '--quorum-timeout-ms',
      '200',
    ],
    {},
  )
  const store = await Store.open({ dir: config.dataDir, nodeId: 'n1' })
  await store.setHardState({ epoch: 1 })
  const engine = new LeaderlessEngine({
    config,
    cluster: clusterOf(config),
    store,
    sequencer: new Sequencer(store, { now: Date.now }),
    logger: pino({ level: 'silent' }),
    clusterId: 'c',
    security: {
      tls: null,
      clusterId: 'c',
      selfId: 'n1',
      roster: new PeerRoster('n1', ['n1', 'n2', 'n3']),
      handshakeTimeoutMs: 1000,
      onRefused: () => {},
    },
  })
  const internals = engine as unknown as { handle(request: PeerRequest): Promise<PeerReply> }
  await engine.load()
  const harness: Harness = {
    engine,
    handle: (from, ringVersion, body) =>
      internals.handle({ clusterId: 'c', from, to: 'n1', ringVersion, body }),
    close: async () => {
      open.splice(open.indexOf(harness), 1)
      await engine.stop()
      await store.close()
    },
  }
  open.push(harness)
  return harness
}

/** A peer's write of `key`, as a 'store' carries it. */
function store(key: string): PeerRequestBody {
  return {
    kind: 'store',
    key: Buffer.from(key),
    hintFor: '',
    record: {
      vector: { 'n2.bb': 1 },
      siblings: [
        {
          dot: { node: 'n2.bb', counter: 1 },
          value: { value: Buffer.from('v'), hlc: { wallMs: Date.now(), logical: 0, node: 'n2' } },
        },
      ],
    },
  }
}

const n4 = { id: 'n4', clientUrl: 'http://127.0.0.1:17004', peerUrl: 'http://127.0.0.1:17104' }

function joined(ring: RingState): RingState {
  const plan = planJoin(ring, n4, 1)
  if ('refusal' in plan) throw new Error(plan.refusal.message)
  return plan.ring
}

describe('the ring on a leaderless member', () => {
  it('--members seeds ring version 1; data requests under an older ring are refused', async () => {
    const h = await startEngine()
    expect(h.engine.ringVersion).toBe(1)
    expect(h.engine.clusterView('c')).toMatchObject({ ringVersion: 1, handoffs: [] })
    await expect(h.handle('n2', 0, store('k'))).rejects.toMatchObject({
      code: 'KV_ERR_STALE_RING',
    })
    expect(h.engine.stats.staleRingRefusals).toBe(1)
    await expect(h.handle('n2', 1, store('k'))).resolves.toEqual({
      kind: 'storeAck',
      changed: true,
    })
    // Pings and ring messages are answered whatever the sender's ring.
    await expect(h.handle('n2', 0, { kind: 'ping' })).resolves.toMatchObject({ kind: 'pong' })
    const reply = await h.handle('n2', 0, { kind: 'ringFetch' })
    expect(reply).toMatchObject({ kind: 'ringReply', ring: { version: 1 } })
  })

  it('refuses data from an id its ring does not name, but lets it fetch the ring', async () => {
    const h = await startEngine()
    await expect(h.handle('n9', 1, { kind: 'fetch', key: Buffer.from('k') })).rejects.toMatchObject(
      { code: 'KV_ERR_CLUSTER_MISMATCH' },
    )
    await expect(h.handle('n9', 0, { kind: 'ringFetch' })).resolves.toMatchObject({
      kind: 'ringReply',
    })
  })

  it('adopts a newer committed ring, keeps it across a restart, and ignores an older one', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kv-ring-'))
    dirs.push(dir)
    const h = await startEngine(dir)
    const ring = h.engine.topology.ring as RingState
    const next = joined(ring)
    await h.handle('n2', 1, { kind: 'ringCommit', ring: next })
    expect(h.engine.ringVersion).toBe(2)
    expect(h.engine.memberIds).toEqual(['n1', 'n2', 'n3', 'n4'])
    const view = h.engine.clusterView('c')
    expect(view.members.find((m) => m.id === 'n4')?.state).toBe('joining')
    expect(view.handoffs).toMatchObject([{ member: 'n4', kind: 'join', replacing: null }])
    expect(view.handoffs?.[0]?.rangesTotal).toBeGreaterThan(0)
    // n4 is a member now: its data requests are served.
    await expect(h.handle('n4', 2, store('k'))).resolves.toEqual({
      kind: 'storeAck',
      changed: true,
    })
    await h.handle('n2', 1, { kind: 'ringCommit', ring })
    expect(h.engine.ringVersion).toBe(2)
    await h.close()
    const again = await startEngine(dir)
    expect(again.engine.ringVersion).toBe(2)
    expect(again.engine.topology.ring?.change).toMatchObject({ kind: 'join', member: 'n4' })
  })

  it('refuses a malformed ring', async () => {
    const h = await startEngine()
    const ring = h.engine.topology.ring as RingState
    const bad = { ...joined(ring), change: null }
    await expect(h.handle('n2', 1, { kind: 'ringCommit', ring: bad })).rejects.toMatchObject({
      code: 'KV_ERR_BAD_FRAME',
    })
    expect(h.engine.ringVersion).toBe(1)
  })

  it('as an acceptor, promises only higher ballots and keeps its promise across a restart', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kv-ring-'))
    dirs.push(dir)
    const h = await startEngine(dir)
    const next = joined(h.engine.topology.ring as RingState)
    const prepare = (round: number): PeerRequestBody => ({
      kind: 'ringPrepare',
      version: 2,
      ballot: { round, proposer: 'n2' },
    })
    expect(await h.handle('n2', 1, prepare(3))).toEqual({
      kind: 'acceptorReply',
      reply: { kind: 'promise', accepted: null },
    })
    expect(
      await h.handle('n2', 1, {
        kind: 'ringAccept',
        ballot: { round: 3, proposer: 'n2' },
        ring: next,
      }),
    ).toEqual({ kind: 'acceptorReply', reply: { kind: 'accepted' } })
    await h.close()
    const again = await startEngine(dir)
    expect(await again.handle('n3', 1, prepare(2))).toMatchObject({
      reply: { kind: 'rejected', promised: { round: 3 } },
    })
    const later = await again.handle('n3', 1, prepare(4))
    expect(later).toMatchObject({ reply: { kind: 'promise', accepted: { ring: { version: 2 } } } })
    // The acceptor's ring itself is unchanged until the ring is committed.
    expect(again.engine.ringVersion).toBe(1)
  })

  it('the membership service refuses an unknown id, a promotion, and a second change', async () => {
    const h = await startEngine()
    await expect(h.engine.membership.remove('n9')).rejects.toMatchObject({
      code: 'KV_ERR_NOT_A_MEMBER',
    })
    await expect(h.engine.membership.promote('n2')).rejects.toMatchObject({
      code: 'KV_ERR_INVALID_ARGUMENT',
    })
    await expect(h.engine.membership.remove('n2')).rejects.toMatchObject({
      code: 'KV_ERR_WOULD_LOSE_QUORUM',
    })
    await h.handle('n2', 1, {
      kind: 'ringCommit',
      ring: joined(h.engine.topology.ring as RingState),
    })
    await expect(h.engine.membership.remove('n3')).rejects.toMatchObject({
      code: 'KV_ERR_MEMBERSHIP_CHANGE_IN_PROGRESS',
    })
    expect(h.engine.membership.view()).toMatchObject({
      mode: 'leaderless',
      version: 2,
      changeInProgress: true,
      removed: [],
    })
  })
})
