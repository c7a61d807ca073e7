/**
 * Convergence: after the run heals and quiesces, every node holds the same data. Valid iff
 * every node reports the same applied LSN and the same digest of its contents.
 */
import type { Verdict } from '../history.js'

export interface NodeDigest {
  node: string
  appliedLsn: number
  digest: string
}

export interface DigestGroup {
  appliedLsn: number
  digest: string
  nodes: string[]
}

/** Groups the nodes by (applied LSN, digest); valid iff there is at most one group. */
export function checkConvergence(digests: readonly NodeDigest[]): Verdict {
  const groups = new Map<string, DigestGroup>()
  for (const d of digests) {
    const k = JSON.stringify([d.appliedLsn, d.digest])
    let g = groups.get(k)
    if (g === undefined)
      groups.set(k, (g = { appliedLsn: d.appliedLsn, digest: d.digest, nodes: [] }))
    g.nodes.push(d.node)
  }
  // The largest group first: the others are the odd ones out.
  const list = [...groups.values()].sort((a, b) => b.nodes.length - a.nodes.length)
  const details: Record<string, unknown> = { nodes: digests.length, groups: list }
  if (digests.length <= 1) {
    return {
      checker: 'convergence',
      valid: true,
      summary:
        digests.length === 0
          ? 'converged trivially: no node reported a digest'
          : `converged trivially: only node ${digests[0]!.node} reported a digest`,
      details: {
        ...details,
        note: 'fewer than two nodes: nothing to compare',
      },
    }
  }
  if (list.length === 1) {
    return {
      checker: 'convergence',
      valid: true,
      summary: `converged: ${digests.length} nodes at LSN ${list[0]!.appliedLsn} with digest ${list[0]!.digest}`,
      details,
    }
  }
  return {
    checker: 'convergence',
    valid: false,
    summary: `diverged: ${list.length} groups: ${list
      .map((g) => `[${g.nodes.join(', ')}] at LSN ${g.appliedLsn} digest ${g.digest}`)
      .join('; ')}`,
    details,
  }
}
