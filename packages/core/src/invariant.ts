/** A broken invariant of the replication core: a bug, never a recoverable condition. */
export class CoreInvariantError extends Error {
  constructor(message: string) {
    super(`core invariant violated: ${message}`)
    this.name = 'CoreInvariantError'
  }
}

export function invariant(condition: unknown, message: string | (() => string)): asserts condition {
  if (!condition) throw new CoreInvariantError(typeof message === 'string' ? message : message())
}
