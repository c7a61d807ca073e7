/**
 * Quorum arithmetic, as small pure functions (after etcd's quorum/majority.go).
 */

/** Votes or acknowledgements needed out of `members`. */
export function majority(members: number): number {
  if (!Number.isSafeInteger(members) || members < 1) throw new Error(`bad member count ${members}`)
  return Math.floor(members / 2) + 1
}

/**
 * The highest LSN that at least a majority of members have: sort the members' LSNs from
 * high to low and take the one at position majority - 1.
 */
export function majorityLsn(lsns: readonly number[]): number {
  if (lsns.length === 0) return 0
  const sorted = [...lsns].sort((a, b) => b - a)
  return sorted[majority(lsns.length) - 1] as number
}

/** The highest LSN that every member has. */
export function allLsn(lsns: readonly number[]): number {
  if (lsns.length === 0) return 0
  let min = Infinity
  for (const lsn of lsns) if (lsn < min) min = lsn
  return min
}

/** True when `granted` out of `members` is a majority. */
export function isMajority(granted: number, members: number): boolean {
  return granted >= majority(members)
}
