/**
 * The lock checker (issue 19; docs/leases.md): the resource's accepted history, every write
 * the store took in LSN order, shows no two holders' writes interleaved.
 *
 * Each resource write names the fencing token of the holder that made it (workloads-locks.ts),
 * and a later holder always has a higher token (the LSN at which it took the lock). So the
 * accepted history is valid when, in LSN order, tokens never go down: once a later holder has
 * written, no write of an earlier one follows. A paused holder that woke and wrote after the
 * next holder did is exactly a token that goes down, and so is any A, B, A interleaving.
 *
 * The history comes from the final listing (`readAll`), not from what clients were told: a
 * write whose client saw a timeout may still be in it, and counts like any other.
 */
import type { Operation, Verdict } from '../history.js'

export interface ResourceWrite {
  key: string
  /** The LSN that wrote it. */
  version: number
  token: number
  process: number
}

/** Parses the workload's `<token> <process> <n>` values. */
export function parseResourceWrites(
  items: readonly { key: string; version: number; value: string }[],
): ResourceWrite[] {
  return items.map((item) => {
    const [token, process] = item.value.split(' ').map(Number)
    return { key: item.key, version: item.version, token: token ?? NaN, process: process ?? NaN }
  })
}

/** Writes in LSN order whose token is below one already written: each is an interleaving. */
export function lockViolations(writes: readonly ResourceWrite[]): {
  write: ResourceWrite
  after: ResourceWrite
}[] {
  const ordered = [...writes].sort((a, b) => a.version - b.version)
  const violations: { write: ResourceWrite; after: ResourceWrite }[] = []
  let highest: ResourceWrite | null = null
  for (const w of ordered) {
    if (highest !== null && w.token < highest.token) violations.push({ write: w, after: highest })
    if (highest === null || w.token > highest.token) highest = w
  }
  return violations
}

export function checkLocks(ops: readonly Operation[]): Verdict {
  const readAll = ops.filter((op) => op.f === 'readAll' && op.type === 'ok').at(-1)
  if (readAll === undefined) {
    return {
      checker: 'locks',
      valid: 'unknown',
      summary: 'the final listing of the resource failed, so there is no accepted history to check',
      details: {},
    }
  }
  const writes = parseResourceWrites(
    readAll.output as { key: string; version: number; value: string }[],
  )
  const malformed = writes.filter((w) => !Number.isSafeInteger(w.token))
  const violations = lockViolations(writes.filter((w) => Number.isSafeInteger(w.token)))
  const holders = new Set(writes.map((w) => w.token)).size
  const acquired = ops.filter((op) => op.f === 'acquire' && op.type === 'ok').length
  const pauses = ops.filter((op) => op.f === 'pause').length
  const fenced = ops.filter((op) => op.f === 'write' && op.error === 'KV_ERR_FENCED').length
  const valid = violations.length === 0 && malformed.length === 0
  return {
    checker: 'locks',
    valid,
    summary: valid
      ? `${writes.length} accepted resource writes by ${holders} holders (${acquired} acquisitions, ${pauses} pauses past the TTL, ${fenced} writes refused as fenced): no two holders' writes interleaved`
      : `${violations.length} resource writes by an earlier holder after a later holder's (${writes.length} accepted writes, ${holders} holders, ${pauses} pauses, ${fenced} fenced)${malformed.length > 0 ? `; ${malformed.length} malformed values` : ''}`,
    details: {
      accepted: writes.length,
      holders,
      acquired,
      pauses,
      fenced,
      violations: violations.slice(0, 20),
      malformed: malformed.slice(0, 20),
    },
  }
}
