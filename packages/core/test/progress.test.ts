import { Progress } from '../src/index.js'

const windowMax = { appends: 2, bytes: 100 }

function paused(pr: Progress): boolean {
  return pr.isPaused(windowMax.appends, windowMax.bytes)
}

describe('Progress (one follower, as the leader sees it)', () => {
  it('starts in probe, paused until a stream is up', () => {
    const pr = new Progress(11)
    expect(pr.state).toBe('probe')
    expect(pr.nextLsn).toBe(11)
    expect(paused(pr)).toBe(true)
    pr.connect(10)
    expect(paused(pr)).toBe(false)
  })

  it('probe: one append at a time, sent again after the probe timeout', () => {
    const pr = new Progress(11, true)
    pr.sentEntries(12, 20, 5)
    expect(pr.probeSentTick).toBe(5)
    expect(pr.nextLsn).toBe(11) // a probe does not move nextLsn
    expect(paused(pr)).toBe(true)
    expect(pr.probeTimedOut(7, 3)).toBe(false)
    expect(pr.probeTimedOut(8, 3)).toBe(true)
    expect(pr.probeSentTick).toBeNull()
    expect(paused(pr)).toBe(false)
  })

  it('a snapshot streamed whole: probe from just past it, whatever became of its acknowledgement', () => {
    const pr = new Progress(11, true)
    pr.becomeSnapshot()
    expect(pr.snapshotSent(30)).toBe(true)
    expect(pr.state).toBe('probe')
    expect(pr.nextLsn).toBe(31)
    expect(pr.snapshotSent(30)).toBe(false)
  })

  it('an acknowledgement that answers nothing in flight does not hold off the retransmission', () => {
    // Appends 13..16 were lost; the follower keeps acknowledging 12 (a duplicate, or a
    // follower that installed a snapshot re-reporting it with each heartbeat). Were each such
    // acknowledgement an answer, the leader would wait on the lost appends forever.
    const pr = new Progress(11, true)
    pr.sentEntries(12, 10, 1)
    pr.maybeUpdate(12, 20, 2)
    pr.sentEntries(14, 10, 3)
    pr.sentEntries(16, 10, 3)
    for (let tick = 4; tick <= 12; tick++) pr.maybeUpdate(12, 20, tick)
    expect(pr.lastAckTick).toBe(3)
    expect(pr.retransmitDue(10, 8)).toBe(false)
    expect(pr.retransmitDue(11, 8)).toBe(true)
    expect(pr.nextLsn).toBe(13)
  })

  it('an acknowledgement moves probe to replicate, from just past the match', () => {
    const pr = new Progress(11, true)
    pr.sentEntries(12, 20, 1)
    pr.maybeUpdate(12, 20, 2)
    expect(pr.state).toBe('replicate')
    expect(pr.matchLsn).toBe(12)
    expect(pr.nextLsn).toBe(13)
    expect(pr.probeSentTick).toBeNull()
    expect(pr.lastAckTick).toBe(2)
  })

  it('never takes a match past the leader log', () => {
    const pr = new Progress(1, true)
    pr.maybeUpdate(50, 20, 1)
    expect(pr.matchLsn).toBe(20)
    expect(pr.heartbeatMatch(30, 25)).toBe(false)
    expect(pr.heartbeatMatch(22, 25)).toBe(true)
    expect(pr.matchLsn).toBe(22)
    expect(pr.heartbeatMatch(21, 25)).toBe(false) // never goes back on an acknowledgement
  })

  it('replicate: optimistic nextLsn and a bounded window, freed by acknowledgements', () => {
    const pr = new Progress(1, true)
    pr.maybeUpdate(0, 0, 0)
    expect(pr.state).toBe('replicate')
    pr.sentEntries(5, 40, 1)
    expect(pr.nextLsn).toBe(6)
    expect(paused(pr)).toBe(false)
    pr.sentEntries(9, 40, 1)
    expect(pr.nextLsn).toBe(10)
    expect(pr.inflightBytes).toBe(80)
    expect(paused(pr)).toBe(true) // two appends in flight
    pr.maybeUpdate(5, 9, 2)
    expect(pr.inflight).toEqual([{ lastLsn: 9, bytes: 40 }])
    expect(pr.inflightBytes).toBe(40)
    expect(paused(pr)).toBe(false)
    pr.sentEntries(null, 0, 3) // an empty append changes nothing
    expect(pr.nextLsn).toBe(10)
    pr.sentEntries(20, 70, 3)
    expect(paused(pr)).toBe(true) // 110 bytes in flight
  })

  it('replicate: appends unanswered for long fall back to probe from the match', () => {
    const pr = new Progress(1, true)
    pr.maybeUpdate(3, 3, 10)
    pr.sentEntries(8, 10, 10)
    expect(pr.retransmitDue(21, 12)).toBe(false)
    expect(pr.retransmitDue(22, 12)).toBe(true)
    expect(pr.state).toBe('probe')
    expect(pr.nextLsn).toBe(4)
    expect(pr.inflight).toEqual([])
  })

  it('a refusal steps nextLsn back toward the hint, never below the match', () => {
    const pr = new Progress(21, true)
    pr.maybeUpdate(5, 20, 1)
    pr.sentEntries(20, 100, 1)
    expect(pr.maybeDecrTo(5, 9, 20)).toBe(false)
    expect(pr.state).toBe('probe')
    expect(pr.nextLsn).toBe(9)
    // A hint at or below the match: the follower lost entries it had acknowledged.
    expect(pr.maybeDecrTo(1, 2, 20)).toBe(true)
    expect(pr.regressions).toBe(1)
    expect(pr.matchLsn).toBe(1)
    expect(pr.nextLsn).toBe(2)
  })

  it('snapshot: nothing is sent until it is acknowledged; a failure probes again', () => {
    const pr = new Progress(1, true)
    pr.maybeUpdate(4, 10, 1)
    pr.sentEntries(10, 10, 1)
    pr.becomeSnapshot()
    expect(pr.state).toBe('snapshot')
    expect(pr.inflight).toEqual([])
    expect(paused(pr)).toBe(true)
    // A refusal while a snapshot is owed keeps it owed.
    pr.maybeDecrTo(4, 5, 10)
    expect(pr.state).toBe('snapshot')
    // So does a broken stream.
    pr.disconnect()
    expect(pr.state).toBe('snapshot')
    pr.connect(10)
    expect(pr.state).toBe('probe')
    pr.becomeSnapshot()
    expect(pr.snapshotFailed()).toBe(true)
    expect(pr.state).toBe('probe')
    expect(pr.snapshotFailed()).toBe(false)
    pr.becomeSnapshot()
    pr.maybeUpdate(30, 30, 9) // the follower installed a snapshot at 30
    expect(pr.state).toBe('replicate')
    expect(pr.nextLsn).toBe(31)
  })

  it('a broken stream forgets what was in flight and probes when it comes back', () => {
    const pr = new Progress(1, true)
    pr.maybeUpdate(2, 10, 1)
    pr.sentEntries(10, 10, 1)
    pr.startLoading()
    pr.disconnect()
    expect(pr.connected).toBe(false)
    expect(pr.loading).toBe(false)
    expect(pr.state).toBe('probe')
    expect(pr.inflight).toEqual([])
    pr.connect(6)
    expect(pr.nextLsn).toBe(7) // within the leader's log
  })

  it('loading pauses sending until the entries arrive', () => {
    const pr = new Progress(1, true)
    pr.startLoading()
    expect(paused(pr)).toBe(true)
    pr.loaded()
    expect(paused(pr)).toBe(false)
  })
})
