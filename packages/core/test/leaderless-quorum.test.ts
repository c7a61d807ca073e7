import { HybridClock } from '../src/hlc.js'
import { emptyVersioned } from '../src/dvv.js'
import { writeState, type VersionedState } from '../src/conflicts.js'
import {
  ReadQuorum,
  WriteQuorum,
  mergeReplies,
  reachableTargets,
  staleReplicas,
  versionsOf,
} from '../src/leaderless/index.js'

const policy = { mode: 'siblings' as const, siblingsMax: 8 }
const clock = new HybridClock('n1')

function written(
  base: VersionedState<string>,
  actor: string,
  counter: number,
  value: string | null,
): VersionedState<string> {
  return writeState(
    base,
    actor,
    counter,
    base.vector,
    { value, hlc: clock.now(counter) },
    'siblings',
  )
}

const empty = emptyVersioned<{ value: string | null; hlc: never }>() as VersionedState<string>
const v1 = written(empty, 'a', 1, 'one')
const v2 = written(v1, 'a', 2, 'two')
const concurrent = written(empty, 'b', 1, 'other')

describe('the read quorum (get core)', () => {
  it('is met at R answers, merges them, and names the stale replicas', () => {
    const read = new ReadQuorum<string>(['n1', 'n2', 'n3'], 2, policy)
    expect(read.status).toBe('waiting')
    read.addReply('n1', v2)
    expect(read.enough()).toBe(false)
    read.addReply('n2', v1)
    expect(read.status).toBe('met')
    expect(read.enough()).toBe(true)
    // A blocking read waits for the third replica too.
    expect(read.enough(true)).toBe(false)
    expect(read.response()?.state).toEqual(v2)
    read.addReply('n3', null)
    expect(read.enough(true)).toBe(true)
    expect(read.repairs().stale.sort()).toEqual(['n2', 'n3'])
  })

  it('gives up as soon as R can no longer be met', () => {
    const read = new ReadQuorum<string>(['n1', 'n2', 'n3'], 2, policy)
    read.addFailure('n1')
    expect(read.status).toBe('waiting')
    read.addFailure('n2')
    expect(read.status).toBe('unreachable')
    expect(read.enough()).toBe(true)
    expect(read.response()).toBeNull()
  })

  it('keeps concurrent values as siblings and refuses answers it did not ask for', () => {
    const read = new ReadQuorum<string>(['n1', 'n2'], 2, policy)
    read.addReply('n1', v1)
    read.addReply('n2', concurrent)
    expect(
      read
        .response()
        ?.state?.siblings.map((s) => s.value.value)
        .sort(),
    ).toEqual(['one', 'other'])
    expect(() => read.addReply('n1', v1)).toThrow(/twice/)
    expect(() => read.addReply('n9', v1)).toThrow(/not a replica/)
    expect(() => new ReadQuorum<string>(['n1'], 2, policy)).toThrow(/R must be/)
  })

  it('merges nothing to null and repairs nobody then', () => {
    expect(mergeReplies<string>([null, null], policy)).toBeNull()
    expect(staleReplicas(new Map([['n1', null]]), null)).toEqual([])
  })
})

describe('digest reads: the data from one replica, versions from the rest', () => {
  it('answers with the data when the versions agree, and fetches nothing', () => {
    const read = new ReadQuorum<string>(['n1', 'n2', 'n3'], 2, policy)
    read.addReply('n1', v2)
    read.addVersions('n2', versionsOf(v2))
    expect(read.status).toBe('met')
    expect(read.missingValues()).toEqual([])
    expect(read.response()?.state).toEqual(v2)
    read.addVersions('n3', null)
    expect(read.missingValues()).toEqual([])
    expect(read.repairs()).toEqual({ merged: v2, stale: ['n3'] })
  })

  it('repairs a replica whose versions are behind, without fetching its values', () => {
    const read = new ReadQuorum<string>(['n1', 'n2', 'n3'], 3, policy)
    // A versions-only answer first: the merge still keeps the copy that has the value.
    read.addVersions('n2', versionsOf(v2))
    read.addReply('n1', v2)
    read.addVersions('n3', versionsOf(v1))
    expect(read.missingValues()).toEqual([])
    expect(read.response()?.state).toEqual(v2)
    expect(read.repairs().stale).toEqual(['n3'])
  })

  it('fetches the values of a version only a versions-only answer holds', () => {
    const read = new ReadQuorum<string>(['n1', 'n2', 'n3'], 2, policy)
    read.addReply('n1', v1)
    read.addVersions('n2', versionsOf(v2))
    expect(read.status).toBe('met')
    expect(read.missingValues()).toEqual(['n2'])
    // No answer before the value is there: a newer version seen is never answered as older.
    expect(() => read.response()).toThrow(/missingValues/)
    expect(() => read.repairs()).toThrow(/missingValues/)
    read.upgrade('n2', v2)
    expect(read.missingValues()).toEqual([])
    expect(read.response()?.state).toEqual(v2)
    expect(read.repairs().stale).toEqual(['n1'])
  })

  it('fetches a concurrent sibling and answers with both', () => {
    const read = new ReadQuorum<string>(['n1', 'n2'], 2, policy)
    read.addReply('n1', v1)
    read.addVersions('n2', versionsOf(concurrent))
    expect(read.missingValues()).toEqual(['n2'])
    read.upgrade('n2', concurrent)
    expect(
      read
        .response()
        ?.state?.siblings.map((s) => s.value.value)
        .sort(),
    ).toEqual(['one', 'other'])
  })

  it('drops an answer whose values could not be fetched, and may then fall short of R', () => {
    const read = new ReadQuorum<string>(['n1', 'n2', 'n3'], 2, policy)
    read.addReply('n1', v1)
    read.addVersions('n2', versionsOf(v2))
    read.addFailure('n3')
    read.upgradeFailed('n2')
    expect(read.status).toBe('unreachable')
    expect(read.response()).toBeNull()
    expect(() => read.upgrade('n1', v1)).toThrow(/no versions-only answer/)
  })

  it('needs no values from a replica that holds only deletes', () => {
    const deleted = written(v1, 'a', 2, null)
    const read = new ReadQuorum<string>(['n1', 'n2'], 2, policy)
    read.addReply('n1', v1)
    read.addVersions('n2', versionsOf(deleted))
    expect(read.missingValues()).toEqual([])
    expect(read.response()?.state).toEqual(deleted)
  })
})

describe('the write quorum', () => {
  it('counts the coordinator and replica acks toward W', () => {
    const write = new WriteQuorum({ w: 2, sloppy: false })
    write.sent()
    write.sent()
    expect(write.status).toBe('waiting')
    write.replicaAcked()
    expect(write.status).toBe('met')
    expect(write.acks).toBe(2)
  })

  it('counts a hint only for a sloppy write', () => {
    const strict = new WriteQuorum({ w: 2, sloppy: false })
    strict.sent()
    strict.hintAcked('n3', 'n4')
    expect(strict.status).toBe('unreachable')
    expect(strict.hinted).toEqual(['n3@n4'])
    const sloppy = new WriteQuorum({ w: 2, sloppy: true })
    sloppy.sent()
    sloppy.hintAcked('n3', 'n4')
    expect(sloppy.status).toBe('met')
    // The unsafe switch counts it for a strict write too (the simulator must catch that).
    const unsafe = new WriteQuorum({ w: 2, sloppy: false, unsafeCountHintsWhenStrict: true })
    unsafe.sent()
    unsafe.hintAcked('n3', 'n4')
    expect(unsafe.status).toBe('met')
  })

  it('fails once no send is pending below W, and refuses a settle never sent', () => {
    const write = new WriteQuorum({ w: 3, sloppy: false })
    write.sent()
    write.sent()
    write.replicaAcked()
    write.failed()
    expect(write.status).toBe('unreachable')
    expect(() => write.failed()).toThrow(/never sent/)
  })

  it('counts reachable targets, with stand-ins only when sloppy', () => {
    const up = (m: string) => m !== 'n2' && m !== 'n3'
    expect(reachableTargets(['n1', 'n2', 'n3'], ['n4', 'n5'], false, up)).toBe(1)
    expect(reachableTargets(['n1', 'n2', 'n3'], ['n4', 'n5'], true, up)).toBe(3)
    expect(reachableTargets(['n1', 'n2', 'n3'], ['n4'], true, up)).toBe(2)
  })
})
