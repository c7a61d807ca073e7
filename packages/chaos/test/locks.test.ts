import { checkLocks, lockViolations, type ResourceWrite } from '../src/checkers/locks.js'
import type { Operation } from '../src/history.js'

const w = (version: number, token: number): ResourceWrite => ({
  key: `res/${version}`,
  version,
  token,
  process: token,
})

function readAll(items: { key: string; version: number; value: string }[]): Operation {
  return {
    process: 1_000_000,
    f: 'readAll',
    input: null,
    output: items,
    type: 'ok',
    invokeTime: 0,
    completeTime: 1,
    invokeIndex: 0,
    completeIndex: 1,
  }
}

describe('the lock checker', () => {
  it('accepts holders one after another, in any order of keys', () => {
    expect(lockViolations([w(5, 3), w(3, 3), w(9, 8), w(10, 8), w(12, 11)])).toEqual([])
  })

  it('catches an earlier holder writing after a later one (a woken paused holder)', () => {
    const violations = lockViolations([w(3, 3), w(9, 8), w(10, 3), w(12, 8)])
    expect(violations).toEqual([{ write: w(10, 3), after: w(9, 8) }])
  })

  it('judges the final listing, and is unknown without one', () => {
    const ok = checkLocks([
      readAll([
        { key: 'res/1', version: 4, value: '3 0 0' },
        { key: 'res/2', version: 7, value: '6 1 0' },
      ]),
    ])
    expect(ok.valid).toBe(true)
    const bad = checkLocks([
      readAll([
        { key: 'res/1', version: 4, value: '3 0 0' },
        { key: 'res/2', version: 7, value: '6 1 0' },
        { key: 'res/3', version: 8, value: '3 0 1' },
      ]),
    ])
    expect(bad.valid).toBe(false)
    expect(checkLocks([]).valid).toBe('unknown')
    expect(checkLocks([readAll([{ key: 'res/1', version: 4, value: 'junk' }])]).valid).toBe(false)
  })
})
