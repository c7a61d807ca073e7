import {
  shardMapOfFile,
  slotOfKey,
  type GroupShardView,
  type ShardMap,
  type SlotClaim,
} from '@kvstore/protocol'
import { ShardMapCache, compileMap, singleGroupMap } from '../src/shard-map.js'

const file = {
  groups: [
    { id: 'g1', members: [{ id: 'a1', url: 'https://127.0.0.1:7001' }], slots: '0-2047' },
    { id: 'g2', members: [{ id: 'b1', url: 'https://127.0.0.1:7011' }], slots: '2048-4095' },
  ],
}

function view(group: string, claims: SlotClaim[], map?: ShardMap): GroupShardView {
  return {
    group,
    appliedLsn: 0,
    claims,
    fenced: '',
    map: map ?? shardMapOfFile(file),
    move: null,
    history: [],
    imports: [],
  }
}

describe('the shard map cache', () => {
  it('compiles a map to a slot table', () => {
    const table = compileMap(shardMapOfFile(file))
    expect(table.single).toBe(false)
    expect(table.owner[0]).toBe(0)
    expect(table.owner[2047]).toBe(0)
    expect(table.owner[2048]).toBe(1)
    expect(table.sinceLsn[4095]).toBe(0)
    expect(table.version).toBe(1)
  })

  it('makes one group owning everything from --group', () => {
    const map = singleGroupMap('main=https://127.0.0.1:7001, https://127.0.0.1:7002/')
    expect(map.groups).toEqual([
      {
        id: 'main',
        members: [
          { id: 'main-m1', url: 'https://127.0.0.1:7001' },
          { id: 'main-m2', url: 'https://127.0.0.1:7002' },
        ],
      },
    ])
    expect(compileMap(map).single).toBe(true)
    expect(() => singleGroupMap('https://x')).toThrow(/ID=URL/)
    expect(() => singleGroupMap('g=')).toThrow(/no member/)
    expect(() => singleGroupMap('g=nope')).toThrow(/not a URL/)
    expect(() => singleGroupMap('g=http://a:1,http://a:1')).toThrow(/twice/)
  })

  it('takes a moved claim with a higher version, with its since-LSN', () => {
    const cache = new ShardMapCache(shardMapOfFile(file))
    const moved: SlotClaim = { first: 0, last: 99, group: 'g2', version: 2, sinceLsn: 500 }
    const g2Claims: SlotClaim[] = [
      moved,
      { first: 2048, last: 4095, group: 'g2', version: 1, sinceLsn: 0 },
    ]
    expect(cache.merge([view('g2', g2Claims)])).toBe(true)
    const table = cache.table
    expect(table.version).toBe(2)
    expect(table.owner[0]).toBe(1)
    expect(table.owner[99]).toBe(1)
    expect(table.owner[100]).toBe(0)
    expect(table.sinceLsn[50]).toBe(500)
    // The same views again change nothing.
    expect(cache.merge([view('g2', g2Claims)])).toBe(false)
  })

  it('keeps what it knows when a group does not answer, and never goes back to an older owner', () => {
    const cache = new ShardMapCache(shardMapOfFile(file))
    cache.merge([view('g2', [{ first: 0, last: 9, group: 'g2', version: 2, sinceLsn: 7 }])])
    // g2 is silent now; g1 still claims its starting slots at version 1 (a stale view).
    const stale: SlotClaim[] = [{ first: 0, last: 2047, group: 'g1', version: 1, sinceLsn: 0 }]
    expect(cache.merge([view('g1', stale)])).toBe(false)
    expect(cache.table.owner[5]).toBe(1)
    // A later move back wins.
    cache.merge([view('g1', [{ first: 0, last: 9, group: 'g1', version: 3, sinceLsn: 90 }])])
    expect(cache.table.owner[5]).toBe(0)
    expect(cache.table.sinceLsn[5]).toBe(90)
  })

  it('drops claims of unknown groups and malformed claims', () => {
    const cache = new ShardMapCache(shardMapOfFile(file))
    const bad = [
      { first: 0, last: 10, group: 'g9', version: 9, sinceLsn: 0 },
      { first: -1, last: 10, group: 'g2', version: 9, sinceLsn: 0 },
      { first: 10, last: 5000, group: 'g2', version: 9, sinceLsn: 0 },
      { first: 10, last: 11, group: 'g2', version: 'x', sinceLsn: 0 },
    ] as unknown as SlotClaim[]
    expect(cache.merge([view('g2', bad, { groups: [], slots: [] } as unknown as ShardMap)])).toBe(
      false,
    )
  })

  it('routes hash-tagged keys to one slot', () => {
    expect(slotOfKey('{user42}/profile')).toBe(slotOfKey('{user42}/cart'))
  })
})
