/**
 * Small helpers the checkers share: value identity, compact operations for counterexamples,
 * and capped example lists.
 */
import type { Operation } from '../history.js'

/** How many example elements or violations a verdict's details list at most. */
export const exampleLimit = 100

/**
 * A string that identifies a JSON value: equal strings for equal values, and distinct ones for
 * values of different types (1 and '1' differ). `undefined` counts as null (absent).
 */
export function valueKey(value: unknown): string {
  if (value === undefined || value === null) return 'null'
  switch (typeof value) {
    case 'string':
      return `s${value}`
    case 'number':
      // Strict equality: -0 === 0, and NaN never equals itself (it cannot come from JSON).
      return Object.is(value, -0) ? 'n0' : `n${value}`
    case 'boolean':
      return `b${value}`
    default:
      return `j${JSON.stringify(value)}`
  }
}

/** An operation as a counterexample shows it; an info op's completeTime is null (never). */
export interface CompactOp {
  process: number
  f: Operation['f']
  key?: string
  type: Operation['type']
  input: unknown
  output: unknown
  invokeTime: number
  completeTime: number | null
  index: number
  version?: number
  node?: string
}

export function compactOp(op: Operation): CompactOp {
  return {
    process: op.process,
    f: op.f,
    ...(op.key !== undefined ? { key: op.key } : {}),
    type: op.type,
    input: op.input,
    output: op.output,
    invokeTime: op.invokeTime,
    completeTime: Number.isFinite(op.completeTime) ? op.completeTime : null,
    index: op.invokeIndex,
    ...(op.version !== undefined ? { version: op.version } : {}),
    ...(op.node !== undefined ? { node: op.node } : {}),
  }
}

/** The first `exampleLimit` items. */
export function examples<T>(items: readonly T[], limit = exampleLimit): T[] {
  return items.slice(0, limit)
}

/** Orders operations by completion: time, then the completion's position in the history. */
export function byCompletion(a: Operation, b: Operation): number {
  return a.completeTime - b.completeTime || a.completeIndex - b.completeIndex || 0
}
