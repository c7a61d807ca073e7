/**
 * Requests waiting on replication (wait.ts), the log retention rule, the choice of a handover
 * target and the wait for it to take over, in process.
 */
import { pino } from 'pino'
import { KvError } from '@kvstore/protocol'
import { retainFromLsn } from '../../src/cluster/core-setup.js'
import {
  RoleWatch,
  awaitHandover,
  transferTarget,
  type HandoverView,
} from '../../src/cluster/leadership.js'
import { AckWaiters, ApplyWaiters, ackVerdict, type AckView } from '../../src/cluster/wait.js'

function view(partial: Partial<AckView> & { epochs?: Record<number, number> }): AckView {
  return {
    isLeader: partial.isLeader ?? true,
    commitLsn: partial.commitLsn ?? 0,
    epochAt: (lsn) => partial.epochs?.[lsn] ?? null,
    allMatchLsn: partial.allMatchLsn ?? (() => 0),
  }
}

describe('ackVerdict', () => {
  it('confirms a quorum write once committed, in its own epoch', () => {
    expect(ackVerdict(view({ commitLsn: 5, epochs: { 5: 2 } }), 5, 2, 'quorum')).toBe('confirmed')
    expect(ackVerdict(view({ commitLsn: 4, epochs: { 5: 2 } }), 5, 2, 'quorum')).toBe('waiting')
  })

  it('cannot tell once another epoch holds the LSN, or this node no longer leads', () => {
    expect(ackVerdict(view({ commitLsn: 5, epochs: { 5: 3 } }), 5, 2, 'quorum')).toBe('unknown')
    expect(ackVerdict(view({ isLeader: false, epochs: { 5: 2 } }), 5, 2, 'quorum')).toBe('unknown')
  })

  it('takes a compacted entry at or below the commit LSN as its own', () => {
    expect(ackVerdict(view({ commitLsn: 9 }), 5, 2, 'quorum')).toBe('confirmed')
  })

  it('waits for every member with ack=all', () => {
    const v = (all: number) => view({ commitLsn: 5, epochs: { 5: 2 }, allMatchLsn: () => all })
    expect(ackVerdict(v(4), 5, 2, 'all')).toBe('waiting')
    expect(ackVerdict(v(5), 5, 2, 'all')).toBe('confirmed')
  })
})

describe('AckWaiters', () => {
  it('resolves confirmed waiters, rejects unknown ones, keeps the rest', async () => {
    const waiters = new AckWaiters()
    const timeout = () => new Error('timeout')
    const a = waiters.wait({ lsn: 1, epoch: 1, mode: 'quorum' }, 10_000, timeout)
    const b = waiters.wait({ lsn: 2, epoch: 1, mode: 'quorum' }, 10_000, timeout)
    const c = waiters.wait({ lsn: 3, epoch: 1, mode: 'quorum' }, 10_000, timeout)
    waiters.trigger(
      (w) => (w.lsn === 1 ? 'confirmed' : w.lsn === 2 ? 'unknown' : 'waiting'),
      (w) => new Error(`unknown ${w.lsn}`),
      1,
    )
    await expect(a).resolves.toBeUndefined()
    await expect(b).rejects.toThrow('unknown 2')
    expect(waiters.size).toBe(1)
    waiters.rejectAll(() => new KvError('KV_ERR_SHUTTING_DOWN', 'stopping'))
    await expect(c).rejects.toThrow('stopping')
    expect(waiters.size).toBe(0)
  })

  it('reads each mode in LSN order and stops at the first write of this epoch still waiting', async () => {
    const waiters = new AckWaiters()
    const timeout = () => new Error('timeout')
    const judged: number[] = []
    const settled: string[] = []
    const wait = (lsn: number, epoch: number, mode: 'quorum' | 'all') =>
      waiters.wait({ lsn, epoch, mode }, 10_000, timeout).then(
        () => settled.push(`ok ${lsn}`),
        (err: Error) => settled.push(err.message),
      )
    // Out of order on arrival; an older epoch's write first.
    const all = [
      wait(12, 3, 'quorum'),
      wait(10, 3, 'quorum'),
      wait(4, 2, 'quorum'),
      wait(11, 3, 'all'),
    ]
    const commit = { lsn: 10 }
    const verdict = (w: { lsn: number; epoch: number; mode: string }) => {
      judged.push(w.lsn)
      if (w.epoch !== 3) return 'waiting' as const
      return w.mode === 'quorum' && w.lsn <= commit.lsn
        ? ('confirmed' as const)
        : ('waiting' as const)
    }
    waiters.trigger(verdict, () => new Error('unknown'), 3)
    await Promise.resolve()
    // quorum: 4 (older epoch, kept), 10 confirmed, 12 waiting: the stop. all: 11 waiting: the stop.
    expect(judged).toEqual([4, 10, 12, 11])
    expect(waiters.size).toBe(3)
    judged.length = 0
    commit.lsn = 11
    waiters.trigger(verdict, () => new Error('unknown'), 3)
    // Nothing new below 12: the older write is judged again, then the stop; 11 (all) still waits.
    expect(judged).toEqual([4, 12, 11])
    // This node no longer leads: everything is unknown, in order.
    judged.length = 0
    waiters.trigger(
      () => 'unknown',
      (w) => new Error(`unknown ${w.lsn}`),
      4,
    )
    await Promise.all(all)
    expect(settled.sort()).toEqual(['ok 10', 'unknown 11', 'unknown 12', 'unknown 4'])
    expect(waiters.size).toBe(0)
  })

  it('times waiters out by their own deadlines with one timer', async () => {
    const waiters = new AckWaiters()
    const late: string[] = []
    const wait = (lsn: number, timeoutMs: number) =>
      waiters
        .wait({ lsn, epoch: 1, mode: 'quorum' }, timeoutMs, (w) => new Error(`late ${w.lsn}`))
        .catch((err: Error) => late.push(err.message))
    const slow = wait(1, 60)
    const fast = wait(2, 5)
    await fast
    expect(late).toEqual(['late 2'])
    expect(waiters.size).toBe(1)
    await slow
    expect(late).toEqual(['late 2', 'late 1'])
    expect(waiters.size).toBe(0)
  })

  it('times a waiter out and forgets it', async () => {
    const waiters = new AckWaiters()
    await expect(
      waiters.wait({ lsn: 1, epoch: 1, mode: 'all' }, 5, (w) => new Error(`late ${w.mode}`)),
    ).rejects.toThrow('late all')
    expect(waiters.size).toBe(0)
  })
})

describe('ApplyWaiters', () => {
  it('resolves true once applied, false on timeout, and refuses past its bound', async () => {
    const waiters = new ApplyWaiters(2)
    const a = waiters.wait(3, 10_000)
    const b = waiters.wait(5, 5)
    await expect(waiters.wait(9, 10_000)).resolves.toBe(false) // full
    waiters.trigger(4)
    await expect(a).resolves.toBe(true)
    await expect(b).resolves.toBe(false)
    expect(waiters.size).toBe(0)
    await expect(waiters.wait(1, 0)).resolves.toBe(false)
    const c = waiters.wait(7, 10_000)
    waiters.cancelAll()
    await expect(c).resolves.toBe(false)
  })
})

describe('retainFromLsn', () => {
  const base = { commitLsn: 100, retentionEntries: 10, retentionEntriesMax: 50 }
  it('keeps the retention behind the commit LSN', () => {
    expect(retainFromLsn({ ...base, isLeader: false, followerMatches: [3] })).toBe(91)
  })
  it('on a leader, keeps what a connected follower needs, up to the maximum', () => {
    expect(retainFromLsn({ ...base, isLeader: true, followerMatches: [80, 95] })).toBe(81)
    expect(retainFromLsn({ ...base, isLeader: true, followerMatches: [3] })).toBe(51)
  })
  it('never past the commit LSN', () => {
    expect(
      retainFromLsn({ ...base, retentionEntries: 0, isLeader: false, followerMatches: [] }),
    ).toBe(101)
  })
})

describe('transferTarget', () => {
  const members = ['a', 'b', 'c'].map((id) => ({
    id,
    clientUrl: `http://${id}`,
    peerUrl: `http://${id}:1`,
  }))
  const matches: Record<string, number> = { b: 5, c: 9 }
  const pick = (to: string | null, connected = (id: string) => id !== 'x') =>
    transferTarget(members, 'a', to, connected, (id) => matches[id] ?? 0).id

  it('takes the named member, or the connected follower furthest along', () => {
    expect(pick('b')).toBe('b')
    expect(pick(null)).toBe('c')
    expect(pick(null, (id) => id === 'b')).toBe('b')
  })

  it('refuses a non-member, itself, or no connected follower', () => {
    expect(() => pick('z')).toThrow('is not a member')
    expect(() => pick('a')).toThrow('already leads')
    expect(() => pick(null, () => false)).toThrow('no follower is connected')
  })
})

describe('awaitHandover', () => {
  /** A follower's view after the handover from epoch 1: n2 leads epoch 2. */
  function follower(): HandoverView & { commitEpoch: number } {
    const v = {
      isLeader: false,
      leaderId: 'n2' as string | null,
      epoch: 2,
      transferTarget: null,
      commitLsn: 10,
      commitEpoch: 1,
      epochAt: (lsn: number) => (lsn === 10 ? v.commitEpoch : null),
    }
    return v
  }
  const wait = (view: HandoverView, readyMs: number, timeoutMs = 5000) =>
    awaitHandover({
      view,
      self: 'n1',
      to: 'n2',
      epoch: 1,
      pollMs: 5,
      timeoutMs,
      readyMs,
      now: Date.now,
      stopped: () => false,
    })

  it('names the new leader only once its first entry is committed (it takes writes then)', async () => {
    const view = follower()
    let settled = false
    const done = wait(view, 10_000).then((id) => {
      settled = true
      return id
    })
    await new Promise((resolve) => setTimeout(resolve, 100))
    expect(settled).toBe(false)
    view.commitEpoch = 2
    expect(await done).toBe('n2')
  })

  it('names it anyway once the new leader has not committed within readyMs', async () => {
    const view = follower()
    const started = Date.now()
    expect(await wait(view, 60)).toBe('n2')
    expect(Date.now() - started).toBeGreaterThanOrEqual(60)
  })

  it('answers KV_ERR_NOT_READY when the core gave up and this node leads on', async () => {
    const view = { ...follower(), isLeader: true, leaderId: 'n1', epoch: 1 }
    await expect(wait(view, 10)).rejects.toMatchObject({ code: 'KV_ERR_NOT_READY' })
  })
})

describe('RoleWatch', () => {
  it('notices an election won and leadership lost, once each', () => {
    const watch = new RoleWatch(1, pino({ level: 'silent' }))
    const core = { roleName: 'follower' as const, epoch: 1, leaderId: null, wonWithLsn: 0 }
    expect(watch.notice(core)).toBeNull()
    expect(watch.notice({ ...core, roleName: 'candidate', epoch: 2 })).toBeNull()
    expect(watch.notice({ ...core, roleName: 'leader', epoch: 2, leaderId: 'a' })).toBe('won')
    expect(watch.notice({ ...core, roleName: 'leader', epoch: 2, leaderId: 'a' })).toBeNull()
    expect(watch.notice({ ...core, epoch: 3, leaderId: 'b' })).toBe('deposed')
    expect(watch.notice({ ...core, epoch: 3, leaderId: 'b' })).toBeNull()
  })
})
