/**
 * The single-leader configuration as the core sees it: who votes and who only learns, and the
 * rules a change must follow (pure functions, as quorum.ts).
 *
 * Changes are single-server changes (Raft thesis §4.1, Ongaro): each adds or removes one voter,
 * or adds, removes or promotes a learner. Any majority of the voters before such a change
 * overlaps any majority of the voters after it, so a configuration can take effect on each
 * member as soon as its entry is in that member's log, committed or not, without joint
 * consensus. Two conditions make that safe, and both are enforced here and in the replica:
 * - at most one change in flight: a leader proposes a change only once the previous change's
 *   entry is committed;
 * - a new leader proposes nothing before it has committed an entry of its own epoch (its no-op),
 *   the fix for the bug found in the original single-server algorithm (Ongaro, raft-dev,
 *   2015): otherwise a change made in a previous epoch and not yet committed could be
 *   overtaken by a conflicting one, and two configurations two changes apart could both act.
 * Why not joint consensus: it needs two configurations in every quorum decision and two
 * entries per change. Single-server changes need one, are simpler to prove and to test, and
 * every change an operator makes here (add a learner, promote it, remove a member) is one.
 */
import type { NodeId } from './types.js'
import { majority } from './quorum.js'

export interface CoreMembership {
  /** Members that vote and count toward every quorum. */
  voters: readonly NodeId[]
  /** Members that receive the log and count toward nothing. */
  learners: readonly NodeId[]
}

/** Every member of a configuration, voters first. */
export function membersOf(m: CoreMembership): NodeId[] {
  return [...m.voters, ...m.learners]
}

/** What is wrong with a configuration on its own, or null. */
export function membershipShapeProblem(m: CoreMembership): string | null {
  if (m.voters.length === 0) return 'a configuration needs at least one voter'
  const all = membersOf(m)
  if (new Set(all).size !== all.length) return 'a member is listed twice'
  return null
}

/**
 * Why going from `from` to `to` is not one single-server change, or null: the voters may gain
 * or lose at most one member (a learner promoted counts as a voter added), and learners may
 * change freely.
 */
export function singleChangeProblem(from: CoreMembership, to: CoreMembership): string | null {
  const shape = membershipShapeProblem(to)
  if (shape !== null) return shape
  const before = new Set(from.voters)
  const after = new Set(to.voters)
  let added = 0
  let removed = 0
  for (const v of after) if (!before.has(v)) added++
  for (const v of before) if (!after.has(v)) removed++
  if (added + removed > 1) {
    return `a change may add or remove one voter at a time; this one adds ${added} and removes ${removed}`
  }
  return null
}

/**
 * Whether the voters of `m` that are live (heard from recently, the leader included) make a
 * majority of them: the configuration can still commit and elect.
 */
export function liveMajority(
  m: CoreMembership,
  isLive: (id: NodeId) => boolean,
): { live: number; majority: number; ok: boolean } {
  const live = m.voters.filter(isLive).length
  const needed = majority(m.voters.length)
  return { live, majority: needed, ok: live >= needed }
}

/**
 * Whether majorities of two sets of voters can be disjoint: then two leaders could each win
 * an election, or commit, without hearing of the other. Never true of two configurations one
 * single-server change apart (the simulator checks every pair of configurations in use).
 */
export function majoritiesCanBeDisjoint(a: readonly NodeId[], b: readonly NodeId[]): boolean {
  if (a.length === 0 || b.length === 0) return false
  const inB = new Set(b)
  const inA = new Set(a)
  const onlyA = a.filter((id) => !inB.has(id)).length
  const onlyB = b.filter((id) => !inA.has(id)).length
  const shared = a.length - onlyA
  // A majority of `a` takes the members only `a` has first, then shared ones; the same for b.
  return Math.max(0, majority(a.length) - onlyA) + Math.max(0, majority(b.length) - onlyB) <= shared
}
