import { ClassicLevel } from 'classic-level'
import { EntryKind, encodeLogEntry, epochMax, KvError, lsnMax } from '@kvstore/protocol'
import { InvariantError, Store, StorageError, type BatchStats } from '../src/index.js'
import { MetaName, encodeU64, logKey, metaKey, stateKey, undoKey } from '../src/layout.js'
import {
  appendCommitted,
  del,
  dump,
  entry,
  openStore,
  put,
  tempDir,
  useTempDir,
} from './helpers.js'

const tmp = useTempDir()

describe('open and recovery', () => {
  it('creates the metadata of a new data directory and keeps it across reopen', async () => {
    const store = await Store.open({ dir: tmp.dir, nodeId: 'n1', clusterId: 'c1' })
    expect(store.meta).toMatchObject({
      nodeId: 'n1',
      clusterId: 'c1',
      epoch: 0,
      appliedLsn: 0,
      commitLsn: 0,
      logStartLsn: 1,
    })
    await store.setHardState({ epoch: 3, vote: 'n2' })
    await store.append([entry(1, [put('a', '1')], 3)], { commitLsn: 1 })
    await store.close()

    const again = await Store.open({ dir: tmp.dir, nodeId: 'n1' })
    expect(again.meta).toMatchObject({
      clusterId: 'c1',
      epoch: 3,
      vote: 'n2',
      appliedLsn: 1,
      commitLsn: 1,
      lastEpoch: 3,
    })
    expect(again.getSync(Buffer.from('a'))?.value.toString()).toBe('1')
    await again.close()
  })

  it('refuses a data directory that belongs to another node or cluster', async () => {
    const store = await Store.open({ dir: tmp.dir, nodeId: 'n1', clusterId: 'c1' })
    await store.close()
    await expect(Store.open({ dir: tmp.dir, nodeId: 'n2' })).rejects.toThrow(/belongs to node "n1"/)
    await expect(Store.open({ dir: tmp.dir, nodeId: 'n1', clusterId: 'other' })).rejects.toThrow(
      /belongs to cluster "c1"/,
    )
  })

  it('refuses a directory whose LevelDB lock is held', async () => {
    const store = await Store.open({ dir: tmp.dir, nodeId: 'n1' })
    await expect(Store.open({ dir: tmp.dir, nodeId: 'n1' })).rejects.toThrow(StorageError)
    await store.close()
  })

  it('refuses a LevelDB that holds data but no format marker', async () => {
    const db = new ClassicLevel(tmp.dir)
    await db.put('stranger', 'data')
    await db.close()
    await expect(Store.open({ dir: tmp.dir, nodeId: 'n1' })).rejects.toThrow(/no format marker/)
  })

  it('refuses to start when the log end and the metadata disagree', async () => {
    const store = await openStore(tmp.dir)
    await store.append([entry(1, [put('a', '1')])], { commitLsn: 1 })
    await store.close()
    // Damage the directory behind the store's back: an entry past the applied LSN.
    const db = new ClassicLevel<Buffer, Buffer>(tmp.dir, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
    })
    await db.put(logKey(2), Buffer.from(encodeLogEntry(entry(2, [put('b', '2')]))))
    await db.close()
    await expect(Store.open({ dir: tmp.dir, nodeId: 'n1' })).rejects.toThrow(
      /log ends at 2 but appliedLsn is 1/,
    )
  })

  it('refuses a corrupt last log entry', async () => {
    const store = await openStore(tmp.dir)
    await store.append([entry(1, [put('a', '1')])], { commitLsn: 1 })
    await store.close()
    const db = new ClassicLevel<Buffer, Buffer>(tmp.dir, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
    })
    await db.put(logKey(1), Buffer.from([0xff, 0xff, 0xff]))
    await db.close()
    await expect(Store.open({ dir: tmp.dir, nodeId: 'n1' })).rejects.toThrow(
      /corrupt last log entry/,
    )
  })

  it('refuses a log that does not start at its recorded start, or lost an undo record', async () => {
    const store = await openStore(tmp.dir)
    await store.append([entry(1, [put('a', '1')]), entry(2, [put('b', '2')])], { commitLsn: 1 })
    await store.close()
    const db = new ClassicLevel<Buffer, Buffer>(tmp.dir, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
    })
    await db.del(undoKey(2))
    await db.close()
    await expect(Store.open({ dir: tmp.dir, nodeId: 'n1' })).rejects.toThrow(
      /1 uncommitted entries but 0 undo records/,
    )
    const db2 = new ClassicLevel<Buffer, Buffer>(tmp.dir, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
    })
    await db2.del(logKey(1))
    await db2.close()
    await expect(Store.open({ dir: tmp.dir, nodeId: 'n1' })).rejects.toThrow(
      /log starts at 2 but the recorded log start is 1/,
    )
  })

  it('finishes a log compaction that a crash interrupted', async () => {
    const store = await openStore(tmp.dir)
    await appendCommitted(store, 10, (lsn) => put(`k${lsn}`, 'v'))
    await store.close()
    // The crash happened after the new log start was made durable, before the deletes.
    const db = new ClassicLevel<Buffer, Buffer>(tmp.dir, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
    })
    await db.batch([
      { type: 'put', key: metaKey(MetaName.LogStartLsn), value: encodeU64(6) },
      { type: 'put', key: metaKey(MetaName.CompactedEpoch), value: encodeU64(1) },
    ])
    await db.close()
    const reopened = await Store.open({ dir: tmp.dir, nodeId: 'n1' })
    expect(reopened.meta.logStartLsn).toBe(6)
    const report = await reopened.verify()
    expect(report.entries).toBe(5)
    expect((await reopened.readLog(6)).map((e) => e.lsn)).toEqual([6, 7, 8, 9, 10])
    await reopened.close()
  })
})

describe('append and apply', () => {
  it('applies puts, deletes and batches in log order', async () => {
    const store = await openStore(tmp.dir)
    await store.append([entry(1, [put('a', '1')]), entry(2, [put('b', '2')])])
    await store.append([entry(3, [del('a'), put('c', '3'), put('b', '22')])])
    expect(store.appliedLsn).toBe(3)
    expect(store.getSync(Buffer.from('a'))).toBeNull()
    expect(store.getSync(Buffer.from('b'))).toMatchObject({ version: 3 })
    expect(await dump(store)).toEqual({ b: '22', c: '3' })
    expect((await store.verify()).replayChecked).toBe(true)
    await store.close()
  })

  it('stops the store on a gap in the log instead of writing it', async () => {
    const fatal: Error[] = []
    const store = await openStore(tmp.dir, { onFatal: (err) => fatal.push(err) })
    await store.append([entry(1, [put('a', '1')])])
    await expect(store.append([entry(3, [put('b', '2')])])).rejects.toThrow(InvariantError)
    expect(fatal).toHaveLength(1)
    await expect(store.append([entry(2, [put('b', '2')])])).rejects.toMatchObject({
      code: 'KV_ERR_STORAGE',
    })
    await store.close()
    const reopened = await Store.open({ dir: tmp.dir, nodeId: 'n1' })
    expect(reopened.appliedLsn).toBe(1)
    await reopened.close()
  })

  it('refuses entries whose epoch goes down or passes the node epoch', async () => {
    const store = await openStore(tmp.dir)
    await store.setHardState({ epoch: 2 })
    await store.append([entry(1, [put('a', '1')], 2)])
    await expect(store.append([entry(2, [put('a', '2')], 1)])).rejects.toThrow(/below the previous/)
    const other = await tempDir()
    const store2 = await openStore(other.dir)
    await expect(store2.append([entry(1, [put('a', '1')], 5)])).rejects.toThrow(
      /above the node's epoch/,
    )
    await store.close()
    await store2.close()
    await other.cleanup()
  })

  it('never lets the epoch or the commit LSN go down', async () => {
    const store = await openStore(tmp.dir)
    await store.setHardState({ epoch: 4 })
    await expect(store.setHardState({ epoch: 3 })).rejects.toThrow(/epoch may not go down/)
    await store.close()

    const other = await tempDir()
    const store2 = await openStore(other.dir)
    await store2.append([entry(1, [put('a', '1')])], { commitLsn: 1 })
    await expect(store2.setHardState({ commitLsn: 0 })).rejects.toThrow(
      /commit LSN may not go down/,
    )
    await store2.close()
    // Nothing of the refused update reached the disk.
    const store3 = await Store.open({ dir: other.dir, nodeId: 'n1' })
    expect(store3.meta.commitLsn).toBe(1)
    await store3.close()
    await other.cleanup()
  })

  it('never writes an epoch above epochMax, and refuses one read back from disk as corrupt', async () => {
    const store = await openStore(tmp.dir)
    await store.setHardState({ epoch: epochMax })
    expect(store.meta.epoch).toBe(epochMax)
    await expect(store.setHardState({ epoch: epochMax + 1 })).rejects.toThrow(/above/)
    await store.close()
    // What an epoch bomb left on disk before the bound: the node refuses to start from it
    // rather than sit at an epoch no election can raise.
    for (const [name, value, pattern] of [
      [MetaName.Epoch, 2 ** 53 - 1, /corrupt metadata: epoch .* above the largest epoch/],
      [MetaName.LastEpoch, epochMax + 1, /corrupt metadata: lastEpoch/],
      [MetaName.AppliedLsn, lsnMax, /corrupt metadata: appliedLsn .* is not below/],
    ] as const) {
      const other = await tempDir()
      await (await openStore(other.dir)).close()
      const db = new ClassicLevel<Buffer, Buffer>(other.dir, {
        keyEncoding: 'buffer',
        valueEncoding: 'buffer',
      })
      await db.put(metaKey(name), encodeU64(value))
      await db.close()
      await expect(Store.open({ dir: other.dir, nodeId: 'n1' })).rejects.toThrow(pattern)
      await other.cleanup()
    }
  })

  it('shares one batch and one fsync among concurrent appends (group commit)', async () => {
    const batches: BatchStats[] = []
    const store = await openStore(tmp.dir, { onBatch: (stats) => batches.push(stats) })
    batches.length = 0
    const writes: Promise<void>[] = []
    for (let lsn = 1; lsn <= 200; lsn++) {
      writes.push(store.append([entry(lsn, [put(`k${lsn}`, `v${lsn}`)])], { commitLsn: lsn }))
    }
    await Promise.all(writes)
    const entries = batches.reduce((sum, b) => sum + b.entries, 0)
    expect(entries).toBe(200)
    // All 200 appends were queued in the same turn of the event loop, so they share batches.
    expect(batches.length).toBeLessThan(10)
    expect(Math.max(...batches.map((b) => b.writers))).toBeGreaterThan(1)
    expect(store.appliedLsn).toBe(200)
    await store.verify()
    await store.close()
  })

  it('writes one batch per append when group commit is off', async () => {
    const batches: BatchStats[] = []
    const store = await openStore(tmp.dir, {
      groupCommitWritesMax: 1,
      onBatch: (s) => batches.push(s),
    })
    batches.length = 0
    await Promise.all(
      Array.from({ length: 20 }, (_, i) => store.append([entry(i + 1, [put(`k${i}`, 'v')])])),
    )
    expect(batches).toHaveLength(20)
    expect(batches.every((b) => b.entries === 1)).toBe(true)
    await store.close()
  })

  it('bounds the write queue with KV_ERR_OVERLOADED', async () => {
    const store = await openStore(tmp.dir, { writeQueueWritesMax: 5 })
    const results = await Promise.allSettled(
      Array.from({ length: 8 }, (_, i) => store.append([entry(i + 1, [put(`k${i}`, 'v')])])),
    )
    const refused = results.filter((r) => r.status === 'rejected')
    expect(refused).toHaveLength(3)
    for (const r of refused) {
      expect((r as PromiseRejectedResult).reason).toBeInstanceOf(KvError)
      expect((r as PromiseRejectedResult).reason).toMatchObject({ code: 'KV_ERR_OVERLOADED' })
    }
    await store.close()
  })

  it('waits for queued writes on close and refuses writes after it', async () => {
    const store = await openStore(tmp.dir)
    const writes = Array.from({ length: 50 }, (_, i) =>
      store.append([entry(i + 1, [put(`k${i}`, 'v')])]),
    )
    await store.close()
    await Promise.all(writes)
    await expect(store.append([entry(51, [put('late', 'v')])])).rejects.toMatchObject({
      code: 'KV_ERR_SHUTTING_DOWN',
    })
    const reopened = await Store.open({ dir: tmp.dir, nodeId: 'n1' })
    expect(reopened.appliedLsn).toBe(50)
    await reopened.close()
  })

  it('detects a record damaged on disk and stops the store', async () => {
    const store = await openStore(tmp.dir)
    await store.append([entry(1, [put('a', '1')])], { commitLsn: 1 })
    await store.close()
    const db = new ClassicLevel<Buffer, Buffer>(tmp.dir, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
    })
    await db.put(stateKey(Buffer.from('a')), Buffer.from('garbage'))
    await db.close()
    const fatal: Error[] = []
    const reopened = await Store.open({
      dir: tmp.dir,
      nodeId: 'n1',
      onFatal: (err) => fatal.push(err),
    })
    expect(() => reopened.getSync(Buffer.from('a'))).toThrow(/storage failed: corrupt state record/)
    expect(fatal).toHaveLength(1)
    await reopened.close()
  })
})

describe('truncation', () => {
  it('removes uncommitted entries and restores the exact prior state', async () => {
    const store = await openStore(tmp.dir)
    await store.append(
      [entry(1, [put('a', '1')]), entry(2, [put('b', '1')]), entry(3, [put('c', '1')])],
      { commitLsn: 3 },
    )
    const committed = await store.digest()
    // Uncommitted tail: overwrite, delete, create, and a batch touching one key twice.
    await store.append([
      entry(4, [put('a', '2')]),
      entry(5, [del('b')]),
      entry(6, [put('d', '1'), put('a', '3'), put('a', '4')]),
    ])
    expect(await dump(store)).toEqual({ a: '4', c: '1', d: '1' })

    const removed = await store.truncateAfter(3)
    expect(removed.map((e) => e.lsn)).toEqual([4, 5, 6])
    expect(store.appliedLsn).toBe(3)
    expect(await store.digest()).toEqual(committed)
    expect(await dump(store)).toEqual({ a: '1', b: '1', c: '1' })
    expect(store.getSync(Buffer.from('a'))?.version).toBe(1)
    await store.verify()

    // The log continues from the truncation point, and the result survives a reopen.
    await store.append([entry(4, [put('e', '1')], 1)], { commitLsn: 4 })
    await store.close()
    const reopened = await Store.open({ dir: tmp.dir, nodeId: 'n1' })
    expect(await dump(reopened)).toEqual({ a: '1', b: '1', c: '1', e: '1' })
    expect((await reopened.verify()).replayChecked).toBe(true)
    await reopened.close()
  })

  it('keeps what it removed in the rollback record, durably, in order and bounded', async () => {
    const store = await openStore(tmp.dir, { rollbackEntriesMax: 3 })
    await store.append([entry(1, [put('a', '1')])], { commitLsn: 1 })
    await store.setHardState({ epoch: 2 })
    const noop = { ...entry(3, [], 1), kind: EntryKind.Noop }
    await store.append([entry(2, [put('a', '2')]), noop, entry(4, [del('a')])])
    await store.truncateAfter(1)
    // The no-op is nobody's write: it is not kept.
    expect(store.rolledBack).toBe(2)
    const first = await store.rollbacks(0, 100)
    expect(first.map((r) => [r.seq, r.epoch, r.entry.lsn, r.entry.kind])).toEqual([
      [1, 2, 2, EntryKind.Put],
      [2, 2, 4, EntryKind.Delete],
    ])
    expect(first[0]?.entry.ops[0]?.value.toString()).toBe('2')
    expect(first[0]?.atMs).toBeGreaterThan(0)
    // A second truncation appends; the cap drops the oldest.
    await store.append([entry(2, [put('b', '1')], 2), entry(3, [put('b', '2')], 2)])
    await store.truncateAfter(1)
    expect((await store.rollbacks(0, 100)).map((r) => [r.seq, r.entry.lsn])).toEqual([
      [2, 4],
      [3, 2],
      [4, 3],
    ])
    expect(store.rollbackCount).toBe(3)
    await store.close()
    // It survives a reopen, and numbering goes on from where it was.
    const reopened = await openStore(tmp.dir, { rollbackEntriesMax: 3 })
    expect(reopened.rollbackCount).toBe(3)
    expect((await reopened.rollbacks(2, 1)).map((r) => r.seq)).toEqual([3])
    expect(await reopened.discardRollbacks(3)).toBe(2)
    expect((await reopened.rollbacks(0, 100)).map((r) => r.seq)).toEqual([4])
    await reopened.append([entry(2, [put('c', '1')], 2)])
    await reopened.truncateAfter(1)
    expect((await reopened.rollbacks(0, 100)).map((r) => r.seq)).toEqual([4, 5])
    await reopened.verify()
    await reopened.close()
  })

  it('truncates partway through an uncommitted tail', async () => {
    const store = await openStore(tmp.dir)
    await store.append([entry(1, [put('a', '1')])], { commitLsn: 1 })
    await store.append([entry(2, [put('a', '2')]), entry(3, [put('a', '3')])])
    await store.truncateAfter(2)
    expect(store.getSync(Buffer.from('a'))).toMatchObject({ version: 2 })
    expect(store.getSync(Buffer.from('a'))?.value.toString()).toBe('2')
    await store.verify()
    await store.close()
  })

  it('restores the image from before a batch that writes one key twice', async () => {
    const store = await openStore(tmp.dir)
    await store.append([entry(1, [put('a', '1')])], { commitLsn: 1 })
    await store.append([
      entry(2, [put('a', '2')]),
      entry(3, [put('a', '3'), put('a', '4'), del('a')]),
    ])
    expect(store.getSync(Buffer.from('a'))).toBeNull()
    await store.truncateAfter(2)
    expect(store.getSync(Buffer.from('a'))?.value.toString()).toBe('2')
    await store.verify()
    await store.close()
  })

  it('refuses to truncate committed entries and stays usable', async () => {
    const store = await openStore(tmp.dir)
    await store.append([entry(1, [put('a', '1')]), entry(2, [put('b', '1')])], { commitLsn: 2 })
    await expect(store.truncateAfter(1)).rejects.toThrow(InvariantError)
    await expect(store.truncateAfter(0)).rejects.toThrow(/commit LSN 2/)
    expect(store.appliedLsn).toBe(2)
    expect(store.failed).toBeNull()
    await store.append([entry(3, [put('c', '1')])], { commitLsn: 3 })
    expect(await dump(store)).toEqual({ a: '1', b: '1', c: '1' })
    await store.close()
  })
})

describe('compaction', () => {
  it('deletes committed entries below the retained LSN and keeps the rest', async () => {
    const store = await openStore(tmp.dir)
    await appendCommitted(store, 20, (lsn) => put(`k${lsn % 5}`, `v${lsn}`))
    const before = await store.digest()
    await store.compactLog(15)
    expect(store.meta).toMatchObject({ logStartLsn: 15, compactedEpoch: 1 })
    expect((await store.readLog(15)).map((e) => e.lsn)).toEqual([15, 16, 17, 18, 19, 20])
    await expect(store.readLog(14)).rejects.toThrow(/below the log start/)
    expect(await store.digest()).toEqual(before)
    await store.close()
    const reopened = await Store.open({ dir: tmp.dir, nodeId: 'n1' })
    expect(reopened.meta.logStartLsn).toBe(15)
    expect((await reopened.verify()).entries).toBe(6)
    await reopened.close()
  })

  it('deletes a long log in chunks that let writes through, and leaves nothing below the start', async () => {
    const store = await openStore(tmp.dir)
    // Uncommitted first, so every entry also has an undo record; then commit them all.
    for (let lsn = 1; lsn <= 9000; lsn += 500) {
      const entries = Array.from({ length: 500 }, (_, i) =>
        entry(lsn + i, [put(`k${(lsn + i) % 97}`, `v${lsn + i}`)]),
      )
      await store.append(entries)
    }
    await store.setHardState({ commitLsn: 9000 })
    await store.compactLog(8001)
    // The new start is recorded: readers see it at once; the deletion runs in chunks.
    await expect(store.readLog(8000)).rejects.toThrow(/below the log start/)
    let settled = false
    const settling = store.compactionSettled().then(() => (settled = true))
    // A write queued meanwhile does not wait for every chunk of deletes.
    await store.append([entry(9001, [put('late', 'x')])], { commitLsn: 9001 })
    expect(settled).toBe(false)
    await settling
    expect(store.meta.logStartLsn).toBe(8001)
    expect((await store.verify()).entries).toBe(1001)
    await store.close()
    const db = new ClassicLevel<Buffer, Buffer>(tmp.dir, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
    })
    const below = [
      ...(await db.keys({ gte: logKey(0), lt: logKey(8001) }).all()),
      ...(await db.keys({ gte: undoKey(0), lt: undoKey(8001) }).all()),
    ]
    expect(below).toEqual([])
    await db.close()
    const reopened = await Store.open({ dir: tmp.dir, nodeId: 'n1' })
    expect(reopened.getSync(Buffer.from('late'))?.value.toString()).toBe('x')
    await reopened.close()
  })

  it('refuses to compact uncommitted entries', async () => {
    const store = await openStore(tmp.dir)
    await store.append([entry(1, [put('a', '1')])], { commitLsn: 1 })
    await store.append([entry(2, [put('a', '2')]), entry(3, [put('a', '3')])])
    await expect(store.compactLog(3)).rejects.toThrow(/not committed/)
    await store.compactLog(2)
    expect(store.meta.logStartLsn).toBe(2)
    // The uncommitted tail can still be truncated after compaction.
    await store.truncateAfter(1)
    expect(store.getSync(Buffer.from('a'))?.value.toString()).toBe('1')
    await store.close()
  })

  it('can compact the whole log and keep appending', async () => {
    const store = await openStore(tmp.dir)
    await store.append([entry(1, [put('a', '1')]), entry(2, [put('b', '2')])], { commitLsn: 2 })
    await store.compactLog(3)
    expect(store.meta).toMatchObject({ logStartLsn: 3, appliedLsn: 2, lastEpoch: 1 })
    await store.close()
    const reopened = await Store.open({ dir: tmp.dir, nodeId: 'n1' })
    await reopened.append([entry(3, [put('c', '3')])], { commitLsn: 3 })
    expect(await dump(reopened)).toEqual({ a: '1', b: '2', c: '3' })
    await reopened.close()
  })
})

describe('snapshots and digest', () => {
  it('a snapshot sees one LSN and none of the writes after it', async () => {
    const store = await openStore(tmp.dir)
    await store.append([entry(1, [put('a', '1')]), entry(2, [put('b', '2')])])
    const snapshot = await store.openSnapshot()
    await store.append([entry(3, [put('a', 'changed')]), entry(4, [put('z', 'new')])])
    await store.append([entry(5, [del('b')])])
    expect(snapshot.appliedLsn).toBe(2)
    const seen: Record<string, string> = {}
    for await (const { key, record } of snapshot.records(1)) {
      seen[key.toString()] = `${record.value.toString()}@${record.version}`
    }
    await snapshot.close()
    expect(seen).toEqual({ a: '1@1', b: '2@2' })
    await store.close()
  })

  it('equal states give equal digests; any difference changes it', async () => {
    const other = await tempDir()
    const one = await openStore(tmp.dir)
    const two = await openStore(other.dir, { nodeId: 'n2' })
    const entries = [
      entry(1, [put('a', '1'), put('b', '2')]),
      entry(2, [put('c', '3')]),
      entry(3, [del('a')]),
    ]
    await one.append(entries)
    // Same entries, different grouping: the state and its digest must not care.
    for (const e of entries) await two.append([e])
    const d1 = await one.digest()
    const d2 = await two.digest()
    expect(d1).toEqual(d2)
    expect(d1).toMatchObject({ appliedLsn: 3, keys: 2 })
    await two.append([entry(4, [put('c', '3')])])
    expect((await two.digest()).digest).not.toBe(d1.digest)
    await one.close()
    await two.close()
    await other.cleanup()
  })

  it('lists keys by prefix, start and cursor, in order', async () => {
    const store = await openStore(tmp.dir)
    const keys = ['a', 'app/1', 'app/2', 'app/3', 'apple', 'b', 'app\u00ff']
    await store.append(keys.map((k, i) => entry(i + 1, [put(k, k)])))
    const names = (items: { key: Buffer }[]) => items.map((i) => i.key.toString())
    expect(names((await store.list({ limit: 100 })).items)).toEqual([...keys].sort())
    const page1 = await store.list({ prefix: Buffer.from('app/'), limit: 2 })
    expect(names(page1.items)).toEqual(['app/1', 'app/2'])
    expect(page1.more).toBe(true)
    const page2 = await store.list({
      prefix: Buffer.from('app/'),
      after: Buffer.from('app/2'),
      limit: 2,
    })
    expect(names(page2.items)).toEqual(['app/3'])
    expect(page2.more).toBe(false)
    expect(names((await store.list({ start: Buffer.from('apple'), limit: 2 })).items)).toEqual([
      'apple',
      'app\u00ff',
    ])
    await store.close()
  })
})
