/**
 * Regions (multi-leader) on the client side: what a node in a region answers about its region
 * (GET /v1/regions, the conflict record, the digest), and the pure part of home-region routing
 * (`HomeRegions`: which region a key's writes go to). `RegionalClient` (regional-client.ts)
 * sends requests by it.
 */
import { KvError } from '@kvstore/protocol/errors'
import { regionIdPattern } from '@kvstore/protocol'

/** How a region's leader ships its writes to another region (GET /v1/regions `shipping`). */
export interface RegionShipping {
  /** The region shipped to. */
  to: string
  /**
   * `streaming` (connected, shipping as it commits), `connecting` (asking the receiver for its
   * cursor), `idle` (not started), `failing` (the last call failed: see `error`), `compacted`
   * (the entries the receiver needs are gone from this log).
   */
  state: 'idle' | 'connecting' | 'streaming' | 'failing' | 'compacted' | (string & {})
  /** The receiver's cursor (the last LSN of this region it applied), as last confirmed; null: not asked yet. */
  cursor: number | null
  /** This region's commit LSN. */
  commitLsn: number
  /** Committed entries past the receiver's cursor. */
  lagEntries: number
  /** Age of the oldest committed entry past the cursor (0 when caught up). */
  lagMs: number
  shippedEntries: number
  shippedBatches: number
  /** When it last shipped a batch (epoch ms), or null. */
  lastShippedAtMs: number | null
  /** Why the last call failed, or null. */
  error: string | null
}

/** How far this region applied another region's writes (GET /v1/regions `receiving`). */
export interface RegionReceiving {
  from: string
  /** The last LSN of `from`'s log applied here. */
  cursor: number
  /** When the last batch from it was applied (epoch ms), or null. */
  lastAppliedAtMs: number | null
  /** `from`'s commit LSN when it cut the last batch applied here, or null. */
  sourceCommitLsn: number | null
}

/** Conflicts between regions this region's leader counted since it started leading. */
export interface RegionConflictCounts {
  /** Conflict records written. */
  recorded: number
  /** A write of this region lost to a concurrent one from another region. */
  localLost: number
  /** A write from another region lost to a concurrent one of this region. */
  remoteLost: number
  /** Old records deleted past `--region-conflicts-max`. */
  collected: number
}

/** GET /v1/regions (also `regions` in GET /v1/cluster of a node in a region). */
export interface RegionsView {
  /** The region of the node that answered. */
  region: string
  /** Whether that node leads its region (shipping is known on the leader only). */
  leader: boolean
  /** Every region of the regions file, this one included, with its members' client URLs. */
  regions: { id: string; members: { id: string; url: string }[] }[]
  /** Per other region, how this region's leader ships to it; empty on a follower. */
  shipping: RegionShipping[]
  /** Per other region, how far this region applied its writes. */
  receiving: RegionReceiving[]
  conflicts: RegionConflictCounts
}

/** One side of a conflict: a write of some region, as the conflict record keeps it. */
export interface RegionConflictSide {
  /** `<wallMs>.<logical>@<region>`: the larger stamp wins, in every region. */
  stamp: string
  region: string
  deleted: boolean
  /** The value as UTF-8 text (null for a delete). */
  value: string | null
  valueBase64: string | null
}

/** A conflict between concurrent writes of two regions (GET /admin/v1/conflicts). */
export interface RegionConflict {
  /** `<lsn>-<n>`: pass as `after` for the next page. */
  id: string
  key: string
  keyBase64: string
  /** The region whose leader found it (both regions may record the same conflict). */
  detectedIn: string
  /** The LSN, in `detectedIn`'s log, of the entry that recorded it. */
  lsn: number
  atMs: number
  /** The write every region keeps. */
  winner: RegionConflictSide
  /** The write that lost: kept here, and nowhere else. */
  loser: RegionConflictSide
}

/** One page of the conflict record, oldest first. */
export interface RegionConflictsPage {
  conflicts: RegionConflict[]
  /** The last id of the page when more follow (pass it as `after`), else null. */
  next: string | null
}

/** GET /admin/v1/regions/digest: a hash of the live user keys, equal on converged regions. */
export interface RegionDigest {
  region: string
  appliedLsn: number
  digest: string
  keys: number
}

/** Options of `conflicts`. */
export interface RegionConflictsOptions {
  /** Records per page, 1 to 1000 (default 100). */
  limit?: number
  /** The `next` (or an `id`) of an earlier page: the records after it. */
  after?: string
  /** Ask this node rather than the region's leader. */
  url?: string
}

/**
 * Which region a key's writes go to: the region of the longest prefix in `byPrefix` that the
 * key starts with, else `home`. Pure, checked once: every region named must be one of `known`.
 */
export class HomeRegions {
  readonly home: string
  /** The prefixes, longest first. */
  private readonly prefixes: [string, string][]

  constructor(known: readonly string[], home: string, byPrefix: Record<string, string> = {}) {
    const knownSet = new Set(known)
    const check = (region: unknown, what: string) => {
      if (typeof region !== 'string' || !knownSet.has(region))
        throw new KvError(
          'KV_ERR_INVALID_ARGUMENT',
          `${what} is ${JSON.stringify(region)}, which is not one of the regions given (${known.join(', ')})`,
        )
    }
    check(home, 'homeRegion')
    this.home = home
    if (byPrefix === null || typeof byPrefix !== 'object')
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        'homeRegionByPrefix must map prefixes to regions',
      )
    for (const [prefix, region] of Object.entries(byPrefix))
      check(region, `homeRegionByPrefix[${JSON.stringify(prefix)}]`)
    this.prefixes = Object.entries(byPrefix).sort((a, b) => b[0].length - a[0].length)
  }

  /** The home region of `key`. */
  of(key: string): string {
    for (const [prefix, region] of this.prefixes) if (key.startsWith(prefix)) return region
    return this.home
  }
}

/** Checks the `regions` option of a regional client: ids, and at least one URL each. */
export function checkRegionUrls(
  regions: Record<string, string | readonly string[]>,
): Map<string, string[]> {
  if (regions === null || typeof regions !== 'object')
    throw new KvError('KV_ERR_INVALID_ARGUMENT', 'regions must map region ids to node URLs')
  const out = new Map<string, string[]>()
  for (const [id, urls] of Object.entries(regions)) {
    if (!regionIdPattern.test(id))
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `region id ${JSON.stringify(id)} is not valid (a lowercase letter, then letters, digits or -, at most 32)`,
      )
    const list = typeof urls === 'string' ? [urls] : Array.isArray(urls) ? [...urls] : []
    if (list.length === 0 || list.some((u) => typeof u !== 'string'))
      throw new KvError('KV_ERR_INVALID_ARGUMENT', `region ${id} needs at least one node URL`)
    out.set(id, list)
  }
  if (out.size === 0) throw new KvError('KV_ERR_INVALID_ARGUMENT', 'give at least one region')
  return out
}
