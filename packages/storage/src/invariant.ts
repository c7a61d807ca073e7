/**
 * A broken invariant: the store's own rules do not hold (an LSN gap, an epoch going down, a
 * truncation below the commit LSN). The store stops writing when it sees one, so that a bug
 * can crash the node but never corrupt its data.
 */
export class InvariantError extends Error {
  constructor(message: string) {
    super(`invariant violated: ${message}`)
    this.name = 'InvariantError'
  }
}

/** Throws `InvariantError` unless `condition` holds. Always on, in every build. */
export function invariant(condition: unknown, message: string | (() => string)): asserts condition {
  if (!condition) throw new InvariantError(typeof message === 'string' ? message : message())
}

/** A data directory that cannot be opened or has been damaged. */
export class StorageError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'StorageError'
  }
}
