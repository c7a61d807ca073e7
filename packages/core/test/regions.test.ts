import { RegionClock, resolveRemoteWrite } from '../src/index.js'

const s = (wallMs: number, logical: number, region: string) => ({ wallMs, logical, region })

describe('resolveRemoteWrite', () => {
  it('applies a write to a key this region does not have', () => {
    expect(resolveRemoteWrite(undefined, s(10, 0, 'eu'), undefined)).toBe('causal')
  })

  it('applies a write whose writer saw the current record, whatever the stamps', () => {
    expect(resolveRemoteWrite(s(10, 0, 'us'), s(11, 0, 'eu'), s(10, 0, 'us'))).toBe('causal')
  })

  it('skips a write it already has', () => {
    expect(resolveRemoteWrite(s(10, 0, 'eu'), s(10, 0, 'eu'), undefined)).toBe('present')
  })

  it('resolves concurrent writes by stamp, the same way from either side', () => {
    const us = s(10, 0, 'us')
    const eu = s(10, 0, 'eu')
    // At us, eu's write arrives; at eu, us's arrives. Equal times: the region id decides.
    expect(resolveRemoteWrite(us, eu, undefined)).toBe('remote_lost')
    expect(resolveRemoteWrite(eu, us, undefined)).toBe('local_lost')
    expect(resolveRemoteWrite(s(5, 0, 'us'), s(4, 9, 'eu'), s(1, 0, 'us'))).toBe('remote_lost')
    expect(resolveRemoteWrite(s(5, 0, 'us'), s(5, 1, 'eu'), s(1, 0, 'us'))).toBe('local_lost')
  })

  it('takes a record from before the region mode as concurrent, and loses it on the record', () => {
    expect(resolveRemoteWrite(null, s(5, 0, 'eu'), undefined)).toBe('local_lost')
  })
})

describe('RegionClock', () => {
  it('stamps above what a write overwrites, even when that is ahead of the wall clock', () => {
    const clock = new RegionClock('us', 60_000)
    const ahead = s(5_000, 3, 'eu')
    const stamp = clock.next(1_000, ahead)
    expect(stamp.region).toBe('us')
    expect(stamp.wallMs).toBe(5_000)
    expect(stamp.logical).toBe(4)
    // Later local writes stay above it too, while the wall clock catches up.
    expect(clock.next(1_001, undefined)).toEqual(s(5_000, 5, 'us'))
    expect(clock.next(6_000, undefined)).toEqual(s(6_000, 0, 'us'))
  })

  it('says how far a stamp is ahead beyond the allowed skew', () => {
    const clock = new RegionClock('us', 1_000)
    expect(clock.aheadBeyondSkew(s(1_900, 0, 'eu'), 1_000)).toBe(0)
    expect(clock.aheadBeyondSkew(s(2_500, 0, 'eu'), 1_000)).toBe(1_500)
  })
})

describe('resolveRemoteWrite with records from the same region', () => {
  it('takes a later write of the region as causal and an earlier one as stale', () => {
    // A re-seed sends a region's latest records without their prev.
    expect(resolveRemoteWrite(s(10, 0, 'eu'), s(12, 0, 'eu'), undefined)).toBe('causal')
    expect(resolveRemoteWrite(s(12, 0, 'eu'), s(10, 0, 'eu'), undefined)).toBe('present')
  })
})
