/**
 * Lost writes in the set workload: every `add` puts one unique element; the last ok `readAll`
 * (by completion) says which elements survived. An ok add missing from it was acknowledged and
 * lost; a failed add present in it took effect although the client was told it certainly did
 * not; an element nobody ever tried to add came from nowhere. Info adds may go either way.
 */
import type { Operation, Verdict } from '../history.js'
import { byCompletion, compactOp, examples, valueKey } from './util.js'
import type { CompactOp } from './util.js'

/** Everything the set checker found; the lists are complete (the verdict holds examples). */
export interface SetAnalysis {
  /** The last ok readAll by completion, or null when there is none. */
  finalRead: Operation | null
  /** Distinct elements some add invoked, by outcome (ok over info over fail, for repeats). */
  attempted: number
  ok: number
  info: number
  fail: number
  /** Elements in the final read. */
  present: number
  /** Ok adds that completed before the final read began and are missing from it. */
  lost: unknown[]
  /** Ok adds missing from the final read that completed after it began (not a violation). */
  missingConcurrent: unknown[]
  /** Elements in the final read that no add ever invoked. */
  unexpected: unknown[]
  /** Info adds present in the final read (they took effect). */
  recovered: unknown[]
  /** Info adds absent from the final read (they did not, or not yet). */
  infoAbsent: unknown[]
  /** Failed adds present in the final read: a fail must mean it never took effect. */
  failedButPresent: unknown[]
  /** Elements the final read listed more than once. */
  duplicates: unknown[]
}

const rank = { ok: 3, info: 2, fail: 1 } as const

/** Classifies every add against the final readAll. */
export function analyzeSet(ops: readonly Operation[]): SetAnalysis {
  const adds = new Map<string, Operation>()
  let finalRead: Operation | null = null
  for (const op of ops) {
    if (op.f === 'add') {
      const k = valueKey(op.input)
      const seen = adds.get(k)
      if (seen === undefined || rank[op.type] > rank[seen.type]) adds.set(k, op)
    } else if (op.f === 'readAll' && op.type === 'ok') {
      if (finalRead === null || byCompletion(op, finalRead) > 0) finalRead = op
    }
  }
  const result: SetAnalysis = {
    finalRead,
    attempted: adds.size,
    ok: 0,
    info: 0,
    fail: 0,
    present: 0,
    lost: [],
    missingConcurrent: [],
    unexpected: [],
    recovered: [],
    infoAbsent: [],
    failedButPresent: [],
    duplicates: [],
  }
  for (const op of adds.values()) result[op.type]++
  if (finalRead === null || !Array.isArray(finalRead.output)) return result

  const present = new Set<string>()
  for (const element of finalRead.output as unknown[]) {
    const k = valueKey(element)
    if (present.has(k)) {
      result.duplicates.push(element)
      continue
    }
    present.add(k)
    if (!adds.has(k)) result.unexpected.push(element)
  }
  result.present = present.size
  const read = finalRead
  for (const [k, op] of adds) {
    const isPresent = present.has(k)
    if (op.type === 'ok') {
      if (isPresent) continue
      // Completed before the read was invoked: the read must see it.
      const done =
        op.completeTime < read.invokeTime ||
        (op.completeTime === read.invokeTime && op.completeIndex < read.invokeIndex)
      ;(done ? result.lost : result.missingConcurrent).push(op.input)
    } else if (op.type === 'info') {
      ;(isPresent ? result.recovered : result.infoAbsent).push(op.input)
    } else if (isPresent) {
      result.failedButPresent.push(op.input)
    }
  }
  return result
}

/** The set workload's verdict; see the module comment. */
export function checkLostWrites(ops: readonly Operation[]): Verdict {
  const a = analyzeSet(ops)
  const counts = {
    attempted: a.attempted,
    ok: a.ok,
    info: a.info,
    fail: a.fail,
    present: a.present,
    lost: a.lost.length,
    missingConcurrent: a.missingConcurrent.length,
    unexpected: a.unexpected.length,
    recovered: a.recovered.length,
    infoAbsent: a.infoAbsent.length,
    failedButPresent: a.failedButPresent.length,
    duplicates: a.duplicates.length,
  }
  if (a.finalRead === null || !Array.isArray(a.finalRead.output)) {
    return {
      checker: 'lost-writes',
      valid: 'unknown',
      summary:
        a.finalRead === null
          ? `unknown: no ok readAll to compare ${a.attempted} adds with`
          : 'unknown: the final readAll returned no list',
      details: {
        counts,
        ...(a.finalRead !== null ? { finalRead: compactOp(a.finalRead) } : {}),
      },
    }
  }
  const problems: string[] = []
  if (a.lost.length > 0) problems.push(`${a.lost.length} acknowledged adds lost`)
  if (a.failedButPresent.length > 0) {
    problems.push(`${a.failedButPresent.length} failed adds present`)
  }
  if (a.unexpected.length > 0) problems.push(`${a.unexpected.length} elements never added`)
  const valid = problems.length === 0
  const read: CompactOp = compactOp({ ...a.finalRead, output: null })
  return {
    checker: 'lost-writes',
    valid,
    summary: valid
      ? `no lost writes: ${a.ok} ok adds all present (${a.recovered.length} of ${a.info} info adds present)`
      : `lost writes: ${problems.join(', ')} (of ${a.attempted} attempted, ${a.present} present)`,
    details: {
      counts,
      finalRead: { ...read, output: `${a.present} elements` },
      lost: examples(a.lost),
      failedButPresent: examples(a.failedButPresent),
      unexpected: examples(a.unexpected),
      recovered: examples(a.recovered),
      infoAbsent: examples(a.infoAbsent),
      missingConcurrent: examples(a.missingConcurrent),
      duplicates: examples(a.duplicates),
    },
  }
}

export interface RollbackMatch {
  /** Lost elements the rollback record lists. */
  matched: unknown[]
  /** Lost elements the rollback record does not explain. */
  lostNotInRollbacks: unknown[]
  /** Rolled-back elements that were not lost (never acknowledged, or written again). */
  rollbacksNotLost: unknown[]
}

/**
 * Compares the lost elements with the elements of the nodes' rollback records (by JSON value).
 * With asynchronous acknowledgement every lost write must appear in a rollback record:
 * `lostNotInRollbacks` must be empty.
 */
export function matchRollbacks(
  lost: readonly unknown[],
  rolledBack: readonly unknown[],
): RollbackMatch {
  const rolled = new Set(rolledBack.map(valueKey))
  const lostKeys = new Set(lost.map(valueKey))
  const matched: unknown[] = []
  const lostNotInRollbacks: unknown[] = []
  for (const e of lost) (rolled.has(valueKey(e)) ? matched : lostNotInRollbacks).push(e)
  const rollbacksNotLost: unknown[] = []
  const seen = new Set<string>()
  for (const e of rolledBack) {
    const k = valueKey(e)
    if (seen.has(k)) continue
    seen.add(k)
    if (!lostKeys.has(k)) rollbacksNotLost.push(e)
  }
  return { matched, lostNotInRollbacks, rollbacksNotLost }
}
