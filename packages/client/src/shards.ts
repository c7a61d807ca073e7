/**
 * Shards on the client side (pure: no I/O): the slots a move names, the move a group's view
 * holds, the directory of groups, and the rebalance plan that spreads slots evenly over the
 * groups of a merged shard map.
 *
 * The SDK does not route keys to groups (kv-router does). It only needs the shard map for the
 * operator's calls: where a move must be sent (the group that owns the slots), and how to
 * spread the slots when a group is added.
 */
import { KvError } from '@kvstore/protocol/errors'
import {
  formatSlotRanges,
  parseSlotRanges,
  slotCount,
  type GroupShardView,
  type MovePhase,
  type ShardGroup,
  type ShardMap,
  type ShardMove,
  type SlotRange,
} from '@kvstore/protocol'

/** The phases a move ends in: after one of them it never changes again. */
export const finishedMovePhases: readonly MovePhase[] = ['done', 'aborted']

export function isMoveFinished(move: Pick<ShardMove, 'phase'>): boolean {
  return finishedMovePhases.includes(move.phase)
}

/**
 * The slots of a move as the API takes them (`0-99,200`): from text or ranges, checked,
 * sorted and merged. Throws `KV_ERR_INVALID_ARGUMENT` when they are not slots, or none.
 */
export function slotsText(slots: string | readonly SlotRange[]): string {
  let ranges: SlotRange[]
  try {
    ranges = typeof slots === 'string' ? parseSlotRanges(slots) : parseSlotRanges(formatRaw(slots))
  } catch (err) {
    throw new KvError('KV_ERR_INVALID_ARGUMENT', `slots: ${(err as Error).message}`)
  }
  if (ranges.length === 0) throw new KvError('KV_ERR_INVALID_ARGUMENT', 'slots: no slot given')
  return formatSlotRanges(ranges)
}

/** Ranges given by a caller, as text, without trusting them (parseSlotRanges checks it). */
function formatRaw(ranges: readonly SlotRange[]): string {
  return ranges.map((r) => `${String(r.first)}-${String(r.last)}`).join(',')
}

/**
 * What a kv-router answers to GET /v1/shards: the map it routes by (every group's claims
 * merged), and its id. A group's member answers a `GroupShardView` instead.
 */
export interface RouterShardView extends ShardMap {
  router: string
}

/** True when a GET /v1/shards answer comes from a kv-router rather than a group's member. */
export function isRouterShardView(view: GroupShardView | RouterShardView): view is RouterShardView {
  return typeof (view as Partial<GroupShardView>).group !== 'string'
}

/** The shard map of a router's answer, without the router's id. */
export function mapOfRouterView(view: RouterShardView): ShardMap {
  return {
    version: view.version,
    slotCount: view.slotCount,
    groups: view.groups,
    slots: view.slots,
  }
}

/** The move `id` in a group's view (the one in flight, or one in its history); null from a router. */
export function moveInView(view: GroupShardView | RouterShardView, id: string): ShardMove | null {
  if (isRouterShardView(view)) return null
  if (view.move !== null && view.move.id === id) return view.move
  return view.history.find((m) => m.id === id) ?? null
}

/** True when two lists of ranges cover the same slots. */
export function sameSlots(a: readonly SlotRange[], b: readonly SlotRange[]): boolean {
  return formatSlotRanges(a) === formatSlotRanges(b)
}

/** The client URLs of `group`'s members in a directory; `KV_ERR_INVALID_ARGUMENT` when unknown. */
export function groupUrls(directory: readonly ShardGroup[], group: string): string[] {
  const found = directory.find((g) => g.id === group)
  if (found === undefined)
    throw new KvError(
      'KV_ERR_INVALID_ARGUMENT',
      `group ${group} is not in the shard map (groups: ${directory.map((g) => g.id).join(', ') || 'none'})`,
      { group },
    )
  return found.members.map((m) => m.url)
}

/**
 * The groups owning the slots `ranges` in `map`, each with the part of `ranges` it owns, in
 * slot order of their first slot.
 */
export function ownersOf(
  map: ShardMap,
  ranges: readonly SlotRange[],
): { group: string; slots: SlotRange[] }[] {
  const byGroup = new Map<string, SlotRange[]>()
  for (const r of ranges) {
    for (const c of map.slots) {
      const first = Math.max(r.first, c.first)
      const last = Math.min(r.last, c.last)
      if (first > last) continue
      const list = byGroup.get(c.group) ?? []
      list.push({ first, last })
      byGroup.set(c.group, list)
    }
  }
  return [...byGroup.entries()]
    .map(([group, slots]) => ({ group, slots: parseSlotRanges(formatSlotRanges(slots)) }))
    .sort((a, b) => (a.slots[0]?.first ?? 0) - (b.slots[0]?.first ?? 0))
}

/** How many slots each group of the map owns (groups of the directory owning none count 0). */
export function slotsPerGroup(map: ShardMap): Map<string, number> {
  const counts = new Map<string, number>(map.groups.map((g) => [g.id, 0]))
  for (const c of map.slots) counts.set(c.group, (counts.get(c.group) ?? 0) + c.last - c.first + 1)
  return counts
}

/** One move of a rebalance plan: `slots` (`0-99,200`) from group `from` to group `to`. */
export interface RebalanceMove {
  from: string
  to: string
  slots: string
  /** How many slots it moves. */
  count: number
}

export interface RebalancePlan {
  /** Slots each group should own once the plan ran. */
  targets: Record<string, number>
  /** Slots each group owns now. */
  current: Record<string, number>
  /** The moves, to run one after another. Empty when the map is already even. */
  moves: RebalanceMove[]
}

export interface RebalanceOptions {
  /** The groups to spread the slots over (default: every group of the map's directory). */
  groups?: readonly string[]
  /** Split moves larger than this into several (default: no limit). */
  slotsPerMoveMax?: number
}

/**
 * A plan that spreads the slots of `map` evenly over its groups, moving as few slots as it
 * can: each group ends with `floor(4096 / groups)` slots or one more (the extra ones go to the
 * groups that hold the most now, ties to the lower group id, so nothing moves for them). A
 * group over its share gives away its highest slots (which keeps ranges contiguous), to the
 * groups under theirs in group id order. Pure and deterministic: the same map gives the same
 * plan. Slots of a group that is not in `groups` all go to the others.
 */
export function planRebalance(map: ShardMap, options: RebalanceOptions = {}): RebalancePlan {
  const groups = [...new Set(options.groups ?? map.groups.map((g) => g.id))].sort()
  if (groups.length === 0) throw new KvError('KV_ERR_INVALID_ARGUMENT', 'no group to spread over')
  const perMoveMax = options.slotsPerMoveMax ?? slotCount
  if (!Number.isSafeInteger(perMoveMax) || perMoveMax < 1)
    throw new KvError('KV_ERR_INVALID_ARGUMENT', 'slotsPerMoveMax must be a positive integer')
  // Each group's slots, in slot order.
  const owned = new Map<string, number[]>()
  for (const c of map.slots) {
    const list = owned.get(c.group) ?? []
    for (let s = c.first; s <= c.last; s++) list.push(s)
    owned.set(c.group, list)
  }
  const countOf = (g: string) => owned.get(g)?.length ?? 0
  const base = Math.floor(slotCount / groups.length)
  const extra = slotCount % groups.length
  const byHolding = [...groups].sort((a, b) => countOf(b) - countOf(a) || (a < b ? -1 : 1))
  const targets: Record<string, number> = {}
  byHolding.forEach((g, i) => (targets[g] = base + (i < extra ? 1 : 0)))
  const current: Record<string, number> = {}
  for (const g of new Set([...groups, ...owned.keys()])) current[g] = countOf(g)

  // Donors: groups over their share (and groups left out, which give everything), in id order.
  const donors = [...owned.keys()]
    .filter((g) => countOf(g) > (targets[g] ?? 0))
    .sort()
    .map((g) => ({ group: g, give: countOf(g) - (targets[g] ?? 0) }))
  const receivers = groups
    .filter((g) => countOf(g) < (targets[g] as number))
    .map((g) => ({ group: g, need: (targets[g] as number) - countOf(g) }))
  const moves: RebalanceMove[] = []
  let r = 0
  for (const donor of donors) {
    const slots = owned.get(donor.group) as number[]
    while (donor.give > 0) {
      const receiver = receivers[r]
      if (receiver === undefined) break
      const n = Math.min(donor.give, receiver.need, perMoveMax)
      // The donor's highest slots: what stays is its lowest, as contiguous as it was.
      const taken = slots.splice(slots.length - n, n)
      moves.push({
        from: donor.group,
        to: receiver.group,
        slots: formatSlotRanges(taken.map((s) => ({ first: s, last: s }))),
        count: n,
      })
      donor.give -= n
      receiver.need -= n
      if (receiver.need === 0) r++
    }
  }
  return { targets, current, moves }
}
