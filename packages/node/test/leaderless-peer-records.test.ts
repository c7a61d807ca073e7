/**
 * The leaderless peer path refuses records it cannot have produced: counters of this member's
 * own actor beyond what it minted (forged version vectors made acknowledged writes vanish from
 * reads), and timestamps too far ahead. The engine runs in-process on a real store; its peer
 * server is never started, requests go straight to its handler.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import {
  counterMax,
  type PeerReply,
  type PeerRequest,
  type PeerRequestBody,
  type VersionedRecord,
} from '@kvstore/protocol'
import { Sequencer, Store } from '@kvstore/storage'
import { clusterOf, parseConfig } from '../src/config.js'
import { LeaderlessEngine, peerRecordProblem } from '../src/leaderless/engine.js'
import { PeerRoster } from '../src/membership/roster.js'

const members = ['n1', 'n2', 'n3']
  .map((id, i) => `${id}@http://127.0.0.1:${17_001 + i}@http://127.0.0.1:${17_101 + i}`)
  .join(',')

interface Harness {
  engine: LeaderlessEngine
  actor: string
  handle(from: string, body: PeerRequestBody): Promise<PeerReply>
  close(): Promise<void>
}

async function startEngine(): Promise<Harness> {
  const dir = await mkdtemp(join(tmpdir(), 'kv-leaderless-'))
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
      join(dir, 'data'),
      '--log-level',
      'silent',
      // The engine's handler is called directly: no peer port is opened.
      '--unsafe-plaintext-peers',
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
  // What start() does before it listens and starts its timers.
  const internals = engine as unknown as {
    handle(request: PeerRequest): Promise<PeerReply>
  }
  await engine.load()
  return {
    engine,
    actor: engine.actor,
    handle: (from, body) =>
      internals.handle({ clusterId: 'c', from, to: 'n1', ringVersion: 1, body }),
    close: async () => {
      await engine.stop()
      await store.close()
      await rm(dir, { recursive: true, force: true })
    },
  }
}

function recordOf(
  actor: string,
  counter: number,
  value: string,
  wallMs = Date.now(),
): VersionedRecord {
  return {
    vector: { [actor]: counter },
    siblings: [
      {
        dot: { node: actor, counter },
        value: { value: Buffer.from(value), hlc: { wallMs, logical: 0, node: 'n1' } },
      },
    ],
  }
}

const store = (key: string, record: VersionedRecord, hintFor = ''): PeerRequestBody => ({
  kind: 'store',
  key: Buffer.from(key),
  record,
  hintFor,
})

describe('peerRecordProblem', () => {
  const bounds = { actor: 'n1.aa', minted: 10, nowMs: 1_000_000, clockSkewMaxMs: 60_000 }

  it('takes what this member minted, and any counter of other actors up to counterMax', () => {
    expect(peerRecordProblem(recordOf('n1.aa', 10, 'v', 1_000_000), bounds)).toBeNull()
    expect(peerRecordProblem(recordOf('n2.bb', counterMax, 'v', 1_000_000), bounds)).toBeNull()
  })

  it("refuses this member's own counter beyond what it minted, in the vector or in a dot", () => {
    expect(peerRecordProblem(recordOf('n1.aa', 11, 'v', 1_000_000), bounds)).toMatch(
      /claims 11 writes coordinated by n1.aa, which has made 10/,
    )
    const dotOnly = recordOf('n1.aa', 11, 'v', 1_000_000)
    expect(
      peerRecordProblem({ vector: { 'n1.aa': 10 }, siblings: dotOnly.siblings }, bounds),
    ).toMatch(/dot n1.aa:11 was never minted/)
  })

  it('refuses counters above counterMax and timestamps too far ahead', () => {
    expect(peerRecordProblem(recordOf('n2.bb', counterMax + 1, 'v', 1_000_000), bounds)).toMatch(
      /outside 1\.\.281474976710656/,
    )
    expect(peerRecordProblem(recordOf('n2.bb', 1, 'v', 1_000_000 + 60_001), bounds)).toMatch(
      /60001 ms ahead/,
    )
    expect(peerRecordProblem(recordOf('n2.bb', 1, 'v', 1_000_000 + 60_000), bounds)).toBeNull()
  })
})

describe('the leaderless peer path', () => {
  let h: Harness
  beforeEach(async () => {
    h = await startEngine()
  })
  afterEach(async () => {
    await h.close()
  })

  it("refuses a 'store' whose record claims more of this member's writes than it made, and merges nothing", async () => {
    // A write this member coordinated (dot 1 of its actor), as a client would make it.
    const write = await h.engine.coordinateWrite('k', {
      value: Buffer.from('acked'),
      context: null,
      w: 1,
      sloppy: false,
      requestId: null,
    })
    expect(write.acks).toBe(1)
    // The attack: a peer sends the key with this member's actor at a huge counter.
    const forged = recordOf(h.actor, 2 ** 40, 'forged')
    const reply = await h.handle('n2', store('k', forged)).catch((err: unknown) => err)
    expect(reply).toMatchObject({ code: 'KV_ERR_BAD_FRAME' })
    expect((reply as Error).message).toMatch(/which has made/)
    expect(h.engine.stats.peerRecordsRefused).toBe(1)
    // Never merged: the acknowledged write is still what the key holds.
    const state = await h.engine.localState('k')
    expect(state?.siblings.map((s) => Buffer.from(s.value.value ?? []).toString())).toEqual([
      'acked',
    ])
    expect(state?.vector[h.actor]).toBe(1)
    // A later write of this member still supersedes it (nothing dominates its dots).
    await h.engine.coordinateWrite('k', {
      value: Buffer.from('later'),
      context: null,
      w: 1,
      sloppy: false,
      requestId: null,
    })
    const after = await h.engine.localState('k')
    expect(after?.siblings.map((s) => Buffer.from(s.value.value ?? []).toString())).toContain(
      'later',
    )
  })

  it('takes an honest record of the same key', async () => {
    const reply = await h.handle('n2', store('k', recordOf('n2.bb', 7, 'from n2')))
    expect(reply).toEqual({ kind: 'storeAck', changed: true })
    expect(h.engine.stats.peerRecordsRefused).toBe(0)
  })

  it('refuses a forged hint, and a hint whose target is this member itself', async () => {
    await expect(
      h.handle('n2', store('k', recordOf(h.actor, 5, 'forged'), 'n3')),
    ).rejects.toMatchObject({ code: 'KV_ERR_BAD_FRAME' })
    expect(h.engine.hintsHeld).toBe(0)
    await expect(h.handle('n2', store('k', recordOf('n2.bb', 1, 'v'), 'n1'))).rejects.toMatchObject(
      { code: 'KV_ERR_BAD_FRAME', message: /to itself/ },
    )
    expect(h.engine.hintsHeld).toBe(0)
    // An honest hint for another member is stored.
    await expect(h.handle('n2', store('k', recordOf('n2.bb', 1, 'v'), 'n3'))).resolves.toEqual({
      kind: 'storeAck',
      changed: true,
    })
    expect(h.engine.hintsHeld).toBe(1)
  })

  it('refuses a record with a timestamp too far ahead', async () => {
    await expect(
      h.handle('n2', store('k', recordOf('n2.bb', 1, 'v', Date.now() + 3_600_000))),
    ).rejects.toMatchObject({ code: 'KV_ERR_BAD_FRAME', message: /ms ahead of this clock/ })
    expect(await h.engine.localState('k')).toBeNull()
  })

  it('skips a forged record in an anti-entropy batch and merges the rest', async () => {
    const reply = await h.handle('n2', {
      kind: 'rangeKeys',
      set: h.engine.setOf('a'),
      leaves: [],
      records: [
        { key: Buffer.from('a'), record: recordOf(h.actor, 3, 'forged') },
        { key: Buffer.from('b'), record: recordOf('n2.bb', 3, 'honest') },
      ],
    })
    expect(reply.kind).toBe('keysReply')
    expect(h.engine.stats.peerRecordsRefused).toBe(1)
    expect(await h.engine.localState('a')).toBeNull()
    expect((await h.engine.localState('b'))?.vector).toEqual({ 'n2.bb': 3 })
  })

  it("refuses a coordinate whose context claims more of this member's writes than it made", async () => {
    const reply = await h.handle('n2', {
      kind: 'coordinate',
      key: Buffer.from('k'),
      value: Buffer.from('v'),
      context: { vector: { [h.actor]: 99 }, hlc: null },
      w: 1,
      sloppy: false,
      requestId: '',
    })
    expect(reply.kind).toBe('coordinateReply')
    expect(reply.kind === 'coordinateReply' && JSON.parse(reply.bodyJson)).toMatchObject({
      error: { code: 'KV_ERR_INVALID_CONTEXT' },
    })
    expect(await h.engine.localState('k')).toBeNull()
  })
})
