/**
 * The reserved key space (U+0000 first: the auth store) lives in the state like data, so it is
 * logged, replicated, truncated and snapshotted with it, but listing never shows it, digests
 * count it apart, and its readers hear of every change.
 */
import { Buffer } from 'node:buffer'
import { entry, openStore, put, useTempDir } from './helpers.js'
import type { Op } from '@kvstore/protocol'

const reserved = (name: string): string => `\u0000auth/${name}`

const tmp = useTempDir()

describe('the reserved key space', () => {
  it('is skipped by listing and counted apart by the digest, yet hashed', async () => {
    const store = await openStore(tmp.dir)
    await store.append([entry(1, [put('a', '1'), put(reserved('user/x'), 'secret')])], {
      commitLsn: 1,
    })
    const page = await store.list({ limit: 100 })
    expect(page.items.map((i) => i.key.toString())).toEqual(['a'])
    const digest = await store.digest()
    expect(digest).toMatchObject({ keys: 1, reservedKeys: 1 })
    // The reserved record is part of the hash: change it, and the digest changes.
    await store.append([entry(2, [put(reserved('user/x'), 'other')])], { commitLsn: 2 })
    expect((await store.digest()).digest).not.toBe(digest.digest)
    // Asked for by prefix, it is there.
    const own = await store.list({ prefix: Buffer.from('\u0000auth/'), limit: 10 })
    expect(own.items.map((i) => i.key.toString())).toEqual([reserved('user/x')])
    await store.close()
  })

  it('tells its watchers of every change: the keys of a batch, everything after a truncation', async () => {
    const store = await openStore(tmp.dir)
    const seen: (string[] | 'all')[] = []
    store.watchReserved((keys) => {
      seen.push(keys === 'all' ? 'all' : keys.map((k) => k.toString()))
      // Synchronous and exact: the record is readable already.
      if (keys !== 'all') for (const k of keys) expect(store.getSync(k)).not.toBeNull()
    })
    const ops: Op[] = [put('plain', '1')]
    await store.append([entry(1, ops)], { commitLsn: 1 })
    expect(seen).toEqual([])
    await store.append([entry(2, [put(reserved('role/r'), 'v'), put('b', '2')])])
    expect(seen).toEqual([[reserved('role/r')]])
    await store.truncateAfter(1)
    expect(seen.at(-1)).toBe('all')
    expect(store.getSync(Buffer.from(reserved('role/r')))).toBeNull()
    await store.close()
  })
})
