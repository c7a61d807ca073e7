/** Reads and checks the regions file for one node. */
import { readFileSync } from 'node:fs'
import { regionsOfFile, type Region } from '@kvstore/protocol'

export interface RegionsSetup {
  /** This node's region. */
  region: string
  /** Every region of the file, this one included. */
  regions: Region[]
  /** The other regions, which this region's leader ships to. */
  remotes: Region[]
  /** Member ids of the other regions: who may call the region-peer routes. */
  peers: Set<string>
}

/**
 * Loads `file` for a member `nodeId` of `region`. `members` (the region's own member ids, from
 * --members) must be the file's members of the region when given.
 */
export function loadRegionsSetup(
  file: string,
  region: string,
  nodeId: string,
  members: readonly string[] | null,
): RegionsSetup {
  let parsed: unknown
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'))
  } catch (err) {
    throw new Error(`cannot read the regions file ${file}: ${(err as Error).message}`)
  }
  let regions: Region[]
  try {
    regions = regionsOfFile(parsed)
  } catch (err) {
    throw new Error(`the regions file ${file}: ${(err as Error).message}`)
  }
  const own = regions.find((r) => r.id === region)
  if (own === undefined)
    throw new Error(
      `the regions file ${file} has no region ${region} (it has ${regions.map((r) => r.id).join(', ')})`,
    )
  if (!own.members.some((m) => m.id === nodeId))
    throw new Error(`the regions file ${file} does not list ${nodeId} in region ${region}`)
  if (members !== null) {
    const listed = own.members.map((m) => m.id).sort()
    const given = [...members].sort()
    if (listed.join(',') !== given.join(','))
      throw new Error(
        `region ${region} in ${file} lists members ${listed.join(', ')}, but --members names ${given.join(', ')}`,
      )
  }
  const remotes = regions.filter((r) => r.id !== region)
  return {
    region,
    regions,
    remotes,
    peers: new Set(remotes.flatMap((r) => r.members.map((m) => m.id))),
  }
}
