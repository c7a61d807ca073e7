import { ClassicLevel } from 'classic-level'
import { decodeLogEntry, encodeStoredRecord, EntryKind, OpType } from '@kvstore/protocol'
import { Sequencer, Store, requestFingerprint } from '../src/index.js'
import { MetaName, metaKey } from '../src/layout.js'
import { dump, entry, openStore, put, tempDir, useTempDir } from './helpers.js'

const tmp = useTempDir()

describe('epoch history', () => {
  it('records where each epoch begins, through truncation, compaction and reopen', async () => {
    const store = await openStore(tmp.dir)
    await store.setHardState({ epoch: 3 })
    await store.append([entry(1, [put('a', '1')], 1), entry(2, [put('a', '2')], 1)], {
      commitLsn: 2,
    })
    await store.append([entry(3, [put('a', '3')], 2), entry(4, [put('a', '4')], 3)])
    expect(store.meta.epochRuns).toEqual([
      { epoch: 1, startLsn: 1 },
      { epoch: 2, startLsn: 3 },
      { epoch: 3, startLsn: 4 },
    ])
    await store.truncateAfter(3)
    expect(store.meta.epochRuns).toEqual([
      { epoch: 1, startLsn: 1 },
      { epoch: 2, startLsn: 3 },
    ])
    await store.setHardState({ commitLsn: 3 })
    await store.compactLog(3)
    expect(store.meta.epochRuns).toEqual([{ epoch: 2, startLsn: 3 }])
    await store.close()
    const reopened = await Store.open({ dir: tmp.dir, nodeId: 'n1' })
    expect(reopened.meta.epochRuns).toEqual([{ epoch: 2, startLsn: 3 }])
    expect(reopened.meta.compactedEpoch).toBe(1)
    await reopened.close()
  })

  it('rebuilds the history from the log for a directory written without it', async () => {
    const store = await openStore(tmp.dir)
    await store.setHardState({ epoch: 2 })
    await store.append([entry(1, [put('a', '1')], 1), entry(2, [put('b', '2')], 2)], {
      commitLsn: 2,
    })
    await store.close()
    const db = new ClassicLevel<Buffer, Buffer>(tmp.dir, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
    })
    await db.del(metaKey(MetaName.EpochRuns))
    await db.close()
    const reopened = await Store.open({ dir: tmp.dir, nodeId: 'n1' })
    expect(reopened.meta.epochRuns).toEqual([
      { epoch: 1, startLsn: 1 },
      { epoch: 2, startLsn: 2 },
    ])
    await reopened.close()
  })
})

describe('raw log reads', () => {
  it('returns the stored bytes with their LSN and epoch', async () => {
    const store = await openStore(tmp.dir)
    const entries = [
      entry(1, [put('a', '1')]),
      entry(2, [put('b', '2')]),
      entry(3, [put('c', '3')]),
    ]
    await store.append(entries)
    const raw = await store.readLog(2, { entriesMax: 10, bytesMax: 1 << 20 }, { raw: true })
    expect(raw.map((r) => [r.lsn, r.epoch])).toEqual([
      [2, 1],
      [3, 1],
    ])
    expect(decodeLogEntry(raw[0]?.data as Buffer)).toEqual(entries[1])
    expect(await store.readLog(1, { entriesMax: 10, bytesMax: 1 }, { raw: true })).toHaveLength(1)
    await store.close()
  })
})

describe('request ids', () => {
  const withId = (lsn: number, key: string, requestId: string, timestampMs = 1000 + lsn) => ({
    ...entry(lsn, [put(key, `v${lsn}`)]),
    requestId,
    timestampMs,
  })

  it('are remembered with their entry, forgotten on truncation and after the retention', async () => {
    const store = await openStore(tmp.dir)
    await store.append([withId(1, 'a', 'req-1', 1000), withId(2, 'b', 'req-2', 2000)], {
      commitLsn: 2,
    })
    await store.append([withId(3, 'c', 'req-3', 3000)])
    expect(store.getRequest('req-1')).toEqual({
      lsn: 1,
      epoch: 1,
      timestampMs: 1000,
      fingerprint: Buffer.alloc(0),
    })
    expect(store.getRequest('req-3')?.lsn).toBe(3)
    await store.truncateAfter(2)
    expect(store.getRequest('req-3')).toBeNull()
    expect(await store.expireRequests(1500)).toBe(1)
    expect(store.getRequest('req-1')).toBeNull()
    expect(store.getRequest('req-2')?.lsn).toBe(2)
    await store.close()
  })

  it('make a retried write apply once, in flight or durable', async () => {
    const store = await openStore(tmp.dir)
    const seq = new Sequencer(store, { now: () => 5 })
    const request = {
      kind: 'put' as const,
      ops: [{ type: 'put' as const, key: Buffer.from('k'), value: Buffer.from('1') }],
      requestId: 'retry-me',
    }
    const [first, concurrent] = await Promise.all([seq.write(request), seq.write(request)])
    expect(first).toMatchObject({ lsn: 1, deduplicated: false })
    expect(concurrent).toMatchObject({ lsn: 1, deduplicated: true })
    const later = await seq.write({ ...request })
    expect(later).toMatchObject({ lsn: 1, deduplicated: true, results: [{ version: 1 }] })
    // The id is bound to the request: with a condition added it is another request.
    await expect(
      seq.write({ ...request, ops: [{ ...request.ops[0]!, ifAbsent: true }] }),
    ).rejects.toMatchObject({ code: 'KV_ERR_REQUEST_ID_REUSED' })
    expect(store.appliedLsn).toBe(1)
    // The record is part of the entry: a restart keeps it.
    await store.close()
    const reopened = await Store.open({ dir: tmp.dir, nodeId: 'n1' })
    const reopenedSeq = new Sequencer(reopened, { now: () => 6 })
    const again = await reopenedSeq.write(request)
    expect(again).toMatchObject({ lsn: 1, deduplicated: true })
    await expect(
      reopenedSeq.write({ ...request, ops: [{ ...request.ops[0]!, value: Buffer.from('2') }] }),
    ).rejects.toMatchObject({ code: 'KV_ERR_REQUEST_ID_REUSED' })
    expect(reopened.appliedLsn).toBe(1)
    await reopened.close()
  })

  it('a record written before fingerprints existed (empty) still dedupes any retry', async () => {
    const store = await openStore(tmp.dir)
    // An entry as an older build wrote it: a request id and no fingerprint.
    await store.append([withId(1, 'k', 'old-id')], { commitLsn: 1 })
    expect(store.getRequest('old-id')?.fingerprint).toHaveLength(0)
    const seq = new Sequencer(store, { now: () => 5 })
    const retry = await seq.write({
      kind: 'put',
      ops: [{ type: 'put', key: Buffer.from('k'), value: Buffer.from('v1') }],
      requestId: 'old-id',
    })
    expect(retry).toMatchObject({ lsn: 1, deduplicated: true })
    expect(store.appliedLsn).toBe(1)
    await store.close()
  })

  it('are bound on a follower too, from the bytes the leader wrote, and after expiry are free', async () => {
    const other = await tempDir()
    const leader = await openStore(other.dir, { nodeId: 'leader' })
    const request = {
      kind: 'put' as const,
      ops: [{ type: 'put' as const, key: Buffer.from('k'), value: Buffer.from('1') }],
      requestId: 'failover-1',
    }
    await new Sequencer(leader, { now: () => 1000 }).write(request)
    const raw = await leader.readLog(1, { entriesMax: 10, bytesMax: 1 << 20 }, { raw: true })
    const follower = await openStore(tmp.dir)
    await follower.appendEncoded(
      {
        entries: raw.map((r) => decodeLogEntry(r.data)),
        encoded: raw.map((r) => r.data),
        bytes: raw.reduce((n, r) => n + r.data.length, 0),
      },
      { commitLsn: 1 },
    )
    expect(follower.getRequest('failover-1')).toEqual(leader.getRequest('failover-1'))
    expect(follower.getRequest('failover-1')?.fingerprint).toHaveLength(16)
    // The follower becomes the leader: a retry is deduplicated, a reuse refused.
    const promoted = new Sequencer(follower, { now: () => 2000 })
    expect(await promoted.write(request)).toMatchObject({ lsn: 1, deduplicated: true })
    const reuse = {
      ...request,
      ops: [{ type: 'put' as const, key: Buffer.from('elsewhere'), value: Buffer.from('1') }],
    }
    await expect(promoted.write(reuse)).rejects.toMatchObject({
      code: 'KV_ERR_REQUEST_ID_REUSED',
      details: { requestId: 'failover-1', lsn: 1 },
    })
    expect(follower.appliedLsn).toBe(1)
    // Past the retention the id is forgotten, and free for another request.
    expect(await follower.expireRequests(1500)).toBe(1)
    expect(await promoted.write(reuse)).toMatchObject({ lsn: 2, deduplicated: false })
    await follower.close()
    await leader.close()
    await other.cleanup()
  })
})

describe('snapshot install', () => {
  async function leaderSnapshot() {
    const other = await tempDir()
    const leader = await openStore(other.dir, { nodeId: 'leader' })
    await leader.append(
      Array.from({ length: 50 }, (_, i) => entry(i + 1, [put(`k${i % 20}`, `v${i}`)])),
      { commitLsn: 50 },
    )
    return { leader, other }
  }

  it('replaces the whole state and restarts the log after the snapshot', async () => {
    const { leader, other } = await leaderSnapshot()
    const follower = await openStore(tmp.dir)
    await follower.append([entry(1, [put('old', 'x')])], { commitLsn: 1 })
    const snapshot = await leader.openSnapshot()
    await follower.beginSnapshotInstall(snapshot.appliedLsn, snapshot.lastEpoch)
    expect(() => follower.getSync(Buffer.from('k1'))).toThrow(/installing a snapshot/)
    // The asynchronous reads refuse with a rejected promise, as before the split.
    const refused = follower.get(Buffer.from('k1'))
    await expect(refused).rejects.toThrow(/installing a snapshot/)
    await expect(follower.list({ limit: 10 })).rejects.toThrow(/installing a snapshot/)
    await expect(follower.openSnapshot()).rejects.toThrow(/installing a snapshot/)
    for await (const chunk of snapshot.rawChunks(7)) await follower.addSnapshotRecords(chunk)
    await snapshot.close()
    const digest = await follower.finishSnapshotInstall()
    expect(digest).toEqual(await leader.digest())
    expect(follower.meta).toMatchObject({
      appliedLsn: 50,
      commitLsn: 50,
      logStartLsn: 51,
      lastEpoch: 1,
    })
    expect(await dump(follower)).toEqual(await dump(leader))
    // The log continues after the snapshot.
    await follower.append([entry(51, [put('new', 'y')])], { commitLsn: 51 })
    await follower.close()
    const reopened = await Store.open({ dir: tmp.dir, nodeId: 'n1' })
    expect((await reopened.verify()).entries).toBe(1)
    await reopened.close()
    await leader.close()
    await other.cleanup()
  })

  it('carries the request ids, and an install that broke off can start over', async () => {
    const other = await tempDir()
    const leader = await openStore(other.dir, { nodeId: 'leader' })
    await leader.append(
      Array.from({ length: 30 }, (_, i) => ({
        ...entry(i + 1, [put(`k${i % 10}`, `v${i}`)]),
        requestId: `req-${i + 1}`,
        requestFingerprint: requestFingerprint({
          kind: 'put',
          ops: [{ type: 'put', key: Buffer.from(`k${i % 10}`), value: Buffer.from(`v${i}`) }],
        }),
        timestampMs: 5000 + i,
      })),
      { commitLsn: 30 },
    )
    const follower = await openStore(tmp.dir)
    await follower.append([entry(1, [put('old', 'x')])], { commitLsn: 1 })
    const snapshot = await leader.openSnapshot()
    // A first attempt is cut off after one chunk...
    await follower.beginSnapshotInstall(snapshot.appliedLsn, snapshot.lastEpoch)
    for await (const chunk of snapshot.rawChunks(4)) {
      await follower.addSnapshotRecords(chunk)
      break
    }
    // ...and the next one starts over from nothing.
    await follower.beginSnapshotInstall(snapshot.appliedLsn, snapshot.lastEpoch)
    for await (const chunk of snapshot.rawChunks(4)) await follower.addSnapshotRecords(chunk)
    for await (const chunk of snapshot.requestChunks(7)) await follower.addSnapshotRequests(chunk)
    await snapshot.close()
    expect(await follower.finishSnapshotInstall()).toEqual(await leader.digest())
    for (let lsn = 1; lsn <= 30; lsn++) {
      expect(follower.getRequest(`req-${lsn}`)).toEqual(leader.getRequest(`req-${lsn}`))
      expect(follower.getRequest(`req-${lsn}`)?.fingerprint).toHaveLength(16)
    }
    // The installed records bind their ids: a retry is deduplicated, a reuse refused.
    const installed = new Sequencer(follower, { now: () => 9000 })
    const retry = {
      kind: 'put' as const,
      ops: [{ type: 'put' as const, key: Buffer.from('k4'), value: Buffer.from('v4') }],
      requestId: 'req-5',
    }
    expect(await installed.write(retry)).toMatchObject({ lsn: 5, deduplicated: true })
    await expect(
      installed.write({
        ...retry,
        ops: [{ type: 'put', key: Buffer.from('k4'), value: Buffer.from('other') }],
      }),
    ).rejects.toMatchObject({ code: 'KV_ERR_REQUEST_ID_REUSED' })
    expect(follower.appliedLsn).toBe(30)
    // They expire like any other: the time index came along.
    expect(await follower.expireRequests(5010)).toBe(10)
    expect(follower.getRequest('req-10')).toBeNull()
    expect(follower.getRequest('req-11')?.lsn).toBe(11)
    await expect(
      leader.openSnapshot().then(async (s) => {
        await s.close()
        await follower.beginSnapshotInstall(31, 1)
        return follower.addSnapshotRequests([{ id: 'bad', record: Buffer.from('junk') }])
      }),
    ).rejects.toThrow()
    expect(follower.failed).toBeNull()
    await follower.close()
    await leader.close()
    await other.cleanup()
  })

  it('refuses a snapshot record that does not decode, without failing the store', async () => {
    const follower = await openStore(tmp.dir)
    await follower.beginSnapshotInstall(10, 1)
    await expect(
      follower.addSnapshotRecords([{ key: Buffer.from('a'), record: Buffer.from('junk') }]),
    ).rejects.toThrow()
    expect(follower.failed).toBeNull()
    await expect(
      follower.addSnapshotRecords([
        {
          key: Buffer.from('a'),
          record: Buffer.from(
            encodeStoredRecord({ value: Buffer.from('v'), version: 99, tombstone: false }),
          ),
        },
      ]),
    ).rejects.toThrow(/past the snapshot/)
    await follower.close()
  })

  it('a crash during the install leaves an empty follower, never a partial state', async () => {
    const follower = await openStore(tmp.dir)
    await follower.append([entry(1, [put('old', 'x')])], { commitLsn: 1 })
    await follower.beginSnapshotInstall(40, 1)
    await follower.addSnapshotRecords([
      {
        key: Buffer.from('part'),
        record: Buffer.from(
          encodeStoredRecord({ value: Buffer.from('v'), version: 3, tombstone: false }),
        ),
      },
    ])
    // The process dies here: close without finishing, as a crash would leave it.
    await follower.close()
    const reopened = await Store.open({ dir: tmp.dir, nodeId: 'n1' })
    expect(reopened.meta).toMatchObject({ appliedLsn: 0, commitLsn: 0, logStartLsn: 1, epoch: 1 })
    expect(await dump(reopened)).toEqual({})
    await reopened.close()
  })
})

describe('follower appends', () => {
  it('writes the exact bytes the leader sent', async () => {
    const store = await openStore(tmp.dir)
    const e = {
      epoch: 1,
      lsn: 1,
      kind: EntryKind.Put,
      ops: [{ type: OpType.Put, key: Buffer.from('k'), value: Buffer.from('v') }],
      timestampMs: 7,
      requestId: 'r',
    }
    const { encodeLogEntry } = await import('@kvstore/protocol')
    const bytes = Buffer.from(encodeLogEntry(e))
    await store.appendEncoded({
      entries: [decodeLogEntry(bytes)],
      encoded: [bytes],
      bytes: bytes.length,
    })
    const [raw] = await store.readLog(1, { entriesMax: 1, bytesMax: 1 << 20 }, { raw: true })
    expect(raw?.data.equals(bytes)).toBe(true)
    await store.close()
  })
})
