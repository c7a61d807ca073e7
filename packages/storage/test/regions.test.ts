/**
 * Region mode in the sequencer: client writes get stamps above what they overwrite, deletes
 * leave stamped tombstones, reserved keys stay unstamped, and a computed request (a batch
 * from another region) decides against the state at the moment it is sequenced.
 */
import type { Stamp } from '@kvstore/protocol'
import { Sequencer, type Store } from '../src/index.js'
import { openStore, useTempDir } from './helpers.js'

const tmp = useTempDir()
let store: Store
let seq: Sequencer
let clock = 0

const b = (s: string) => Buffer.from(s)
const stamper = (current: Stamp | undefined): Stamp => {
  clock = Math.max(clock + 1, (current?.wallMs ?? 0) + 1)
  return { wallMs: clock, logical: 0, region: 'us' }
}

beforeEach(async () => {
  clock = 100
  store = await openStore(tmp.dir)
  seq = new Sequencer(store, { now: () => 42, commitOnAppend: true, stamper })
})
afterEach(async () => {
  await store.close()
})

describe('Sequencer in region mode', () => {
  it('stamps each write above the record it overwrites and reports both', async () => {
    const first = await seq.write({
      kind: 'put',
      ops: [{ type: 'put', key: b('k'), value: b('1') }],
    })
    expect(first.results[0]?.stamp).toEqual({ wallMs: 101, logical: 0, region: 'us' })
    expect(first.results[0]?.previousStamp).toBeNull()
    const second = await seq.write({
      kind: 'put',
      ops: [{ type: 'put', key: b('k'), value: b('2') }],
    })
    expect(second.results[0]?.previousStamp).toEqual(first.results[0]?.stamp)
    expect(store.getSync(b('k'))?.stamp).toEqual(second.results[0]?.stamp)
    // The log carries the stamp and the one it replaced, for shipping.
    const [entry] = await store.readLog(second.lsn, { entriesMax: 1, bytesMax: 1 << 20 })
    expect(entry?.ops[0]?.stamp).toEqual(second.results[0]?.stamp)
    expect(entry?.ops[0]?.prev).toEqual(first.results[0]?.stamp)
  })

  it('leaves a stamped tombstone on delete, which reads and conditions treat as absent', async () => {
    await seq.write({ kind: 'put', ops: [{ type: 'put', key: b('k'), value: b('1') }] })
    const gone = await seq.write({ kind: 'delete', ops: [{ type: 'delete', key: b('k') }] })
    const record = store.getSync(b('k'))
    expect(record?.tombstone).toBe(true)
    expect(record?.stamp).toEqual(gone.results[0]?.stamp)
    const page = await store.list({ limit: 10 })
    expect(page.items).toHaveLength(0)
    // Create-only passes on a tombstone; the new stamp is above the tombstone's.
    const again = await seq.write({
      kind: 'put',
      ops: [{ type: 'put', key: b('k'), value: b('2'), ifAbsent: true }],
    })
    expect(again.results[0]?.previousStamp).toEqual(gone.results[0]?.stamp)
    await expect(
      seq.write({ kind: 'delete', ops: [{ type: 'delete', key: b('nothing') }] }),
    ).rejects.toMatchObject({ code: 'KV_ERR_KEY_NOT_FOUND' })
  })

  it('never stamps reserved keys', async () => {
    await seq.write({ kind: 'put', ops: [{ type: 'put', key: b('\0auth/x'), value: b('1') }] })
    expect(store.getSync(b('\0auth/x'))?.stamp).toBeUndefined()
    await seq.write({ kind: 'delete', ops: [{ type: 'delete', key: b('\0auth/x') }] })
    expect(store.getSync(b('\0auth/x'))).toBeNull()
  })

  it('computes a request from the state when it is sequenced, pending writes included', async () => {
    const pending = seq.write({
      kind: 'put',
      ops: [{ type: 'put', key: b('k'), value: b('local') }],
    })
    let seen: string | undefined
    const shipped: Stamp = { wallMs: 1, logical: 0, region: 'eu' }
    const computed = seq.write({
      kind: 'batch',
      origin: 'region',
      ops: [],
      compute: (view) => {
        seen = view.read(b('k'))?.value.toString()
        return [{ type: 'put', key: b('other'), value: b('x'), stamp: shipped }]
      },
    })
    await Promise.all([pending, computed])
    // The local write was not durable yet, and the computation saw it all the same.
    expect(seen).toBe('local')
    // A given stamp is kept as it is, not re-stamped.
    expect(store.getSync(b('other'))?.stamp).toEqual(shipped)
  })
})
