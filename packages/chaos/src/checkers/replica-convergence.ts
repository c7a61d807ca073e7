/**
 * Replica convergence in leaderless mode: after the run heals and anti-entropy has had its
 * time, the replicas of every key hold the same data. Each node reports, per replica set it
 * belongs to (the N members that hold a range of the ring, e.g. "n1,n2,n4"), the Merkle root
 * of what it stores there (GET /admin/v1/ranges). Valid iff, for every replica set any node
 * reports, every member of that set reports the same root.
 *
 * A member that does not list a replica set holds nothing there: it agrees with members whose
 * copy is empty too (they report 0 keys), and disagrees with any member that holds keys. A node
 * that does not answer agrees with nobody: convergence cannot be shown.
 */
import type { Verdict } from '../history.js'

export interface RangeRoot {
  /** The replica set, member ids joined by commas. */
  replicas: string
  root: number
  keys: number
}

/** One node's answer; `ranges` is null when it did not answer. */
export interface RangeReport {
  node: string
  ranges: RangeRoot[] | null
  error?: string
}

/** One member's state for one replica set. */
export type MemberRoot =
  | { node: string; root: number; keys: number }
  | { node: string; missing: true }
  | { node: string; unreachable: true }

export interface ReplicaSetState {
  replicas: string
  members: MemberRoot[]
  converged: boolean
}

const sameRoot = (a: MemberRoot, b: MemberRoot) =>
  'root' in a && 'root' in b && a.root === b.root && a.keys === b.keys

/** The state of every replica set that some node reports, in a stable order. */
export function replicaSets(reports: readonly RangeReport[]): ReplicaSetState[] {
  const byNode = new Map(reports.map((r) => [r.node, r]))
  const sets = new Set<string>()
  for (const r of reports) for (const range of r.ranges ?? []) sets.add(range.replicas)
  const out: ReplicaSetState[] = []
  for (const replicas of [...sets].sort()) {
    const members: MemberRoot[] = replicas.split(',').map((node) => {
      const report = byNode.get(node)
      if (report === undefined || report.ranges === null) return { node, unreachable: true }
      const range = report.ranges.find((x) => x.replicas === replicas)
      return range === undefined
        ? { node, missing: true }
        : { node, root: range.root, keys: range.keys }
    })
    const present = members.filter((m) => 'root' in m)
    const first = present[0]
    const converged =
      !members.some((m) => 'unreachable' in m) &&
      first !== undefined &&
      present.every((m) => sameRoot(m, first)) &&
      // Members without the set hold nothing there: only an empty copy matches them.
      (present.length === members.length || ('root' in first && first.keys === 0))
    out.push({ replicas, members, converged })
  }
  return out
}

/** The verdict; `waitedMs` is how long the runner waited for convergence before asking. */
export function checkReplicaConvergence(
  reports: readonly RangeReport[],
  waitedMs?: number,
): Verdict {
  const sets = replicaSets(reports)
  const diverged = sets.filter((s) => !s.converged)
  const unreachable = reports.filter((r) => r.ranges === null)
  const keys = sets.reduce((sum, s) => {
    const m = s.members.find((x) => 'root' in x)
    return sum + (m !== undefined && 'keys' in m ? m.keys : 0)
  }, 0)
  const waited = waitedMs === undefined ? '' : ` after ${Math.round(waitedMs)} ms`
  const details: Record<string, unknown> = {
    nodes: reports.length,
    replicaSets: sets.length,
    diverged: diverged.slice(0, 100),
    unreachable: unreachable.map((r) => ({ node: r.node, error: r.error ?? null })),
    ...(waitedMs !== undefined ? { waitedMs } : {}),
  }
  if (unreachable.length > 0) {
    return {
      checker: 'replica-convergence',
      valid: false,
      summary: `not shown to converge${waited}: ${unreachable.map((r) => r.node).join(', ')} did not report their ranges`,
      details,
    }
  }
  if (diverged.length > 0) {
    const describe = (m: MemberRoot) =>
      'root' in m
        ? `${m.node} root ${m.root} (${m.keys} keys)`
        : 'missing' in m
          ? `${m.node} none`
          : `${m.node} unreachable`
    return {
      checker: 'replica-convergence',
      valid: false,
      summary: `diverged${waited}: ${diverged.length} of ${sets.length} replica sets differ, e.g. ${diverged
        .slice(0, 3)
        .map((s) => `[${s.replicas}] ${s.members.map(describe).join(', ')}`)
        .join('; ')}`,
      details,
    }
  }
  return {
    checker: 'replica-convergence',
    valid: true,
    summary:
      sets.length === 0
        ? `converged trivially${waited}: no node reported a replica set`
        : `converged${waited}: every member of each of the ${sets.length} replica sets reports the same Merkle root (${keys} keys in all)`,
    details,
  }
}
