import type { GroupShardView, ShardMove, SlotClaim } from '@kvstore/protocol'
import { checkShardOwnership } from '../src/checkers/index.js'

const claim = (first: number, last: number, group: string, version = 1): SlotClaim => ({
  first,
  last,
  group,
  version,
  sinceLsn: 0,
})

function view(
  group: string,
  claims: SlotClaim[],
  extra: Partial<GroupShardView> = {},
): GroupShardView {
  return {
    group,
    appliedLsn: 10,
    claims,
    fenced: '',
    map: { version: 1, slotCount: 4096, groups: [], slots: [] },
    move: null,
    history: [],
    imports: [],
    ...extra,
  }
}

const move: ShardMove = {
  id: 'm1',
  slots: [{ first: 100, last: 163 }],
  target: 'g2',
  phase: 'fenced',
  fenceLsn: 7,
  version: 3,
  startedAtMs: 0,
  updatedAtMs: 0,
  targetLsn: 0,
  error: '',
}

const groups = ['g1', 'g2']

describe('checkShardOwnership', () => {
  it('is valid when the claims cover every slot exactly once, after moves both ways', () => {
    const v = checkShardOwnership({
      groups,
      views: [
        view('g1', [claim(0, 99, 'g1'), claim(164, 2047, 'g1'), claim(3000, 3000, 'g1', 4)]),
        view('g2', [claim(100, 163, 'g2', 3), claim(2048, 2999, 'g2'), claim(3001, 4095, 'g2')]),
      ],
      members: [
        {
          group: 'g1',
          node: 'n2',
          view: view('g1', [
            claim(0, 99, 'g1'),
            claim(164, 2047, 'g1'),
            claim(3000, 3000, 'g1', 4),
          ]),
        },
      ],
      settled: true,
      waitedMs: 10,
    })
    expect(v).toMatchObject({ checker: 'shard-ownership', valid: true })
    expect(v.summary).toBe(
      "every one of the 4096 slots is owned by exactly one group (g1: 1985 slots in 3 ranges, g2: 2111 slots in 3 ranges), no fence left, and every member asked (1) holds its group's claims",
    )
  })

  it('is invalid when two groups claim a slot, naming the slots and the groups', () => {
    const v = checkShardOwnership({
      groups,
      views: [
        view('g1', [claim(0, 2047, 'g1')]),
        view('g2', [claim(2000, 2010, 'g2', 2), claim(2048, 4095, 'g2')]),
      ],
      settled: true,
      waitedMs: 10,
    })
    expect(v.valid).toBe(false)
    expect(v.summary).toBe('slots owned by more than one group: 2000-2010 (g1 and g2)')
    expect(v.details.ownedTwice).toBe('2000-2010')
  })

  it('is invalid when no group claims a slot', () => {
    const v = checkShardOwnership({
      groups,
      views: [
        view('g1', [claim(0, 99, 'g1'), claim(164, 2047, 'g1')]),
        view('g2', [claim(2048, 4095, 'g2')]),
      ],
      settled: true,
      waitedMs: 10,
    })
    expect(v.valid).toBe(false)
    expect(v.summary).toBe('no group owns slots 100-163')
  })

  it('is invalid when a move is still in flight, or a fence outlives its move', () => {
    const running = checkShardOwnership({
      groups,
      views: [
        view('g1', [claim(0, 2047, 'g1')], { move, fenced: '100-163' }),
        view('g2', [claim(2048, 4095, 'g2')]),
      ],
      settled: false,
      waitedMs: 60_000,
    })
    expect(running.valid).toBe(false)
    expect(running.summary).toBe("g1's move m1 of 100-163 to g2 is still fenced after 60 s")
    const stuck = checkShardOwnership({
      groups,
      views: [
        view('g1', [claim(0, 2047, 'g1')], { fenced: '100-163' }),
        view('g2', [claim(2048, 4095, 'g2')]),
      ],
      settled: true,
      waitedMs: 10,
    })
    expect(stuck.valid).toBe(false)
    expect(stuck.summary).toBe('g1 still fences 100-163 with no move in flight')
  })

  it('is invalid when a group does not answer, or a member disagrees with its group', () => {
    const silent = checkShardOwnership({
      groups,
      views: [view('g1', [claim(0, 2047, 'g1')]), null],
      settled: false,
      waitedMs: 60_000,
    })
    expect(silent.valid).toBe(false)
    expect(silent.summary).toBe('g2 did not answer GET /v1/shards')
    const split = checkShardOwnership({
      groups,
      views: [view('g1', [claim(0, 2047, 'g1')]), view('g2', [claim(2048, 4095, 'g2')])],
      members: [{ group: 'g2', node: 'n5', view: view('g2', [claim(2000, 4095, 'g2')]) }],
      settled: true,
      waitedMs: 10,
    })
    expect(split.valid).toBe(false)
    expect(split.summary).toBe(
      'members disagree with their group: n5 (g2) claims 2000-4095, its group 2048-4095',
    )
  })
})
