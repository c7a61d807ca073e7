import { ClassicLevel } from 'classic-level'
import { KvError, encodeLogEntry } from '@kvstore/protocol'
import { checkStorageLimits, storageLimits } from '../src/index.js'
import { logKey } from '../src/layout.js'
import { entry, openStore, put, useTempDir } from './helpers.js'

describe('storage limits', () => {
  const tmp = useTempDir()

  it('fit each other and protocol’s limits as shipped', () => {
    expect(checkStorageLimits()).toEqual([])
  })

  it('name what does not fit', () => {
    const problems = checkStorageLimits({
      ...storageLimits,
      compactChunkEntries: 0,
      readCacheBytesDefault: 1024,
    })
    expect(problems).toHaveLength(2)
    expect(problems[0]).toMatch(/compactChunkEntries must be a positive integer/)
    expect(problems[1]).toMatch(/readCacheBytesDefault .* cannot hold one record/)
  })

  it('bound a log read that is given none', async () => {
    const store = await openStore(tmp.dir, { fsync: false })
    const count = storageLimits.logReadEntriesMaxDefault + 5
    const entries = Array.from({ length: count }, (_, i) => entry(i + 1, [put(`k${i}`, 'v')]))
    await store.append(entries, { commitLsn: count })
    const read = await store.readLog(1)
    expect(read).toHaveLength(storageLimits.logReadEntriesMaxDefault)
    expect(read.at(-1)?.lsn).toBe(storageLimits.logReadEntriesMaxDefault)
    await store.close()
  })
})

describe('log entries checked after they are read', () => {
  const tmp = useTempDir()

  it('a log whose epochs go down is corrupt: the read fails and the store stops', async () => {
    const store = await openStore(tmp.dir)
    await store.setHardState({ epoch: 3 })
    await store.append(
      [entry(1, [put('a', '1')], 2), entry(2, [put('b', '1')], 3), entry(3, [put('c', '1')], 3)],
      { commitLsn: 3 },
    )
    await store.close()
    // Entry 2 rewritten with a lower epoch behind the store's back; the last entry (which
    // recovery checks against the metadata) is untouched.
    const db = new ClassicLevel<Buffer, Buffer>(tmp.dir, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
    })
    await db.put(logKey(2), Buffer.from(encodeLogEntry(entry(2, [put('b', '1')], 1))))
    await db.close()
    const reopened = await openStore(tmp.dir)
    const err = await reopened.readLog(1).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(KvError)
    expect((err as KvError).code).toBe('KV_ERR_STORAGE')
    expect(reopened.failed?.message).toMatch(/log entry 2 has epoch 1, below 2/)
    await reopened.close()
  })
})
