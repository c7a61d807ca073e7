/**
 * The queued-write outbox on a real store: durable acceptance in order, its limits (entries,
 * bytes, age) refusing with KV_ERR_OUTBOX_FULL, outcomes recorded on tickets, ticket retention
 * and count limits, and that none of it reaches the replicated state (digest, snapshots).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  KvError,
  decodeOutboxApplyReply,
  decodeOutboxApplyRequest,
  encodeOutboxApplyReply,
  encodeOutboxApplyRequest,
} from '@kvstore/protocol'
import { Sequencer, Store } from '@kvstore/storage'
import { Outbox, type OutboxLimits } from '../src/outbox/outbox.js'
import { parseConfig } from '../src/index.js'

const limits: OutboxLimits = {
  outboxEntriesMax: 10,
  outboxBytesMax: 4096,
  outboxAgeMaxMs: 1000,
  ticketsMax: 20,
  ticketRetentionMs: 5000,
}

const put = (key: string, value: string) => ({
  kind: 'put' as const,
  ops: [{ type: 'put' as const, key: Buffer.from(key), value: Buffer.from(value) }],
  user: 'alice',
})

describe('the outbox', () => {
  let dir: string
  let store: Store
  let clock: number
  const now = () => clock
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kv-outbox-'))
    store = await Store.open({ dir, nodeId: 'n1' })
    clock = 1_000_000
  })
  afterEach(async () => {
    await store.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('accepts writes durably, in order, with request ids, and reloads them after a restart', async () => {
    const outbox = await Outbox.open(store, 'n1', limits, now)
    const a = await outbox.accept(put('a', '1'))
    const b = await outbox.accept({ ...put('b', '2'), requestId: 'client-id' })
    expect(b.entry.seq).toBe(a.entry.seq + 1)
    // A fresh outbox numbers from the clock, so a wiped member never reuses a request id.
    expect(a.entry.seq).toBe(clock * 1000)
    expect(a.entry.requestId).toBe(`q-n1-${a.entry.seq}`)
    expect(b.entry.requestId).toBe('client-id')
    expect(outbox.ticket(a.entry.seq)).toMatchObject({ status: 'pending', user: 'alice' })
    expect(outbox.entries).toBe(2)
    await store.close()
    store = await Store.open({ dir, nodeId: 'n1' })
    const reopened = await Outbox.open(store, 'n1', limits, now)
    expect(reopened.peek(10, 1 << 20).map((e) => [e.seq, e.ops[0]?.key.toString()])).toEqual([
      [a.entry.seq, 'a'],
      [b.entry.seq, 'b'],
    ])
    const c = await reopened.accept(put('c', '3'))
    expect(c.entry.seq).toBe(b.entry.seq + 1)
  })

  it('records outcomes on tickets and forgets the entries', async () => {
    const outbox = await Outbox.open(store, 'n1', limits, now)
    const a = await outbox.accept(put('a', '1'))
    const b = await outbox.accept(put('b', '2'))
    clock += 10
    await outbox.record([
      { seq: a.entry.seq, status: 'applied', lsn: 7, epoch: 2 },
      {
        seq: b.entry.seq,
        status: 'failed',
        error: { code: 'KV_ERR_PRECONDITION_FAILED', message: 'no', details: { key: 'b' } },
      },
    ])
    expect(outbox.entries).toBe(0)
    expect(outbox.bytes).toBe(0)
    expect(outbox.ticket(a.entry.seq)).toMatchObject({ status: 'applied', lsn: 7, epoch: 2 })
    expect(outbox.ticket(b.entry.seq)).toMatchObject({
      status: 'failed',
      finishedAtMs: clock,
      error: { code: 'KV_ERR_PRECONDITION_FAILED', details: { key: 'b' } },
    })
    // Outcomes go to the oldest entries only.
    const c = await outbox.accept(put('c', '3'))
    await expect(
      outbox.record([{ seq: c.entry.seq + 1, status: 'applied', lsn: 9, epoch: 2 }]),
    ).rejects.toThrow(/not the next entry/)
    expect(outbox.figures.forwarded).toEqual({ applied: 1, failed: 1, retry: 0 })
  })

  it('refuses new writes past its entries, bytes and age limits', async () => {
    const outbox = await Outbox.open(store, 'n1', limits, now)
    const full = async (write: ReturnType<typeof put>, reason: string) => {
      const err = await outbox.accept(write).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(KvError)
      expect((err as KvError).code).toBe('KV_ERR_OUTBOX_FULL')
      expect((err as KvError).status).toBe(503)
      expect((err as KvError).details.reason).toBe(reason)
    }
    await full(put('big', 'x'.repeat(5000)), 'bytes')
    for (let i = 0; i < 10; i++) await outbox.accept(put(`k${i}`, 'v'))
    await full(put('k10', 'v'), 'entries')
    await outbox.record(
      outbox.peek(1, 1 << 20).map((e) => ({ seq: e.seq, status: 'applied', lsn: 1, epoch: 1 })),
    )
    await outbox.accept(put('k10', 'v'))
    clock += 1001
    await outbox.record(
      outbox.peek(1, 1 << 20).map((e) => ({ seq: e.seq, status: 'applied', lsn: 2, epoch: 1 })),
    )
    await full(put('k11', 'v'), 'age')
    expect(outbox.figures.refused).toEqual({ entries: 1, bytes: 1, age: 1 })
    expect(outbox.oldestAgeMs()).toBe(1001)
  })

  it('forgets finished tickets after their retention and beyond ticketsMax, never pending ones', async () => {
    const outbox = await Outbox.open(store, 'n1', limits, now)
    const seqs: number[] = []
    for (let i = 0; i < 5; i++) seqs.push((await outbox.accept(put(`k${i}`, 'v'))).entry.seq)
    await outbox.record(
      outbox.peek(3, 1 << 20).map((e) => ({ seq: e.seq, status: 'applied', lsn: 1, epoch: 1 })),
    )
    clock += limits.ticketRetentionMs + 1
    expect(await outbox.sweep()).toBe(3)
    expect(seqs.map((s) => outbox.ticket(s)?.status ?? null)).toEqual([
      null,
      null,
      null,
      'pending',
      'pending',
    ])
    expect(outbox.tickets).toBe(2)
    // Past ticketsMax the oldest finished tickets go.
    await outbox.record(
      outbox.peek(2, 1 << 20).map((e) => ({ seq: e.seq, status: 'applied', lsn: 1, epoch: 1 })),
    )
    for (let round = 0; round < 6; round++) {
      for (let i = 0; i < 5; i++) await outbox.accept(put(`r${round}/${i}`, 'v'))
      await outbox.record(
        outbox.peek(5, 1 << 20).map((e) => ({ seq: e.seq, status: 'applied', lsn: 1, epoch: 1 })),
      )
    }
    await outbox.settled()
    expect(outbox.tickets).toBeLessThanOrEqual(limits.ticketsMax)
  })

  it('stays out of the replicated state: the digest and snapshots do not see it', async () => {
    await store.setHardState({ epoch: 1 })
    const sequencer = new Sequencer(store, { now })
    await sequencer.write({
      kind: 'put',
      ops: [{ type: 'put', key: Buffer.from('x'), value: Buffer.from('1') }],
    })
    const before = await store.digest()
    const outbox = await Outbox.open(store, 'n1', limits, now)
    await outbox.accept(put('x', '2'))
    const after = await store.digest()
    expect(after).toEqual(before)
    const snapshot = await store.openSnapshot()
    try {
      expect(snapshot.appliedLsn).toBe(before.appliedLsn)
      const keys: string[] = []
      for await (const item of snapshot.records()) keys.push(item.key.toString())
      expect(keys).toEqual(['x'])
    } finally {
      await snapshot.close()
    }
    expect(await store.verify()).toMatchObject({ keys: 1 })
  })
})

describe('the forward formats', () => {
  it('round-trip and refuse entries out of order', () => {
    const entry = {
      seq: 5,
      kind: 'batch' as const,
      ops: [
        { type: 'put' as const, key: Buffer.from('a'), value: Buffer.from('1'), ifVersion: 3 },
        { type: 'delete' as const, key: Buffer.from('b'), ifExists: true },
      ],
      requestId: 'q-n1-5',
      user: 'alice',
      acceptedAtMs: 123,
    }
    const decoded = decodeOutboxApplyRequest(encodeOutboxApplyRequest('n1', [entry]))
    expect(decoded).toEqual({ from: 'n1', entries: [entry] })
    expect(() =>
      decodeOutboxApplyRequest(encodeOutboxApplyRequest('n1', [entry, { ...entry, seq: 4 }])),
    ).toThrow(/acceptance order/)
    const outcomes = [
      { seq: 5, status: 'applied' as const, lsn: 10, epoch: 2 },
      {
        seq: 6,
        status: 'retry' as const,
        error: { code: 'KV_ERR_NOT_LEADER' as const, message: 'm', details: { leaderUrl: null } },
      },
    ]
    expect(decodeOutboxApplyReply(encodeOutboxApplyReply(outcomes))).toEqual(outcomes)
  })
})

describe('queued-write options', () => {
  const members =
    'n1@http://127.0.0.1:7001@http://127.0.0.1:7101,n2@http://127.0.0.1:7002@http://127.0.0.1:7102'
  const base = ['--members', members, '--unsafe-plaintext-peers', '--id', 'n1']
  it('keep the outbox age below the request-id retention, and room for every ticket', () => {
    expect(parseConfig(base, {}).config).toMatchObject({
      outboxEntriesMax: 100_000,
      outboxAgeMaxMs: 300_000,
      unsafeOutboxApplyTwice: false,
    })
    expect(() =>
      parseConfig(
        [...base, '--outbox-age-max-ms', '600000', '--request-id-retention-ms', '600000'],
        {},
      ),
    ).toThrow(/outboxAgeMaxMs \(600000\) must be below requestIdRetentionMs/)
    expect(() =>
      parseConfig([...base, '--tickets-max', '10', '--outbox-entries-max', '11'], {}),
    ).toThrow(/ticketsMax \(10\) must be at least outboxEntriesMax/)
    expect(() => parseConfig(['--unsafe-outbox-apply-twice'], {})).toThrow(
      /--unsafe-outbox-apply-twice needs --mode single-leader/,
    )
  })
})
