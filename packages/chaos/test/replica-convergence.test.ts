import { checkReplicaConvergence, replicaSets } from '../src/checkers/index.js'

const range = (replicas: string, root: number, keys: number) => ({ replicas, root, keys })

describe('checkReplicaConvergence', () => {
  it('is valid when every member of every replica set reports the same root', () => {
    const v = checkReplicaConvergence(
      [
        { node: 'n1', ranges: [range('n1,n2,n3', 7, 10)] },
        { node: 'n2', ranges: [range('n1,n2,n3', 7, 10), range('n2,n3,n4', 9, 4)] },
        { node: 'n3', ranges: [range('n1,n2,n3', 7, 10), range('n2,n3,n4', 9, 4)] },
        { node: 'n4', ranges: [range('n2,n3,n4', 9, 4)] },
      ],
      1200,
    )
    expect(v).toMatchObject({ checker: 'replica-convergence', valid: true })
    expect(v.summary).toBe(
      'converged after 1200 ms: every member of each of the 2 replica sets reports the same Merkle root (14 keys in all)',
    )
    expect(v.details.replicaSets).toBe(2)
  })

  it('is invalid when one member of a replica set has another root', () => {
    const v = checkReplicaConvergence([
      { node: 'n1', ranges: [range('n1,n2,n3', 7, 10)] },
      { node: 'n2', ranges: [range('n1,n2,n3', 7, 10)] },
      { node: 'n3', ranges: [range('n1,n2,n3', 8, 9)] },
    ])
    expect(v.valid).toBe(false)
    expect(v.summary).toContain('1 of 1 replica sets differ')
    expect(v.summary).toContain('n3 root 8 (9 keys)')
  })

  it('counts a member that does not list a replica set as holding nothing there', () => {
    // n3 holds nothing for n1,n2,n3 while the others hold keys: diverged.
    const missing = checkReplicaConvergence([
      { node: 'n1', ranges: [range('n1,n2,n3', 7, 10)] },
      { node: 'n2', ranges: [range('n1,n2,n3', 7, 10)] },
      { node: 'n3', ranges: [] },
    ])
    expect(missing.valid).toBe(false)
    expect(missing.summary).toContain('n3 none')
    // ...but it agrees with members whose copy is empty.
    const empty = checkReplicaConvergence([
      { node: 'n1', ranges: [range('n1,n2,n3', 0, 0)] },
      { node: 'n2', ranges: [] },
      { node: 'n3', ranges: [range('n1,n2,n3', 0, 0)] },
    ])
    expect(empty.valid).toBe(true)
  })

  it('is invalid when a node does not answer', () => {
    const v = checkReplicaConvergence([
      { node: 'n1', ranges: [range('n1,n2,n3', 7, 10)] },
      { node: 'n2', ranges: [range('n1,n2,n3', 7, 10)] },
      { node: 'n3', ranges: null, error: 'ECONNREFUSED' },
    ])
    expect(v.valid).toBe(false)
    expect(v.summary).toContain('n3 did not report')
    expect(replicaSets([{ node: 'n1', ranges: [range('n1,n3', 1, 1)] }])[0]).toMatchObject({
      converged: false,
      members: [
        { node: 'n1', root: 1 },
        { node: 'n3', unreachable: true },
      ],
    })
  })

  it('is trivially valid when no node reports a replica set', () => {
    const v = checkReplicaConvergence([{ node: 'n1', ranges: [] }])
    expect(v.valid).toBe(true)
    expect(v.summary).toContain('converged trivially')
  })
})
