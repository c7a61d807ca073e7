import { checkSessions } from '../src/checkers/index.js'
import type { SessionViolation } from '../src/checkers/index.js'
import { history } from './build.js'
import type { OpSpec } from './build.js'

interface Opts {
  key?: string
  type?: 'ok' | 'fail' | 'info'
}

/** A write of `key` (default 'k') that made `version`. */
function sw(
  p: number,
  value: unknown,
  version: number | undefined,
  t0: number,
  o: Opts = {},
): OpSpec {
  return {
    p,
    f: 'write',
    key: o.key ?? 'k',
    in: value,
    t: [t0, t0 + 1],
    type: o.type ?? 'ok',
    ...(version !== undefined ? { version } : {}),
  }
}

/** A read of `key` that saw `value` at `version` (none: absent). */
function sr(
  p: number,
  value: unknown,
  version: number | undefined,
  t0: number,
  o: Opts = {},
): OpSpec {
  return {
    p,
    f: 'read',
    key: o.key ?? 'k',
    out: value,
    t: [t0, t0 + 1],
    type: o.type ?? 'ok',
    ...(version !== undefined ? { version } : {}),
  }
}

const check = (specs: OpSpec[]) => checkSessions(history(specs))
const violations = (specs: OpSpec[]) => check(specs).details.violations as SessionViolation[]

describe('checkSessions', () => {
  it('is valid when each process reads its writes and never goes back', () => {
    const v = check([
      sr(0, null, undefined, 0),
      sw(0, 'a', 5, 2),
      sr(0, 'a', 5, 4),
      sr(0, 'b', 7, 6),
      sr(0, 'b', 7, 8),
      sw(1, 'b', 7, 3),
      sr(1, 'b', 7, 5),
    ])
    expect(v).toMatchObject({ checker: 'sessions', valid: true })
    expect(v.details.counts).toMatchObject({ processes: 2, readsChecked: 5, writes: 2 })
    expect(v.summary).toBe('session guarantees hold: 5 reads checked over 2 processes')
    expect(JSON.parse(JSON.stringify(v.details))).toEqual(v.details)
  })

  it('catches a read below the process’s own write (read your writes)', () => {
    const specs = [sw(0, 'a', 3, 0), sw(0, 'b', 5, 2), sr(0, 'a', 3, 4)]
    const v = check(specs)
    expect(v.valid).toBe(false)
    expect(v.details.counts).toMatchObject({ readYourWrites: 1, monotonicReads: 0 })
    expect(violations(specs)).toEqual([
      expect.objectContaining({
        guarantee: 'read-your-writes',
        process: 0,
        key: 'k',
        earlierVersion: 5,
        laterVersion: 3,
        earlier: expect.objectContaining({ f: 'write', input: 'b', version: 5 }),
        later: expect.objectContaining({ f: 'read', output: 'a', version: 3 }),
      }),
    ])
    expect(v.summary).toBe(
      'session guarantees violated: 1 read-your-writes, 0 monotonic-reads; first: process 0 read "k" at version 3 after its write of version 5',
    )
  })

  it('catches a read of nothing after the process’s own write', () => {
    const v = violations([sw(0, 'a', 3, 0), sr(0, null, undefined, 2)])
    expect(v).toEqual([
      expect.objectContaining({
        guarantee: 'read-your-writes',
        earlierVersion: 3,
        laterVersion: 0,
      }),
    ])
  })

  it('catches a read below an earlier read (monotonic reads)', () => {
    const specs = [sr(0, 'b', 7, 0), sr(0, 'c', 8, 2), sr(0, 'b', 7, 4), sr(0, 'c', 8, 6)]
    const v = check(specs)
    expect(v.valid).toBe(false)
    expect(v.details.counts).toMatchObject({ readYourWrites: 0, monotonicReads: 1 })
    expect(violations(specs)).toEqual([
      expect.objectContaining({
        guarantee: 'monotonic-reads',
        earlierVersion: 8,
        laterVersion: 7,
        earlier: expect.objectContaining({ output: 'c', invokeTime: 2 }),
        later: expect.objectContaining({ output: 'b', invokeTime: 4 }),
      }),
    ])
    // A read of nothing after reading something also goes back.
    expect(violations([sr(0, 'b', 7, 0), sr(0, null, undefined, 2)])).toEqual([
      expect.objectContaining({ guarantee: 'monotonic-reads', laterVersion: 0 }),
    ])
  })

  it('reports a read that breaks both guarantees under each', () => {
    const v = check([sw(0, 'a', 5, 0), sr(0, 'b', 6, 2), sr(0, 'z', 4, 4)])
    expect(v.details.counts).toMatchObject({ readYourWrites: 1, monotonicReads: 1 })
  })

  it('does not let different processes or keys constrain each other', () => {
    // Process 1 reads older versions than process 0 wrote and read: no session guarantee.
    expect(
      check([sw(0, 'a', 5, 0), sr(0, 'b', 9, 2), sr(1, 'x', 3, 4), sr(1, 'y', 4, 6)]).valid,
    ).toBe(true)
    // Key j's versions say nothing about key k's.
    expect(
      check([sw(0, 'a', 9, 0, { key: 'j' }), sr(0, 'b', 2, 2), sr(0, 'a', 9, 4, { key: 'j' })])
        .valid,
    ).toBe(true)
    // The same history with the reads on one process and one key is invalid.
    expect(check([sw(0, 'a', 5, 0), sr(0, 'b', 9, 2), sr(0, 'x', 3, 4)]).valid).toBe(false)
  })

  it('ignores fail and info operations', () => {
    // A failed write did not happen; the successor of an info is a new session.
    expect(check([sw(0, 'a', 5, 0, { type: 'fail' }), sr(0, 'z', 2, 2)]).valid).toBe(true)
    expect(
      check([sw(0, 'a', 2, 0), sw(0, 'b', 9, 2, { type: 'info' }), sr(1, 'a', 2, 4)]).valid,
    ).toBe(true)
    expect(check([sr(0, 'a', 5, 0), sr(0, 'z', 2, 2, { type: 'info' })]).valid).toBe(true)
  })

  it('is unknown, not valid, when ok operations carry no version', () => {
    const v = check([sw(0, 'a', undefined, 0), sr(0, 'a', undefined, 2)])
    expect(v.valid).toBe('unknown')
    expect(v.details.counts).toMatchObject({ unversioned: 2 })
    expect(v.summary).toMatch(/^unknown: 2 ok operations carry no version/)
    // A violation among the versioned ones still makes it invalid.
    expect(check([sw(0, 'a', 5, 0), sr(0, 'b', 3, 2), sr(0, 'c', undefined, 4)]).valid).toBe(false)
  })
})
