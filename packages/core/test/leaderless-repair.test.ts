import { HybridClock } from '../src/hlc.js'
import { writeState, type VersionedState } from '../src/conflicts.js'
import { HashRing } from '../src/ring.js'
import {
  AntiEntropyIndex,
  collectionConfirmed,
  confirmsTombstone,
  differingLeaves,
  hintExpired,
  mayHintFor,
  mergeIncoming,
  pickStandIn,
  replicaSetOf,
  ringReplicaSets,
  sharedSets,
  tombstoneCollectable,
} from '../src/leaderless/index.js'

const clock = new HybridClock('n1')
const empty: VersionedState<string> = { vector: {}, siblings: [] }
const at = (wallMs: number, base: VersionedState<string>, counter: number, value: string | null) =>
  writeState(
    base,
    'a',
    counter,
    base.vector,
    { value, hlc: { ...clock.now(0), wallMs } },
    'siblings',
  )
const policy = { mode: 'siblings' as const, siblingsMax: 4, tombstoneGcMs: 1000 }

describe('merging a state from another member', () => {
  const value = at(100, empty, 1, 'v')
  const deleted = at(200, value, 2, null)

  it('takes what it did not hold, and only what changes its copy', () => {
    expect(mergeIncoming(null, value, 500, policy)).toMatchObject({ changed: true, state: value })
    expect(mergeIncoming(value, value, 500, policy).changed).toBe(false)
    const merged = mergeIncoming(value, deleted, 500, policy)
    expect(merged.changed).toBe(true)
    expect(merged.state.siblings.map((s) => s.value.value)).toEqual([null])
    // The newer copy does not go back.
    expect(mergeIncoming(deleted, value, 500, policy).changed).toBe(false)
  })

  it('does not take back a tombstone old enough to have been collected', () => {
    expect(mergeIncoming(null, deleted, 1199, policy).changed).toBe(true)
    expect(mergeIncoming(null, deleted, 1201, policy).changed).toBe(false)
  })

  it('drops the oldest siblings past the cap, and says how many', () => {
    let many = empty
    for (let i = 1; i <= 6; i++)
      many = writeState(
        many,
        `x${i}`,
        1,
        {},
        { value: `v${i}`, hlc: { wallMs: i, logical: 0, node: 'n' } },
        'siblings',
      )
    const merged = mergeIncoming(null, many, 10, policy)
    expect(merged.state.siblings).toHaveLength(4)
    expect(merged.dropped).toBe(2)
  })
})

describe('hinted handoff', () => {
  it('expires hints past the window and stops hinting for a member down that long', () => {
    expect(hintExpired(1000, 2000, 1000)).toBe(false)
    expect(hintExpired(1000, 2001, 1000)).toBe(true)
    expect(mayHintFor(0, 99_999, 1000)).toBe(true)
    expect(mayHintFor(1000, 1999, 1000)).toBe(true)
    expect(mayHintFor(1000, 2000, 1000)).toBe(false)
  })

  it('picks the first healthy stand-in not used yet', () => {
    const up = (m: string) => m !== 'n4'
    expect(pickStandIn(['n4', 'n5', 'n6'], new Set(), up)).toBe('n5')
    expect(pickStandIn(['n4', 'n5', 'n6'], new Set(['n5']), up)).toBe('n6')
    expect(pickStandIn(['n4', 'n5'], new Set(['n5']), up)).toBeUndefined()
  })
})

describe('tombstone collection', () => {
  const value = at(100, empty, 1, 'v')
  const deleted = at(200, value, 2, null)

  it('is eligible only for old tombstones', () => {
    expect(tombstoneCollectable(value, 99_999, 1000)).toBe(false)
    expect(tombstoneCollectable(deleted, 1200, 1000)).toBe(false)
    expect(tombstoneCollectable(deleted, 1201, 1000)).toBe(true)
  })

  it('needs every other replica to hold the same tombstone or nothing', () => {
    expect(collectionConfirmed(deleted, [deleted, null])).toBe(true)
    expect(collectionConfirmed(deleted, [deleted, value])).toBe(false)
    expect(collectionConfirmed(deleted, [deleted, 'unreachable'])).toBe(false)
    expect(confirmsTombstone(null, 0)).toBe(true)
    // The unsafe switch skips the confirmations (the simulator must catch that).
    expect(collectionConfirmed(deleted, [value], true)).toBe(true)
  })
})

describe('anti-entropy', () => {
  const ring = new HashRing(['n1', 'n2', 'n3', 'n4', 'n5'], 8)

  it('names replica sets the way every member does', () => {
    const sets = ringReplicaSets(ring, 3)
    expect(sets.length).toBeGreaterThan(1)
    for (const set of sets) expect(set.split(',')).toHaveLength(3)
    expect(sets).toContain(replicaSetOf(ring, 'some-key', 3))
    for (const set of sharedSets(sets, 'n1', 'n2'))
      expect(set.split(',')).toEqual(expect.arrayContaining(['n1', 'n2']))
  })

  it('finds the leaves of the keys two members hold differently', () => {
    const a = new AntiEntropyIndex(4)
    const b = new AntiEntropyIndex(4)
    const value = at(100, empty, 1, 'v')
    const newer = at(300, value, 2, 'w')
    for (let i = 0; i < 50; i++) {
      a.update('s', `k${i}`, value)
      b.update('s', `k${i}`, value)
    }
    expect(a.root('s')).toBe(b.root('s'))
    expect(differingLeaves(a.leafDigests('s'), b.leafDigests('s'))).toEqual([])
    b.update('s', 'k7', newer)
    const leaves = differingLeaves(a.leafDigests('s'), b.leafDigests('s'))
    expect(leaves).toHaveLength(1)
    expect(a.keysIn('s', leaves[0] as number)).toContain('k7')
    b.update('s', 'k7', value)
    expect(b.root('s')).toBe(a.root('s'))
    expect(() => differingLeaves([1], [1, 2])).toThrow(/different sizes/)
  })

  it('tracks the keys holding only tombstones', () => {
    const index = new AntiEntropyIndex(2)
    const value = at(100, empty, 1, 'v')
    index.update('s', 'k', value)
    expect(index.tombstoned()).toEqual([])
    index.update('s', 'k', at(200, value, 2, null))
    expect(index.tombstoned()).toEqual(['k'])
    expect(index.keyCount('s')).toBe(1)
    index.update('s', 'k', null)
    expect(index.tombstoned()).toEqual([])
    expect(index.holds('k')).toBe(false)
  })
})
