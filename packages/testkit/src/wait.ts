/**
 * Polls `check` every `everyMs` (10 ms by default) until it holds; fails naming `what` after
 * `timeoutMs`.
 */
export async function until(
  what: string,
  check: () => Promise<boolean> | boolean,
  timeoutMs = 20_000,
  everyMs = 10,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, everyMs))
  }
}

/** `until` with named options, polling every 100 ms: fails with `message` after `timeoutMs`. */
export async function waitFor(
  check: () => Promise<boolean> | boolean,
  options: { timeoutMs: number; message: string },
): Promise<void> {
  await until(options.message, check, options.timeoutMs, 100)
}

/**
 * The error `promise` rejects with, which must be a `type`; throws when it resolves or rejects
 * with anything else.
 */
export async function rejection<E>(
  promise: Promise<unknown>,
  type: abstract new (...args: never[]) => E,
): Promise<E> {
  const outcome = await promise.then(
    (value: unknown) => ({ value }),
    (error: unknown) => ({ error }),
  )
  if (!('error' in outcome)) {
    throw new Error(`expected a rejection with ${type.name}, got ${JSON.stringify(outcome.value)}`)
  }
  if (!(outcome.error instanceof type)) {
    throw new Error(`expected a rejection with ${type.name}, got ${String(outcome.error)}`, {
      cause: outcome.error,
    })
  }
  return outcome.error
}
