/**
 * Hinted handoff decisions (pure). A write meant for a replica the coordinator cannot reach
 * goes to the next healthy member past the preference list, the stand-in, which keeps it as a
 * durable hint and replays it once the replica is back. A hint is kept for `hintWindowMs`:
 * past it, anti-entropy is what brings the replica up to date.
 */

/** A hint stored at `storedAtMs` is too old to replay at `nowMs` (drop it instead). */
export function hintExpired(storedAtMs: number, nowMs: number, hintWindowMs: number): boolean {
  return nowMs - storedAtMs > hintWindowMs
}

/**
 * Whether a write for `target` may still be handed to a stand-in: not when the target has
 * been known down for `hintWindowMs` or more (`downSinceMs` 0: not known down).
 */
export function mayHintFor(downSinceMs: number, nowMs: number, hintWindowMs: number): boolean {
  return !(downSinceMs > 0 && nowMs - downSinceMs >= hintWindowMs)
}

/**
 * The next stand-in for a hint: the first member past the preference list (in ring order)
 * that is believed up and holds no hint of this write yet; undefined when none is left.
 */
export function pickStandIn(
  standIns: readonly string[],
  used: ReadonlySet<string>,
  isUp: (member: string) => boolean,
): string | undefined {
  return standIns.find((m) => !used.has(m) && isUp(m))
}
