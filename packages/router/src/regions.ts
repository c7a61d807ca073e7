/**
 * Regions mode: which region a key belongs to.
 *
 * With `--regions FILE` the router fronts the regions of a multi-leader deployment (each one a
 * single-leader group, listed in the same regions file the nodes were started with) instead of
 * shard groups. Every key has a home region: the region of the longest `--home-region-prefix`
 * the key starts with, else the router's `--home-region`. Writes, reads and listings of a key
 * go to its home region, so a session's read-your-writes holds per key (the session keeps a
 * position per region), and a user's writes to one key are ordered by one region's leader
 * rather than left to last-writer-wins between regions.
 *
 * The decision is a pure function of the key and the configuration (nothing is learnt or
 * kept), so any number of routers started alike route alike.
 */
import { readFileSync } from 'node:fs'
import {
  regionIdPattern,
  regionsOfFile,
  shardMapOfFile,
  slotCount,
  type Region,
  type ShardMap,
} from '@kvstore/protocol'

/** `--home-region-prefix` entries one router takes. */
export const homeRegionPrefixesMax = 1024

/** One `--home-region-prefix`: keys starting with `prefix` belong to `region`. */
export interface HomeRegionPrefix {
  prefix: string
  region: string
}

/**
 * Parses `PREFIX=REGION` (split at the last `=`, since a region id has none, so a prefix may).
 * Throws with what is wrong.
 */
export function parseHomeRegionPrefix(spec: string, keyBytesMax: number): HomeRegionPrefix {
  const eq = spec.lastIndexOf('=')
  if (eq <= 0)
    throw new Error(
      `--home-region-prefix must be PREFIX=REGION (such as eu/=eu); got ${JSON.stringify(spec)}`,
    )
  const prefix = spec.slice(0, eq)
  const region = spec.slice(eq + 1)
  if (!regionIdPattern.test(region))
    throw new Error(
      `--home-region-prefix ${JSON.stringify(spec)}: ${JSON.stringify(region)} is not a region id (a lowercase letter, then letters, digits or -, at most 32)`,
    )
  if (Buffer.byteLength(prefix, 'utf8') > keyBytesMax)
    throw new Error(
      `--home-region-prefix ${JSON.stringify(spec)}: the prefix is longer than a key (--key-bytes-max ${keyBytesMax})`,
    )
  if (prefix.charCodeAt(0) === 0)
    throw new Error(
      `--home-region-prefix ${JSON.stringify(spec)}: keys starting with NUL are reserved`,
    )
  return { prefix, region }
}

/** What is wrong with a home region and its prefixes, before the regions file is read. */
export function homeRegionProblems(
  home: string,
  specs: readonly string[],
  keyBytesMax: number,
): string[] {
  const problems: string[] = []
  if (!regionIdPattern.test(home))
    problems.push(
      `--home-region ${JSON.stringify(home)} is not a region id (a lowercase letter, then letters, digits or -, at most 32)`,
    )
  if (specs.length > homeRegionPrefixesMax)
    problems.push(
      `${specs.length} --home-region-prefix entries (at most ${homeRegionPrefixesMax}); group keys under fewer prefixes`,
    )
  const seen = new Map<string, string>()
  for (const spec of specs) {
    let parsed: HomeRegionPrefix
    try {
      parsed = parseHomeRegionPrefix(spec, keyBytesMax)
    } catch (err) {
      problems.push((err as Error).message)
      continue
    }
    const earlier = seen.get(parsed.prefix)
    if (earlier !== undefined && earlier !== parsed.region)
      problems.push(
        `--home-region-prefix gives ${JSON.stringify(parsed.prefix)} to both ${earlier} and ${parsed.region}`,
      )
    seen.set(parsed.prefix, parsed.region)
  }
  return problems
}

/**
 * The routing decision: a key's home region. Lookups are on every request's path: one map
 * lookup per distinct prefix length, longest first.
 */
export class RegionRouting {
  readonly home: string
  /** The prefixes, sorted by prefix. */
  readonly prefixes: readonly HomeRegionPrefix[]
  private readonly byPrefix: Map<string, string>
  /** Distinct prefix lengths (UTF-16 units), longest first. */
  private readonly lengths: number[]

  constructor(regionIds: readonly string[], home: string, prefixes: readonly HomeRegionPrefix[]) {
    const known = new Set(regionIds)
    if (!known.has(home))
      throw new Error(
        `--home-region ${home} is not in the regions file (regions: ${[...known].join(', ')})`,
      )
    this.home = home
    this.byPrefix = new Map()
    for (const p of prefixes) {
      if (!known.has(p.region))
        throw new Error(
          `--home-region-prefix ${JSON.stringify(`${p.prefix}=${p.region}`)} names region ${p.region}, not in the regions file (regions: ${[...known].join(', ')})`,
        )
      const earlier = this.byPrefix.get(p.prefix)
      if (earlier !== undefined && earlier !== p.region)
        throw new Error(`prefix ${JSON.stringify(p.prefix)} is given to ${earlier} and ${p.region}`)
      this.byPrefix.set(p.prefix, p.region)
    }
    this.prefixes = [...this.byPrefix]
      .map(([prefix, region]) => ({ prefix, region }))
      .sort((a, b) => (a.prefix < b.prefix ? -1 : a.prefix > b.prefix ? 1 : 0))
    this.lengths = [...new Set(this.prefixes.map((p) => p.prefix.length))].sort((a, b) => b - a)
  }

  /** The key's home region: the longest prefix's that it starts with, else the router's. */
  regionOfKey(key: string): string {
    for (const length of this.lengths) {
      if (key.length < length) continue
      const region = this.byPrefix.get(key.slice(0, length))
      if (region !== undefined) return region
    }
    return this.home
  }

  /** The home regions of `keys`, each once, sorted; with one example key per region. */
  regionsOfKeys(keys: Iterable<string>): { regions: string[]; keys: string[] } {
    const example = new Map<string, string>()
    for (const key of keys) {
      const region = this.regionOfKey(key)
      if (!example.has(region)) example.set(region, key)
    }
    const regions = [...example.keys()].sort()
    return { regions, keys: regions.map((r) => example.get(r) as string) }
  }
}

/** Reads and checks the regions file (the nodes' `--regions` file). */
export function readRegionsFile(file: string): Region[] {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new Error(`cannot read the regions file ${file}: ${(err as Error).message}`)
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (err) {
    throw new Error(`the regions file ${file} is not JSON: ${(err as Error).message}`)
  }
  try {
    return regionsOfFile(parsed)
  } catch (err) {
    throw new Error(`the regions file ${file}: ${(err as Error).message}`)
  }
}

/**
 * The router's directory in regions mode: one group per region, the home region first (so the
 * router's own calls, logging in and who-am-I go there), in a map that gives every slot to the
 * home region. Slots mean nothing in this mode; the map only keeps the shard machinery (its
 * version in session tokens) as it is.
 */
export function regionsDirectory(regions: readonly Region[], home: string): ShardMap {
  if (!regions.some((r) => r.id === home))
    throw new Error(
      `--home-region ${home} is not in the regions file (regions: ${regions.map((r) => r.id).join(', ')})`,
    )
  const ordered = [...regions.filter((r) => r.id === home), ...regions.filter((r) => r.id !== home)]
  return shardMapOfFile({
    groups: ordered.map((r, i) => ({
      id: r.id,
      members: r.members,
      slots: i === 0 ? `0-${slotCount - 1}` : '',
    })),
  })
}
