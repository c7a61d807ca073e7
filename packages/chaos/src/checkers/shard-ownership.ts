/**
 * Shard ownership, after the faults heal and the moves settle: every slot is owned by exactly
 * one group. Each group's claims (`GET /v1/shards` on its leader: the slots it owns, fenced
 * ones included) must together cover every slot exactly once. A slot no group claims can be
 * written nowhere; a slot two groups claim could be written in both. Also wrong: a move still
 * in flight after the wait, a slot still fenced with no move running (it takes no writes,
 * forever), a group that does not answer, and a member whose claims differ from its leader's
 * once the group has converged.
 */
import { formatSlotRanges, slotCount, type GroupShardView, type SlotRange } from '@kvstore/protocol'
import type { Verdict } from '../history.js'

export interface OwnershipInput {
  /** The groups, in the shard map's order. */
  groups: readonly string[]
  /** Each group's view from its leader (or a member), null when none answered. */
  views: readonly (GroupShardView | null)[]
  /** Views of every running member, to check that the members of a group agree. */
  members?: readonly { group: string; node: string; view: GroupShardView | null }[]
  /** Did every move end within the wait? */
  settled: boolean
  waitedMs: number
}

/** `[first, last]` runs of the slots for which `test` holds. */
function runsOf(test: (slot: number) => boolean): SlotRange[] {
  const out: SlotRange[] = []
  for (let s = 0; s < slotCount; s++) {
    if (!test(s)) continue
    const last = out[out.length - 1]
    if (last !== undefined && last.last === s - 1) last.last = s
    else out.push({ first: s, last: s })
  }
  return out
}

const claimsText = (view: GroupShardView) =>
  formatSlotRanges(view.claims.map((c) => ({ first: c.first, last: c.last })))

export function checkShardOwnership(input: OwnershipInput): Verdict {
  const problems: string[] = []
  const owners: string[][] = Array.from({ length: slotCount }, () => [])
  const perGroup: Record<string, { slots: string; count: number; fenced: string }> = {}
  input.groups.forEach((group, i) => {
    const view = input.views[i] ?? null
    if (view === null) {
      problems.push(`${group} did not answer GET /v1/shards`)
      return
    }
    if (view.group !== group) problems.push(`${group}'s member says it is in ${view.group}`)
    let count = 0
    for (const c of view.claims) {
      for (let s = Math.max(0, c.first); s <= Math.min(slotCount - 1, c.last); s++) {
        owners[s]?.push(group)
        count++
      }
    }
    perGroup[group] = { slots: claimsText(view), count, fenced: view.fenced }
    if (view.move !== null)
      problems.push(
        `${group}'s move ${view.move.id} of ${formatSlotRanges(view.move.slots)} to ${view.move.target} is still ${view.move.phase} after ${Math.round(input.waitedMs / 1000)} s`,
      )
    else if (view.fenced !== '')
      problems.push(`${group} still fences ${view.fenced} with no move in flight`)
  })
  const unowned = runsOf((s) => owners[s]?.length === 0)
  const double = runsOf((s) => (owners[s]?.length ?? 0) > 1)
  const answered = input.views.every((v) => v !== null)
  if (answered && unowned.length > 0)
    problems.push(`no group owns slots ${formatSlotRanges(unowned)}`)
  if (double.length > 0) {
    const named = double.map(
      (r) => `${formatSlotRanges([r])} (${[...new Set(owners[r.first])].join(' and ')})`,
    )
    problems.push(`slots owned by more than one group: ${named.join(', ')}`)
  }
  // Every member of a group holds its leader's claims.
  const disagree: string[] = []
  for (const m of input.members ?? []) {
    const i = input.groups.indexOf(m.group)
    const leader = input.views[i] ?? null
    if (leader === null) continue
    if (m.view === null) disagree.push(`${m.node} (${m.group}) did not answer`)
    else if (claimsText(m.view) !== claimsText(leader))
      disagree.push(
        `${m.node} (${m.group}) claims ${claimsText(m.view)}, its group ${claimsText(leader)}`,
      )
  }
  if (disagree.length > 0)
    problems.push(`members disagree with their group: ${disagree.join('; ')}`)
  const details = {
    groups: perGroup,
    unowned: formatSlotRanges(unowned),
    ownedTwice: formatSlotRanges(double),
    settled: input.settled,
    waitedMs: input.waitedMs,
    membersChecked: input.members?.length ?? 0,
    disagree,
  }
  if (problems.length > 0)
    return { checker: 'shard-ownership', valid: false, summary: problems.join('; '), details }
  const split = input.groups
    .map(
      (g) =>
        `${g}: ${perGroup[g]?.count ?? 0} slots in ${perGroup[g]?.slots.split(',').filter(Boolean).length ?? 0} ranges`,
    )
    .join(', ')
  return {
    checker: 'shard-ownership',
    valid: true,
    summary: `every one of the ${slotCount} slots is owned by exactly one group (${split}), no fence left, and every member asked (${input.members?.length ?? 0}) holds its group's claims`,
    details,
  }
}
