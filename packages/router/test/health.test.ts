import { ReplicaHealth } from '../src/health.js'

const options = { maxLagMs: 1000, ejectFailures: 3, ejectMs: 1000, ejectMsMax: 8000 }

describe('replica health', () => {
  it('starts unknown, becomes healthy on a probe, lagging past the bound, back when caught up', () => {
    const h = new ReplicaHealth(options)
    expect(h.state).toBe('unknown')
    expect(h.readable).toBe(false)
    expect(h.onProbeSuccess(0, { lagMs: 10, connected: true })).toBe(true)
    expect(h.state).toBe('healthy')
    expect(h.readable).toBe(true)
    expect(h.onProbeSuccess(100, { lagMs: 1500, connected: true })).toBe(true)
    expect(h.state).toBe('lagging')
    expect(h.onProbeSuccess(200, { lagMs: 1000, connected: true })).toBe(true)
    expect(h.state).toBe('healthy')
    // A follower the leader has no stream to is lagging, whatever its own lag says.
    h.onProbeSuccess(300, { lagMs: 0, connected: false })
    expect(h.state).toBe('lagging')
  })

  it('leaves the pool when a probe fails and comes back on the next that answers', () => {
    const h = new ReplicaHealth(options)
    h.onProbeSuccess(0, { lagMs: 0, connected: true })
    expect(h.onProbeFailure(500)).toBe(true)
    expect(h.state).toBe('unresponsive')
    expect(h.reachable).toBe(false)
    expect(h.changedAtMs).toBe(500)
    h.onProbeSuccess(900, { lagMs: 0, connected: true })
    expect(h.state).toBe('healthy')
  })

  it('a read reporting a lag over the bound takes the replica out until a probe says otherwise', () => {
    const h = new ReplicaHealth(options)
    h.onProbeSuccess(0, { lagMs: 0, connected: true })
    expect(h.onLagReport(10, 5000)).toBe(true)
    expect(h.readable).toBe(false)
    h.onProbeSuccess(20, { lagMs: 3, connected: true })
    expect(h.readable).toBe(true)
  })

  it('ejects after N failures in a row, not before, and a success resets the count', () => {
    const h = new ReplicaHealth(options)
    h.onProbeSuccess(0, { lagMs: 0, connected: true })
    expect(h.onRequestFailure(1)).toBe(false)
    expect(h.onRequestFailure(2)).toBe(false)
    h.onRequestSuccess(3)
    expect(h.failuresInARow).toBe(0)
    expect(h.onRequestFailure(4)).toBe(false)
    expect(h.onRequestFailure(5)).toBe(false)
    expect(h.onRequestFailure(6)).toBe(true)
    expect(h.state).toBe('ejected')
    expect(h.ejectedUntil).toBe(1006)
    expect(h.ejectionsTotal).toBe(1)
    // More failures while ejected change nothing.
    expect(h.onRequestFailure(7)).toBe(false)
    // A probe before the time is up keeps it out; one after re-admits it.
    h.onProbeSuccess(1000, { lagMs: 0, connected: true })
    expect(h.state).toBe('ejected')
    expect(h.onProbeSuccess(1006, { lagMs: 0, connected: true })).toBe(true)
    expect(h.state).toBe('healthy')
    expect(h.failuresInARow).toBe(0)
  })

  it('a replica ejected again soon after coming back stays out twice as long, up to the max', () => {
    const h = new ReplicaHealth({ ...options, ejectFailures: 1 })
    h.onProbeSuccess(0, { lagMs: 0, connected: true })
    let now = 0
    const lengths: number[] = []
    for (let i = 0; i < 6; i++) {
      h.onRequestFailure(now)
      lengths.push(h.ejectedUntil - now)
      now = h.ejectedUntil
      h.onProbeSuccess(now, { lagMs: 0, connected: true })
      now += 10
    }
    expect(lengths).toEqual([1000, 2000, 4000, 8000, 8000, 8000])
    // After a whole ejectMsMax in the pool, the next ejection is short again.
    now += 9000
    h.onRequestFailure(now)
    expect(h.ejectedUntil - now).toBe(1000)
  })
})
