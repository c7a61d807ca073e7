/**
 * Committed reads (committed.ts) against a model: the state after every committed LSN is
 * remembered, and every committed read, single key or listing, must equal the model's state at
 * the commit LSN the read reports, while appends, commits, truncations and compactions run
 * concurrently with the reads.
 */
import type { Op } from '@kvstore/protocol'
import type { Store } from '../src/index.js'
import { del, entry, openStore, put, useTempDir } from './helpers.js'

const tmp = useTempDir()

type State = Map<string, { value: string; version: number }>

/** The model: the state after each LSN still in the log (committed ones never change). */
class Model {
  readonly states: State[] = [new Map()]

  apply(lsn: number, ops: Op[]): void {
    const next: State = new Map(this.states[lsn - 1])
    for (const op of ops) {
      const key = op.key.toString('utf8')
      if (op.type === 1) next.set(key, { value: op.value.toString('utf8'), version: lsn })
      else next.delete(key)
    }
    this.states[lsn] = next
  }

  truncateAfter(lsn: number): void {
    this.states.length = lsn + 1
  }
}

const keys = ['a', 'b', 'c', 'd', 'e', 'f']

/** A small seeded PRNG (mulberry32): `int(n)` is a whole number in [0, n). */
function seeded(seed: number): { int(n: number): number } {
  let s = seed >>> 0
  return {
    int(n: number): number {
      s = (s + 0x6d2b79f5) >>> 0
      let t = s
      t = Math.imul(t ^ (t >>> 15), t | 1)
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
      return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n)
    },
  }
}

/**
 * The commit LSN a caller knows (the replication core's), read when the read starts, and the
 * true one when it ends: a read may show the first, never more than the second.
 */
interface Known {
  now(): number
}

async function expectRead(store: Store, model: Model, key: string, known?: Known): Promise<void> {
  const read = await store.getCommitted(Buffer.from(key), known?.now())
  if (known) expect(read.commitLsn).toBeLessThanOrEqual(known.now())
  const want = model.states[read.commitLsn]?.get(key) ?? null
  const got =
    read.record === null
      ? null
      : { value: read.record.value.toString('utf8'), version: read.record.version }
  expect(got, `key ${key} at commit ${read.commitLsn}`).toEqual(want)
}

async function expectList(store: Store, model: Model, limit: number, known?: Known): Promise<void> {
  // Page through, each page at its own commit LSN: each page must match the model at its LSN.
  let after: Buffer | undefined
  for (;;) {
    const page = await store.listCommitted({ ...(after ? { after } : {}), limit }, known?.now())
    if (known) expect(page.commitLsn).toBeLessThanOrEqual(known.now())
    const state = model.states[page.commitLsn]
    expect(state, `state at ${page.commitLsn}`).toBeDefined()
    const want = [...(state ?? new Map()).entries()]
      .filter(([k]) => after === undefined || k > after.toString('utf8'))
      .sort(([x], [y]) => (x < y ? -1 : 1))
    const wantPage = want.slice(0, limit)
    expect(page.items.map((i) => [i.key.toString('utf8'), i.record.version])).toEqual(
      wantPage.map(([k, r]) => [k, r.version]),
    )
    expect(page.more).toBe(want.length > limit)
    if (!page.more) return
    after = page.items[page.items.length - 1]?.key
  }
}

describe('committed reads', () => {
  it('undo uncommitted puts, deletes and batches, for keys and listings', async () => {
    const store = await openStore(tmp.dir)
    const model = new Model()
    const append = async (lsn: number, ops: Op[], commitLsn?: number) => {
      model.apply(lsn, ops)
      await store.append([entry(lsn, ops)], commitLsn === undefined ? {} : { commitLsn })
    }
    await append(1, [put('a', '1')], 1)
    await append(2, [put('b', '2')], 2)
    await append(3, [put('c', '3')], 3)
    // Uncommitted: a changed, b deleted, d created, then a batch touching all of them.
    await append(4, [put('a', '4')])
    await append(5, [del('b')])
    await append(6, [put('d', '6')])
    await append(7, [put('a', '7'), del('c'), put('b', '7')])
    await append(8, [del('b')])
    for (const key of [...keys, 'zz']) await expectRead(store, model, key)
    const read = await store.getCommitted(Buffer.from('a'))
    expect(read).toMatchObject({ commitLsn: 3, appliedLsn: 8 })
    expect(read.record?.value.toString()).toBe('1')
    expect((await store.getCommitted(Buffer.from('b'))).record?.value.toString()).toBe('2')
    expect((await store.getCommitted(Buffer.from('c'))).record?.value.toString()).toBe('3')
    expect((await store.getCommitted(Buffer.from('d'))).record).toBeNull()
    const page = await store.listCommitted({ limit: 10 })
    expect(page.items.map((i) => `${i.key.toString()}=${i.record.value.toString()}`)).toEqual([
      'a=1',
      'b=2',
      'c=3',
    ])
    for (const limit of [1, 2, 5]) await expectList(store, model, limit)
    // The commit LSN moves: reads follow it.
    await store.setHardState({ commitLsn: 6 })
    for (const key of keys) await expectRead(store, model, key)
    await expectList(store, model, 2)
    // A truncation puts the prior state back; the committed view is unchanged by it.
    await store.truncateAfter(6)
    model.truncateAfter(6)
    for (const key of keys) await expectRead(store, model, key)
    await expectList(store, model, 3)
    await store.close()
  })

  it.each([
    ['with the read cache', 64 * 1024 * 1024],
    ['without the read cache', 0],
  ])(
    'stays consistent while appends, commits, truncations and compactions race the reads, %s',
    async (_name, readCacheBytes) => {
      const store = await openStore(tmp.dir, { fsync: false, readCacheBytes })
      const model = new Model()
      const prng = seeded(19)
      let lsn = 0
      let commit = 0
      const randomOps = (): Op[] => {
        const n = 1 + prng.int(3)
        const ops: Op[] = []
        for (let i = 0; i < n; i++) {
          const key = keys[prng.int(keys.length)] as string
          ops.push(prng.int(3) === 0 ? del(key) : put(key, `v${lsn + 1}.${i}`))
        }
        return ops
      }
      const reads: Promise<void>[] = []
      for (let step = 0; step < 600; step++) {
        const roll = prng.int(20)
        if (roll < 12) {
          lsn++
          const ops = randomOps()
          model.apply(lsn, ops)
          const advance = prng.int(4) === 0 ? lsn : undefined
          if (advance !== undefined) commit = advance
          void store.append([entry(lsn, ops)], advance === undefined ? {} : { commitLsn: advance })
        } else if (roll < 15 && commit < lsn) {
          commit += 1 + prng.int(lsn - commit)
          void store.setHardState({ commitLsn: commit })
        } else if (roll < 16 && commit < lsn) {
          // A truncation waits for the writes before it (the writer runs jobs in order).
          const to = commit
          await store.truncateAfter(to)
          model.truncateAfter(to)
          lsn = to
        } else if (roll < 17 && commit > 10) {
          await store.compactLog(commit - 5)
        } else {
          // Half the reads know the commit LSN before the store has written it.
          const known = prng.int(2) === 0 ? { now: () => commit } : undefined
          for (let i = 0; i < 4; i++) {
            reads.push(expectRead(store, model, keys[prng.int(keys.length)] as string, known))
          }
          reads.push(expectList(store, model, 1 + prng.int(4), known))
        }
        if (prng.int(10) === 0) await Promise.all(reads.splice(0))
      }
      await Promise.all(reads)
      await store.close()
    },
  )
})
