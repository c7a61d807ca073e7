/**
 * The lessor on a real store (standalone writer, entries left uncommitted so that a truncation
 * can remove them): grants, attaches and their limits, detaching by overwrite, expiry as one
 * Expiry entry deciding only what is still attached, and the view after a truncation.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { EntryKind, leaseKeyOf, type KvError } from '@kvstore/protocol'
import { Sequencer, Store, type WriteOp } from '@kvstore/storage'
import { Lessor, type LeaseExtras } from '../src/leases/lessor.js'

describe('the lessor', () => {
  let dir: string
  let store: Store
  let sequencer: Sequencer
  let lessor: Lessor
  let clock: number
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kv-leases-'))
    store = await Store.open({ dir, nodeId: 'n1' })
    await store.setHardState({ epoch: 1 })
    sequencer = new Sequencer(store, { now: Date.now, commitOnAppend: false })
    clock = 1000
    lessor = new Lessor({
      store,
      sequencer,
      replicator: null,
      leasesMax: 3,
      leaseKeysMax: 2,
      promoteExtendMs: 0,
      logger: pino({ level: 'silent' }),
      now: () => clock,
    })
    await lessor.start()
    lessor.stop() // ticks by hand
    lessor.tick() // promotion
  })
  afterEach(async () => {
    lessor.stop()
    await store.close()
    await rm(dir, { recursive: true, force: true })
  })

  const grant = async (ttlMs: number): Promise<{ id: string; lsn: number }> => {
    let id = ''
    const r = await sequencer.write({
      kind: 'batch',
      ops: [],
      compute: (view) => lessor.grantOps(view, ttlMs, (x) => (id = x)),
    })
    return { id, lsn: r.lsn }
  }
  const put = (key: string, value: string, extras: LeaseExtras = {}) => {
    const ops: WriteOp[] = [{ type: 'put', key: Buffer.from(key), value: Buffer.from(value) }]
    return sequencer.write({
      kind: 'batch',
      ops,
      compute: (view) => lessor.extraOps(view, ops, extras, () => {}),
    })
  }
  const value = (key: string) => store.getSync(Buffer.from(key))?.value.toString() ?? null
  const code = (p: Promise<unknown>) =>
    p.then(
      () => 'ok',
      (err: KvError) => err.code,
    )

  it('attaches within the limit, detaches by overwrite, and ends with what is still attached', async () => {
    const { id } = await grant(500)
    await put('a', '1', { lease: id })
    await put('b', '1', { lease: id })
    expect(await code(put('c', '1', { lease: id }))).toBe('KV_ERR_LEASE_TOO_MANY_KEYS')
    expect(value('c')).toBeNull()
    // Overwritten without the lease: detached, and room for another.
    await put('a', 'plain')
    await put('c', '1', { lease: id })
    expect((await lessor.info(id)).keys.map(String).sort()).toEqual(['b', 'c'])
    expect(await code(put('d', '1', { lease: '99-1' }))).toBe('KV_ERR_LEASE_NOT_FOUND')
    // Not yet: 499 ms after the grant.
    clock += 499
    lessor.tick()
    await store.whenIdle()
    expect(value('b')).toBe('1')
    clock += 2
    lessor.tick()
    await new Promise((resolve) => setTimeout(resolve, 100))
    expect([value('a'), value('b'), value('c')]).toEqual(['plain', null, null])
    expect(store.getSync(leaseKeyOf(id))).toBeNull()
    expect(lessor.size).toBe(0)
    const log = await store.readLog(1)
    const expiry = log.filter((e) => e.kind === EntryKind.Expiry)
    expect(expiry).toHaveLength(1)
    expect(expiry[0]?.ops.map((op) => op.key.toString().replace('\u0000', '\\0')).sort()).toEqual(
      ['\\0lease/' + id, 'b', 'c'].sort(),
    )
    expect(lessor.stats.expired).toBe(1)
    // A late attach to it is refused.
    expect(await code(put('e', '1', { lease: id }))).toBe('KV_ERR_LEASE_NOT_FOUND')
  })

  it('counts leases against leasesMax, the ?ttlMs= shorthand included', async () => {
    await grant(10_000)
    await grant(10_000)
    await put('t', '1', { ttlMs: 10_000 })
    expect(lessor.size).toBe(3)
    expect(await code(grant(10_000))).toBe('KV_ERR_TOO_MANY_LEASES')
    expect(await code(put('u', '1', { ttlMs: 10_000 }))).toBe('KV_ERR_TOO_MANY_LEASES')
  })

  it('fences: a lower token is refused, an equal or higher one passes', async () => {
    await put('r', '1', { fence: { lock: 'L', token: 5 } })
    await put('r', '2', { fence: { lock: 'L', token: 5 } })
    expect(await code(put('r', '3', { fence: { lock: 'L', token: 4 } }))).toBe('KV_ERR_FENCED')
    await put('r', '4', { fence: { lock: 'L', token: 9 } })
    expect(await code(put('r', '5', { fence: { lock: 'L', token: 5 } }))).toBe('KV_ERR_FENCED')
    expect(value('r')).toBe('4')
  })

  it('follows a truncation: the records as they were, reloaded', async () => {
    const first = await grant(10_000)
    await put('a', '1', { lease: first.id })
    const kept = store.appliedLsn
    const second = await grant(10_000)
    await put('b', '1', { lease: first.id })
    expect(lessor.size).toBe(2)
    await store.truncateAfter(kept)
    await new Promise((resolve) => setTimeout(resolve, 50))
    expect(lessor.size).toBe(1)
    expect(await code(lessor.info(second.id))).toBe('KV_ERR_LEASE_NOT_FOUND')
    expect((await lessor.info(first.id)).keys.map(String)).toEqual(['a'])
    expect(value('b')).toBeNull()
  })
})
