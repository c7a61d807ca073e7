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
