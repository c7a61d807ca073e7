/**
 * The router's view of who owns each slot, and the groups' directory.
 *
 * The directory (groups and their members' URLs) comes from the shard map file, or from one
 * `--group ID=URL,...` that owns every slot. Ownership starts as the file says; then each
 * group's own claims (GET /v1/shards) are merged in with `mergeShardClaims`: per slot, the
 * claim with the highest version wins. The merge starts from the current map, never the file,
 * so a group that does not answer a refresh keeps the slots it was last known to hold, and the
 * map never goes back to an older owner.
 *
 * Lookups are on every request's path, so the map is compiled into a table of slot to group
 * index (and the since-LSN of slots that moved), rebuilt only when the map changes.
 */
import {
  claimsBySlot,
  mergeShardClaims,
  shardMapOfFile,
  slotCount,
  type GroupShardView,
  type ShardGroup,
  type ShardMap,
  type SlotClaim,
} from '@kvstore/protocol'

/** Parses `--group ID=URL,URL,...` into the map of one group owning every slot. */
export function singleGroupMap(spec: string): ShardMap {
  const eq = spec.indexOf('=')
  if (eq <= 0)
    throw new Error(
      `--group must be ID=URL,URL,... (such as g1=https://127.0.0.1:7001,https://127.0.0.1:7002); got ${JSON.stringify(spec)}`,
    )
  const id = spec.slice(0, eq).trim()
  const urls = spec
    .slice(eq + 1)
    .split(',')
    .map((u) => u.trim())
    .filter((u) => u !== '')
  if (urls.length === 0) throw new Error(`--group ${id} names no member URL`)
  const origins = urls.map((url) => {
    let parsed: URL
    try {
      parsed = new URL(url)
    } catch {
      throw new Error(`--group ${id}: ${JSON.stringify(url)} is not a URL`)
    }
    return parsed.origin
  })
  if (new Set(origins).size !== origins.length) throw new Error(`--group ${id} names a URL twice`)
  // Member ids are not known yet (each node tells its own when probed): number them.
  return shardMapOfFile({
    groups: [
      {
        id,
        members: origins.map((url, i) => ({ id: `${id}-m${i + 1}`, url })),
        slots: `0-${slotCount - 1}`,
      },
    ],
  })
}

/** A compiled map: slot to group index, and the since-LSN of each slot's claim. */
export interface RoutingTable {
  map: ShardMap
  version: number
  /** Group index (in `map.groups` order, which is the directory's) per slot. */
  owner: Uint16Array
  /** The claim's since-LSN per slot; 0 for slots that never moved. */
  sinceLsn: Float64Array
  /** Every slot belongs to group 0: no slot needs computing. */
  single: boolean
}

export function compileMap(map: ShardMap): RoutingTable {
  const index = new Map(map.groups.map((g, i) => [g.id, i]))
  const owner = new Uint16Array(slotCount)
  const sinceLsn = new Float64Array(slotCount)
  const bySlot = claimsBySlot(map.slots)
  let single = map.groups.length === 1
  for (let s = 0; s < slotCount; s++) {
    const claim = bySlot[s]
    if (claim === undefined) throw new Error(`slot ${s} has no owner in the shard map`)
    const i = index.get(claim.group)
    if (i === undefined)
      throw new Error(`slot ${s} is owned by ${claim.group}, not in the directory`)
    owner[s] = i
    sinceLsn[s] = claim.sinceLsn
    if (i !== 0) single = false
  }
  return { map, version: map.version, owner, sinceLsn, single }
}

/**
 * Claims a group's view brings: its own (authoritative) and its view of the others' (which may
 * be stale, but carries versions, so an older one loses the merge). Claims of groups outside
 * the directory are dropped.
 */
export function claimsOfView(view: GroupShardView, known: ReadonlySet<string>): SlotClaim[] {
  const out: SlotClaim[] = []
  const take = (claims: unknown) => {
    if (!Array.isArray(claims)) return
    for (const c of claims as Partial<SlotClaim>[]) {
      if (
        typeof c?.group !== 'string' ||
        !known.has(c.group) ||
        !Number.isSafeInteger(c.first) ||
        !Number.isSafeInteger(c.last) ||
        !Number.isSafeInteger(c.version) ||
        !Number.isSafeInteger(c.sinceLsn)
      )
        continue
      const first = c.first as number
      const last = c.last as number
      if (first < 0 || last >= slotCount || last < first) continue
      out.push({
        first,
        last,
        group: c.group,
        version: c.version as number,
        sinceLsn: c.sinceLsn as number,
      })
    }
  }
  take(view.claims)
  take(view.map?.slots)
  return out
}

/** The merged map and its compiled table; `merge` folds in what the groups said. */
export class ShardMapCache {
  readonly groups: ShardGroup[]
  private readonly known: Set<string>
  private current: RoutingTable

  constructor(start: ShardMap) {
    this.groups = [...start.groups]
    this.known = new Set(start.groups.map((g) => g.id))
    this.current = compileMap(start)
  }

  /** A group added to the directory (a reloaded file): it owns nothing until it claims slots. */
  addGroup(group: ShardGroup): void {
    if (this.known.has(group.id)) return
    this.groups.push(group)
    this.known.add(group.id)
    const map = { ...this.current.map, groups: this.groups }
    this.current = { ...compileMap(map) }
  }

  get table(): RoutingTable {
    return this.current
  }

  get version(): number {
    return this.current.version
  }

  /**
   * Merges the views the groups gave (a group that did not answer gives none) into the map.
   * Returns true when the owner or since-LSN of a slot changed.
   */
  merge(views: readonly GroupShardView[]): boolean {
    const claimSets = views.map((v) => claimsOfView(v, this.known))
    const next = mergeShardClaims(this.groups, claimSets, this.current.map)
    const before = this.current
    const table = compileMap(next)
    let changed = table.version !== before.version
    for (let s = 0; !changed && s < slotCount; s++)
      changed = table.owner[s] !== before.owner[s] || table.sinceLsn[s] !== before.sinceLsn[s]
    if (changed) this.current = table
    return changed
  }
}
