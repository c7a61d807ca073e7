/**
 * A snapshot cut at the commit LSN: the state a leader ships to a follower, which takes the
 * whole snapshot as committed. Entries above the commit LSN are left out by applying their
 * undo images, so a follower never installs a write that a truncation could still remove.
 */
import type { Store } from '../src/index.js'
import { del, dump, entry, openStore, put, tempDir, useTempDir } from './helpers.js'

const tmp = useTempDir()

/** What a snapshot holds, as key -> value@version, and its request ids. */
async function contents(store: Store, committed: boolean) {
  const snapshot = await store.openSnapshot({ committed })
  const records: Record<string, string> = {}
  const raw: Record<string, number> = {}
  const requests: string[] = []
  try {
    for await (const { key, record } of snapshot.records(3)) {
      records[key.toString()] = `${record.value.toString()}@${record.version}`
    }
    for await (const chunk of snapshot.rawChunks(2)) {
      for (const { key } of chunk) raw[key.toString()] = (raw[key.toString()] ?? 0) + 1
    }
    for await (const chunk of snapshot.requestChunks(2)) requests.push(...chunk.map((r) => r.id))
    return { lsn: snapshot.appliedLsn, epoch: snapshot.lastEpoch, records, raw, requests }
  } finally {
    await snapshot.close()
  }
}

const withId = (e: ReturnType<typeof entry>, id: string) => ({ ...e, requestId: id })

describe('a snapshot cut at the commit LSN', () => {
  it('holds the committed state: uncommitted puts, deletes and new keys are undone', async () => {
    const store = await openStore(tmp.dir)
    await store.setHardState({ epoch: 2 })
    await store.append(
      [
        withId(entry(1, [put('a', 'a1'), put('b', 'b1'), put('c', 'c1')], 1), 'r1'),
        withId(entry(2, [put('e', 'e2')], 1), 'r2'),
        entry(3, [put('c', 'c3')], 1),
      ],
      { commitLsn: 3 },
    )
    // Above the commit LSN: overwrite a twice, delete b, create d, delete e then recreate it.
    await store.append([
      withId(entry(4, [put('a', 'a4'), del('b')], 2), 'r4'),
      entry(5, [put('d', 'd5'), del('e')], 2),
      withId(entry(6, [put('a', 'a6'), put('e', 'e6')], 2), 'r6'),
    ])
    expect(store.meta).toMatchObject({ commitLsn: 3, appliedLsn: 6 })

    const applied = await contents(store, false)
    expect(applied.lsn).toBe(6)
    expect(applied.records).toEqual({ a: 'a6@6', c: 'c3@3', d: 'd5@5', e: 'e6@6' })
    expect(applied.requests.sort()).toEqual(['r1', 'r2', 'r4', 'r6'])

    const cut = await contents(store, true)
    expect(cut).toMatchObject({ lsn: 3, epoch: 1 })
    expect(cut.records).toEqual({ a: 'a1@1', b: 'b1@1', c: 'c3@3', e: 'e2@2' })
    // Each key once, in the raw chunks too.
    expect(cut.raw).toEqual({ a: 1, b: 1, c: 1, e: 1 })
    expect(cut.requests.sort()).toEqual(['r1', 'r2'])

    // A follower that installs the cut has exactly the committed state, and its digest.
    const other = await tempDir()
    const reference = await openStore(other.dir, { nodeId: 'ref' })
    await reference.append(
      [
        withId(entry(1, [put('a', 'a1'), put('b', 'b1'), put('c', 'c1')], 1), 'r1'),
        withId(entry(2, [put('e', 'e2')], 1), 'r2'),
        entry(3, [put('c', 'c3')], 1),
      ],
      { commitLsn: 3 },
    )
    const followerDir = await tempDir()
    const follower = await openStore(followerDir.dir, { nodeId: 'f' })
    const snapshot = await store.openSnapshot({ committed: true })
    await follower.beginSnapshotInstall(snapshot.appliedLsn, snapshot.lastEpoch)
    for await (const chunk of snapshot.rawChunks(2)) await follower.addSnapshotRecords(chunk)
    for await (const chunk of snapshot.requestChunks(2)) await follower.addSnapshotRequests(chunk)
    await snapshot.close()
    const digest = await follower.finishSnapshotInstall()
    expect(digest).toEqual(await reference.digest())
    expect(follower.meta).toMatchObject({ appliedLsn: 3, commitLsn: 3, logStartLsn: 4 })
    expect(follower.getRequest('r4')).toBeNull()
    // The leader's entries above the cut follow on the follower's log as usual.
    await follower.setHardState({ epoch: 2 })
    await follower.append(await store.readLog(4))
    expect(await dump(follower)).toEqual(await dump(store))

    await Promise.all([store.close(), reference.close(), follower.close()])
    await Promise.all([other.cleanup(), followerDir.cleanup()])
  })

  it('is the applied state when everything is committed, and finds the epoch of a compacted cut', async () => {
    const store = await openStore(tmp.dir)
    await store.append([entry(1, [put('a', '1')]), entry(2, [put('b', '2')])], { commitLsn: 2 })
    expect(await contents(store, true)).toMatchObject({ lsn: 2, records: { a: '1@1', b: '2@2' } })
    // The log compacted up to the commit LSN: the cut's epoch comes from the metadata.
    await store.compactLog(3)
    await store.setHardState({ epoch: 3 })
    await store.append([entry(3, [put('a', '3')], 3)])
    expect(await contents(store, true)).toMatchObject({
      lsn: 2,
      epoch: 1,
      records: { a: '1@1', b: '2@2' },
    })
    await store.close()
  })
})
