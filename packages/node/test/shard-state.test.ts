/**
 * What a group serves, on a real store: keys of slots it does not own are refused, fenced slots
 * take no writes, a batch across owners is refused whole, and a fence takes effect for every
 * write sequenced after it even before it is durable.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import { KvError, shardMapOfFile, slotOfKey } from '@kvstore/protocol'
import { Sequencer, Store, type WriteRequest } from '@kvstore/storage'
import { ShardState } from '../src/shards/state.js'

const map = shardMapOfFile({
  groups: [
    { id: 'g1', members: [{ id: 'n1', url: 'https://127.0.0.1:7001' }], slots: '0-2047' },
    { id: 'g2', members: [{ id: 'n2', url: 'https://127.0.0.1:7011' }], slots: '2048-4095' },
  ],
})

function keyIn(first: number, last: number, tag: string): Buffer {
  for (let i = 0; ; i++) {
    const key = `${tag}-${i}`
    const slot = slotOfKey(key)
    if (slot >= first && slot <= last) return Buffer.from(key)
  }
}

let dir: string
let store: Store
let state: ShardState
let sequencer: Sequencer

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kv-shard-state-'))
  store = await Store.open({ dir, nodeId: 'n1' })
  await store.setHardState({ epoch: 1 })
  state = new ShardState(
    store,
    { group: 'g1', initial: map, groups: map.groups },
    pino({ level: 'silent' }),
  )
  sequencer = new Sequencer(store, { now: Date.now, admit: (r) => state.admitWrite(r) })
})
afterEach(async () => {
  await store.close()
  await rm(dir, { recursive: true, force: true })
})

const code = async (request: WriteRequest): Promise<string | null> => {
  try {
    await sequencer.write(request)
    return null
  } catch (err) {
    return err instanceof KvError ? err.code : String(err)
  }
}

describe('a shard group', () => {
  it('takes keys of its slots and refuses others, naming the owner', async () => {
    const mine = keyIn(0, 2047, 'a')
    const theirs = keyIn(2048, 4095, 'b')
    expect(
      await code({ kind: 'put', ops: [{ type: 'put', key: mine, value: Buffer.from('x') }] }),
    ).toBeNull()
    try {
      state.check(theirs, 'read')
      expect.unreachable()
    } catch (err) {
      expect((err as KvError).code).toBe('KV_ERR_WRONG_SHARD')
      expect((err as KvError).details).toMatchObject({
        slot: slotOfKey(theirs),
        group: 'g2',
        endpoints: ['https://127.0.0.1:7011'],
        mapVersion: 1,
      })
    }
    expect(
      await code({ kind: 'put', ops: [{ type: 'put', key: theirs, value: Buffer.from('x') }] }),
    ).toBe('KV_ERR_WRONG_SHARD')
    // A batch across owners is refused whole, and one all of another owner is misdirected.
    expect(
      await code({
        kind: 'batch',
        ops: [
          { type: 'put', key: mine, value: Buffer.from('1') },
          { type: 'put', key: theirs, value: Buffer.from('2') },
        ],
      }),
    ).toBe('KV_ERR_CROSS_SHARD')
    expect(
      await code({
        kind: 'batch',
        ops: [
          { type: 'put', key: theirs, value: Buffer.from('1') },
          { type: 'put', key: keyIn(2048, 4095, 'c'), value: Buffer.from('2') },
        ],
      }),
    ).toBe('KV_ERR_WRONG_SHARD')
    expect((await store.get(mine))?.value.toString()).toBe('x')
    // The node itself may write anywhere (a move's import).
    expect(
      await code({
        kind: 'put',
        ops: [{ type: 'put', key: theirs, value: Buffer.from('x') }],
        origin: 'shard',
      }),
    ).toBeNull()
    expect(state.lists(theirs)).toBe(false)
    expect(state.lists(mine)).toBe(true)
  })

  it('fences slots for every write sequenced after the fence, before it is durable', async () => {
    const key = keyIn(0, 15, 'f')
    const fence = state.writeRecord(sequencer, (r) => ({ ...r, fenced: [{ first: 0, last: 15 }] }))
    // Not awaited: the fence is only sequenced, and the next write is already refused.
    const refused = await code({
      kind: 'put',
      ops: [{ type: 'put', key, value: Buffer.from('late') }],
    })
    expect(refused).toBe('KV_ERR_SLOT_MOVING')
    await fence
    expect(() => state.check(key, 'linearizable')).toThrow(/moving/)
    expect(() => state.check(key, 'read')).not.toThrow()
    expect(state.fencedSlots()).toBe(16)
    // The record is in the store: a new state over it sees the fence.
    const again = new ShardState(
      store,
      { group: 'g1', initial: map, groups: map.groups },
      pino({ level: 'silent' }),
    )
    expect(again.fencedSlots()).toBe(16)
    expect(again.stored).toBe(true)
  })

  it('moves a claim to another group at a higher version', async () => {
    await state.writeRecord(sequencer, (r) => ({
      ...r,
      slots: ShardState.reassign(r.slots, [{ first: 0, last: 99 }], 'g2', 2, 41),
    }))
    const key = keyIn(0, 99, 'm')
    expect(state.mapVersion).toBe(2)
    expect(state.ownedSlots()).toBe(2048 - 100)
    expect(() => state.check(key, 'write')).toThrow(/owned by group g2/)
    expect(state.view().claims).toEqual([
      { first: 100, last: 2047, group: 'g1', version: 1, sinceLsn: 0 },
    ])
  })
})
