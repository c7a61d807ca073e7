import { checkConvergence } from '../src/checkers/index.js'

describe('checkConvergence', () => {
  it('is valid when every node has the same applied LSN and digest', () => {
    const v = checkConvergence([
      { node: 'n1', appliedLsn: 42, digest: 'abc' },
      { node: 'n2', appliedLsn: 42, digest: 'abc' },
      { node: 'n3', appliedLsn: 42, digest: 'abc' },
    ])
    expect(v).toMatchObject({ checker: 'convergence', valid: true })
    expect(v.summary).toBe('converged: 3 nodes at LSN 42 with digest abc')
    expect(v.details.groups).toEqual([{ appliedLsn: 42, digest: 'abc', nodes: ['n1', 'n2', 'n3'] }])
  })

  it('is invalid when a digest differs, and groups the nodes', () => {
    const v = checkConvergence([
      { node: 'n1', appliedLsn: 42, digest: 'abc' },
      { node: 'n2', appliedLsn: 42, digest: 'xyz' },
      { node: 'n3', appliedLsn: 42, digest: 'abc' },
    ])
    expect(v.valid).toBe(false)
    expect(v.details.groups).toEqual([
      { appliedLsn: 42, digest: 'abc', nodes: ['n1', 'n3'] },
      { appliedLsn: 42, digest: 'xyz', nodes: ['n2'] },
    ])
    expect(v.summary).toBe(
      'diverged: 2 groups: [n1, n3] at LSN 42 digest abc; [n2] at LSN 42 digest xyz',
    )
  })

  it('is invalid when only the applied LSN differs', () => {
    const v = checkConvergence([
      { node: 'n1', appliedLsn: 42, digest: 'abc' },
      { node: 'n2', appliedLsn: 41, digest: 'abc' },
    ])
    expect(v.valid).toBe(false)
    expect(v.details.groups).toHaveLength(2)
  })

  it('is trivially valid, with a note, for zero or one node', () => {
    const none = checkConvergence([])
    expect(none.valid).toBe(true)
    expect(none.details).toMatchObject({ nodes: 0, groups: [], note: expect.any(String) })
    const one = checkConvergence([{ node: 'n1', appliedLsn: 1, digest: 'd' }])
    expect(one.valid).toBe(true)
    expect(one.summary).toBe('converged trivially: only node n1 reported a digest')
    expect(one.details.note).toBeDefined()
  })
})
