import { analyzeSet, checkLostWrites, matchRollbacks } from '../src/checkers/index.js'
import { history } from './build.js'
import type { OpSpec } from './build.js'

type Outcome = 'ok' | 'fail' | 'info'

/** Adds of `elements` by process 0 one after another from time 0, with the given outcomes. */
function adds(elements: unknown[], outcome: Outcome | ((e: unknown) => Outcome) = 'ok'): OpSpec[] {
  return elements.map((e, i) => ({
    // A new process after each info, as the runner would.
    p: 100 + i,
    f: 'add',
    in: e,
    t: [2 * i, 2 * i + 1],
    type: typeof outcome === 'function' ? outcome(e) : outcome,
  }))
}

function readAll(p: number, elements: unknown[], t0: number, t1: number): OpSpec {
  return { p, f: 'readAll', out: elements, t: [t0, t1] }
}

const check = (specs: OpSpec[]) => checkLostWrites(history(specs))

describe('checkLostWrites', () => {
  it('is valid when every acknowledged add is in the final read', () => {
    const v = check([...adds([1, 2, 3, 4, 5]), readAll(0, [5, 4, 3, 2, 1], 100, 101)])
    expect(v).toMatchObject({ checker: 'lost-writes', valid: true })
    expect(v.details.counts).toMatchObject({ attempted: 5, ok: 5, present: 5, lost: 0 })
    expect(v.summary).toBe('no lost writes: 5 ok adds all present (0 of 0 info adds present)')
    expect(JSON.parse(JSON.stringify(v.details))).toEqual(v.details)
  })

  it('reports an acknowledged add missing from the final read as lost', () => {
    const v = check([...adds(['a', 'b', 'c', 'd']), readAll(0, ['a', 'b', 'd'], 100, 101)])
    expect(v.valid).toBe(false)
    expect(v.details.lost).toEqual(['c'])
    expect(v.details.counts).toMatchObject({ lost: 1, present: 3 })
    expect(v.summary).toBe('lost writes: 1 acknowledged adds lost (of 4 attempted, 3 present)')
  })

  it('lets an info add be present (recovered) or absent', () => {
    const outcome = (e: unknown): Outcome => (e === 2 || e === 3 ? 'info' : 'ok')
    const present = check([...adds([1, 2, 3, 4], outcome), readAll(0, [1, 2, 4], 100, 101)])
    expect(present.valid).toBe(true)
    expect(present.details.recovered).toEqual([2])
    expect(present.details.infoAbsent).toEqual([3])
    expect(present.details.counts).toMatchObject({ info: 2, recovered: 1, infoAbsent: 1 })
    // An info add that never completed at all counts the same.
    const never = check([{ p: 9, f: 'add', in: 7, t: [0] }, readAll(0, [7], 100, 101)])
    expect(never.valid).toBe(true)
    expect(never.details.recovered).toEqual([7])
  })

  it('reports a failed add that is present: a fail must mean it never happened', () => {
    const outcome = (e: unknown): Outcome => (e === 2 ? 'fail' : 'ok')
    const v = check([...adds([1, 2, 3], outcome), readAll(0, [1, 2, 3], 100, 101)])
    expect(v.valid).toBe(false)
    expect(v.details.failedButPresent).toEqual([2])
    expect(v.summary).toContain('1 failed adds present')
    // Absent, it is fine.
    expect(check([...adds([1, 2, 3], outcome), readAll(0, [1, 3], 100, 101)]).valid).toBe(true)
  })

  it('reports elements no add ever invoked', () => {
    const v = check([...adds([1, 2]), readAll(0, [1, 2, 99], 100, 101)])
    expect(v.valid).toBe(false)
    expect(v.details.unexpected).toEqual([99])
    // JSON identity, not loose: '1' is not 1.
    const s = check([...adds([1]), readAll(0, ['1'], 100, 101)])
    expect(s.details.unexpected).toEqual(['1'])
    expect(s.details.lost).toEqual([1])
  })

  it('is unknown without an ok readAll', () => {
    const none = check(adds([1, 2]))
    expect(none.valid).toBe('unknown')
    expect(none.summary).toBe('unknown: no ok readAll to compare 2 adds with')
    const failed = check([...adds([1, 2]), { ...readAll(0, [], 100, 101), type: 'fail' }])
    expect(failed.valid).toBe('unknown')
    const notAList = check([...adds([1]), { p: 0, f: 'readAll', out: 'oops', t: [100, 101] }])
    expect(notAList.valid).toBe('unknown')
  })

  it('judges by the last ok readAll by completion', () => {
    // An early read that misses element 3 (not yet added) is not the final one.
    const specs = [
      ...adds([1, 2, 3]),
      readAll(0, [1, 2], 4.5, 4.8),
      readAll(1, [1, 2, 3], 100, 102),
      // Invoked later but completed earlier: not the last by completion.
      readAll(2, [1], 101, 101.5),
    ]
    expect(check(specs).valid).toBe(true)
    expect(analyzeSet(history(specs)).finalRead?.process).toBe(1)
    const v = check([...adds([1, 2, 3]), readAll(1, [1, 2, 3], 10, 11), readAll(2, [1, 3], 20, 21)])
    expect(v.valid).toBe(false)
    expect(v.details.lost).toEqual([2])
  })

  it('does not count an add that completed after the final read began as lost', () => {
    const v = check([
      { p: 1, f: 'add', in: 'late', t: [99, 100.5] },
      ...adds(['a']),
      readAll(0, ['a'], 100, 101),
    ])
    expect(v.valid).toBe(true)
    expect(v.details.missingConcurrent).toEqual(['late'])
    expect(v.details.lost).toEqual([])
  })

  it('caps the example lists at 100 but counts everything', () => {
    const elements = Array.from({ length: 250 }, (_, i) => i)
    const v = check([...adds(elements), readAll(0, [], 1000, 1001)])
    expect(v.valid).toBe(false)
    expect(v.details.lost).toHaveLength(100)
    expect(v.details.counts).toMatchObject({ lost: 250 })
    expect(analyzeSet(history([...adds(elements), readAll(0, [], 1000, 1001)])).lost).toHaveLength(
      250,
    )
  })

  it('notes duplicates in the final read', () => {
    const v = check([...adds([1, 2]), readAll(0, [1, 2, 2], 100, 101)])
    expect(v.valid).toBe(true)
    expect(v.details.duplicates).toEqual([2])
  })
})

describe('matchRollbacks', () => {
  it('splits lost writes by whether a rollback record explains them', () => {
    expect(matchRollbacks([1, 2, 3, 'x'], [2, 3, 4, 4, 'x'])).toEqual({
      matched: [2, 3, 'x'],
      lostNotInRollbacks: [1],
      rollbacksNotLost: [4],
    })
    expect(matchRollbacks([], [])).toEqual({
      matched: [],
      lostNotInRollbacks: [],
      rollbacksNotLost: [],
    })
    // By JSON value: the string '1' does not explain the number 1.
    expect(matchRollbacks([1], ['1']).lostNotInRollbacks).toEqual([1])
  })

  it('matches the lost elements of a checked history', () => {
    const specs = [
      ...adds(['a', 'b', 'c', 'd']),
      { p: 9, f: 'add' as const, in: 'e', t: [50] as [number] },
      readAll(0, ['a', 'c'], 100, 101),
    ]
    const lost = analyzeSet(history(specs)).lost
    expect(lost).toEqual(['b', 'd'])
    // The info add 'e' was rolled back too: not lost, since it was never acknowledged.
    const m = matchRollbacks(lost, ['b', 'd', 'e'])
    expect(m.lostNotInRollbacks).toEqual([])
    expect(m.rollbacksNotLost).toEqual(['e'])
  })
})
