/**
 * Session guarantees, per process (one client session; a process retires after an info, and
 * its successor is a new session). Versions are the key's LSN, which grows with every write.
 *
 * - Read your writes: after a process's ok write (or cas) of key k made version v, its later
 *   ok reads of k see version >= v. Reading k as absent then is a violation too (the workload
 *   never deletes).
 * - Monotonic reads: a process's ok reads of k never see a lower version than an earlier ok
 *   read of k by the same process saw. (A read below the process's own earlier write is
 *   reported under read your writes.)
 *
 * Only ok operations count: fail ones did not happen, info ones end the session. A read of an
 * absent key with no version counts as version 0. An ok read or write with a value but no
 * version cannot be checked: the verdict is then unknown unless there is a violation.
 */
import type { Operation, Verdict } from '../history.js'
import { compactOp, examples } from './util.js'
import type { CompactOp } from './util.js'

export type SessionGuarantee = 'read-your-writes' | 'monotonic-reads'

export interface SessionViolation {
  guarantee: SessionGuarantee
  process: number
  key: string
  /** The earlier operation (the write, or the read) that set the floor. */
  earlier: CompactOp
  /** The read that went below it. */
  later: CompactOp
  earlierVersion: number
  laterVersion: number
}

interface Seen {
  op: Operation
  version: number
}

/** Checks read-your-writes and monotonic reads; see the module comment. */
export function checkSessions(ops: readonly Operation[]): Verdict {
  const byProcess = new Map<number, Operation[]>()
  for (const op of ops) {
    if (op.type !== 'ok' || op.key === undefined) continue
    if (op.f !== 'read' && op.f !== 'write' && op.f !== 'cas') continue
    let list = byProcess.get(op.process)
    if (list === undefined) byProcess.set(op.process, (list = []))
    list.push(op)
  }

  const violations: SessionViolation[] = []
  const unversioned: Operation[] = []
  let reads = 0
  let writes = 0
  for (const [process, list] of byProcess) {
    list.sort((a, b) => a.invokeIndex - b.invokeIndex)
    const lastWrite = new Map<string, Seen>()
    const lastRead = new Map<string, Seen>()
    for (const op of list) {
      const key = op.key!
      if (op.f !== 'read') {
        if (op.version === undefined) {
          unversioned.push(op)
          continue
        }
        writes++
        const w = lastWrite.get(key)
        if (w === undefined || op.version >= w.version)
          lastWrite.set(key, { op, version: op.version })
        continue
      }
      const version = op.version ?? (op.output === null || op.output === undefined ? 0 : undefined)
      if (version === undefined) {
        unversioned.push(op)
        continue
      }
      reads++
      const w = lastWrite.get(key)
      if (w !== undefined && version < w.version) {
        violations.push(violation('read-your-writes', process, key, w, op, version))
      }
      const r = lastRead.get(key)
      if (r !== undefined && version < r.version) {
        violations.push(violation('monotonic-reads', process, key, r, op, version))
      }
      if (r === undefined || version > r.version) lastRead.set(key, { op, version })
    }
  }

  const ryw = violations.filter((v) => v.guarantee === 'read-your-writes').length
  const mr = violations.length - ryw
  const counts = {
    processes: byProcess.size,
    readsChecked: reads,
    writes,
    readYourWrites: ryw,
    monotonicReads: mr,
    unversioned: unversioned.length,
  }
  let valid: boolean | 'unknown'
  let summary: string
  if (violations.length > 0) {
    valid = false
    const first = violations[0]!
    summary =
      `session guarantees violated: ${ryw} read-your-writes, ${mr} monotonic-reads; first: ` +
      `process ${first.process} read ${JSON.stringify(first.key)} at version ${first.laterVersion} ` +
      `after its ${first.guarantee === 'read-your-writes' ? 'write' : 'read'} of version ${first.earlierVersion}`
  } else if (unversioned.length > 0) {
    valid = 'unknown'
    summary = `unknown: ${unversioned.length} ok operations carry no version (${reads} reads checked, no violation)`
  } else {
    valid = true
    summary = `session guarantees hold: ${reads} reads checked over ${byProcess.size} processes`
  }
  return {
    checker: 'sessions',
    valid,
    summary,
    details: {
      counts,
      violations: examples(violations),
      ...(unversioned.length > 0 ? { unversioned: examples(unversioned).map(compactOp) } : {}),
    },
  }
}

function violation(
  guarantee: SessionGuarantee,
  process: number,
  key: string,
  earlier: Seen,
  later: Operation,
  laterVersion: number,
): SessionViolation {
  return {
    guarantee,
    process,
    key,
    earlier: compactOp(earlier.op),
    later: compactOp(later),
    earlierVersion: earlier.version,
    laterVersion,
  }
}
