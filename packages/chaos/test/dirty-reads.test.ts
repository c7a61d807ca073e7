import { checkDirtyReads, type DirtyReadObservation } from '../src/checkers/index.js'

const read = (key: string, value: string, node = 'n1'): DirtyReadObservation => ({
  key,
  value,
  source: 'read',
  node,
})

describe('the dirty-read checker', () => {
  const finalState = new Map([
    ['d/1', '1'],
    ['d/2', '2'],
  ])

  it('passes observations of committed values', () => {
    const verdict = checkDirtyReads({
      observations: [read('d/1', '1'), read('d/2', '2'), read('d/2', '2', 'n2')],
      rolledBack: [{ key: 'd/3', value: '3' }],
      finalState,
    })
    expect(verdict.valid).toBe(true)
    expect(verdict.summary).toMatch(
      /3 observations \(2 distinct values\), none of the 1 rolled-back/,
    )
  })

  it('catches a value in a rollback record, and one absent after the run', () => {
    const verdict = checkDirtyReads({
      observations: [
        read('d/1', '1'),
        read('d/3', '3', 'n1'),
        { key: 'd/4', value: '4', source: 'watch', node: 'n2' },
      ],
      rolledBack: [{ key: 'd/3', value: '3' }],
      finalState,
    })
    expect(verdict.valid).toBe(false)
    expect(verdict.summary).toMatch(
      /2 of 3 observations .*1 in rollback records, 1 absent after the run.*n1, n2/,
    )
    const details = verdict.details as {
      rolledBack: DirtyReadObservation[]
      absent: DirtyReadObservation[]
    }
    expect(details.rolledBack.map((o) => o.key)).toEqual(['d/3'])
    expect(details.absent.map((o) => o.source)).toEqual(['watch'])
  })

  it('catches a different value of a key written once, and a rolled-back key without a value', () => {
    expect(
      checkDirtyReads({ observations: [read('d/1', 'other')], rolledBack: [], finalState }).valid,
    ).toBe(false)
    expect(
      checkDirtyReads({
        observations: [read('d/9', '9')],
        rolledBack: [{ key: 'd/9' }],
        finalState: null,
      }).valid,
    ).toBe(false)
  })

  it('is unknown, not valid, without a final state', () => {
    const verdict = checkDirtyReads({
      observations: [read('d/1', '1')],
      rolledBack: [],
      finalState: null,
    })
    expect(verdict.valid).toBe('unknown')
  })
})
