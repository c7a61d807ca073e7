/**
 * Dirty reads: no read at `consistency=committed` (and no watch event) may ever show a value
 * that a failover later rolled back. Every observed (key, value) is checked against
 *   - the rollback records of every node after the run: a value a truncation removed was never
 *     committed, so whoever saw it saw a write that, for the cluster, never existed;
 *   - the final state after the run (read once the cluster has healed and committed every
 *     entry): the workload writes each key once, with one value, so an observed value that is
 *     absent from the final state was rolled back too (also when the rollback record was lost
 *     or trimmed).
 *
 * The checker takes plain observations `{ key, value, source }` so that watch events can be
 * fed to it beside reads. It is only meaningful for keys written once (the dirty-read
 * workload's `<prefix>d/<n>` = `n`); a key overwritten later would make its older values
 * "absent after the run".
 */
import type { Operation, Verdict } from '../history.js'
import { examples } from './util.js'

/** One value some client saw: by a read (`source: 'read'`) or in a watch event. */
export interface DirtyReadObservation {
  key: string
  value: string
  source: 'read' | 'watch'
  /** The node that served it, when known. */
  node?: string
  /** When it was seen (ms since the run started), when known. */
  time?: number
  /** The read's consistency level, when a read. */
  level?: string
}

/** A (key, value) a node's rollback record holds; without a value, any value of the key. */
export interface RolledBackValue {
  key: string
  value?: string
}

export interface DirtyReadInput {
  observations: readonly DirtyReadObservation[]
  /** Every node's rollback records after the run. */
  rolledBack: readonly RolledBackValue[]
  /**
   * The final state of the keys the workload wrote (key -> value), or null when the final
   * read failed (then only the rollback records are checked, and a clean result is unknown).
   */
  finalState: ReadonlyMap<string, string> | null
}

export interface DirtyReadAnalysis {
  observations: number
  /** Distinct (key, value) pairs observed. */
  distinct: number
  /** Observations of values a rollback record holds. */
  rolledBack: DirtyReadObservation[]
  /** Observations of values absent from the final state (and not in a rollback record). */
  absent: DirtyReadObservation[]
}

const pairKey = (key: string, value: string) => JSON.stringify([key, value])

export function analyzeDirtyReads(input: DirtyReadInput): DirtyReadAnalysis {
  const rolledPairs = new Set<string>()
  const rolledKeys = new Set<string>()
  for (const r of input.rolledBack) {
    if (r.value === undefined) rolledKeys.add(r.key)
    else rolledPairs.add(pairKey(r.key, r.value))
  }
  const distinct = new Set<string>()
  const result: DirtyReadAnalysis = {
    observations: input.observations.length,
    distinct: 0,
    rolledBack: [],
    absent: [],
  }
  for (const o of input.observations) {
    const k = pairKey(o.key, o.value)
    distinct.add(k)
    if (rolledPairs.has(k) || rolledKeys.has(o.key)) result.rolledBack.push(o)
    else if (input.finalState !== null && input.finalState.get(o.key) !== o.value)
      result.absent.push(o)
  }
  result.distinct = distinct.size
  return result
}

/** The dirty-read verdict; `checker` names it (e.g. `dirty-reads` or `dirty-watch`). */
export function checkDirtyReads(input: DirtyReadInput, checker = 'dirty-reads'): Verdict {
  const a = analyzeDirtyReads(input)
  const counts = {
    observations: a.observations,
    watchObservations: input.observations.filter((o) => o.source === 'watch').length,
    dirtyWatchObservations: [...a.rolledBack, ...a.absent].filter((o) => o.source === 'watch')
      .length,
    distinct: a.distinct,
    rolledBackValuesInRecords: input.rolledBack.length,
    finalKeys: input.finalState?.size ?? null,
    seenRolledBack: a.rolledBack.length,
    seenAbsent: a.absent.length,
  }
  const details = {
    counts,
    rolledBack: examples(a.rolledBack),
    absent: examples(a.absent),
  }
  const dirty = a.rolledBack.length + a.absent.length
  if (dirty > 0) {
    const nodes = [...new Set([...a.rolledBack, ...a.absent].map((o) => o.node ?? '?'))].sort()
    return {
      checker,
      valid: false,
      summary: `dirty reads: ${dirty} of ${a.observations} observations showed a value that never committed (${a.rolledBack.length} in rollback records, ${a.absent.length} absent after the run), served by ${nodes.join(', ')}`,
      details,
    }
  }
  if (input.finalState === null) {
    return {
      checker,
      valid: 'unknown',
      summary: `unknown: no final state to compare ${a.observations} observations with (none is in a rollback record)`,
      details,
    }
  }
  return {
    checker,
    valid: true,
    summary: `no dirty reads: ${a.observations} observations (${a.distinct} distinct values), none of the ${input.rolledBack.length} rolled-back values nor absent after the run`,
    details,
  }
}

/**
 * The observations in a dirty-read workload's history: every ok `read` that saw a value (a
 * read of an absent key shows nothing), and every value a `watch` event showed.
 */
export function observationsOf(ops: readonly Operation[]): DirtyReadObservation[] {
  const out: DirtyReadObservation[] = []
  for (const op of ops) {
    if ((op.f !== 'read' && op.f !== 'watch') || op.type !== 'ok' || op.key === undefined) continue
    if (typeof op.output !== 'string') continue
    out.push({
      key: op.key,
      value: op.output,
      source: op.f,
      time: op.invokeTime,
      ...(op.node !== undefined ? { node: op.node } : {}),
    })
  }
  return out
}
