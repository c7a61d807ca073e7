/**
 * Router mode: a watch on each shard group's leadership while the faults run. Every second it
 * asks the group's running members who leads; a stretch in which a majority of a group's
 * members run (not killed, not paused) and none says it leads is a stall. Stalls of 10 s or
 * more go in the report: they are no safety violation (the checkers judge those), but a group
 * that a majority could serve and that elects nobody for that long is worth a look.
 */
import { currentLeader } from './cluster.js'
import type { ShardedCluster } from './sharded-cluster.js'

export interface LeaderStall {
  group: string
  /** ms since the run began. */
  start: number
  end: number
  durationMs: number
  /** The members that ran (not paused) throughout. */
  up: string[]
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export function watchGroups(
  cluster: ShardedCluster,
  clock: () => number,
  log: (line: string) => void,
  thresholdMs = 10_000,
): { stop(): Promise<LeaderStall[]> } {
  let stopped = false
  const stalls: LeaderStall[] = []
  const open = new Map<string, { start: number; up: string[] }>()
  const close = (group: string) => {
    const stall = open.get(group)
    if (stall === undefined) return
    open.delete(group)
    const end = clock()
    if (end - stall.start < thresholdMs) return
    const record = {
      group,
      start: stall.start,
      end,
      durationMs: Math.round(end - stall.start),
      up: stall.up,
    }
    stalls.push(record)
    log(
      `  ${(end / 1000).toFixed(1)}s  watch: ${group} had no leader for ${(record.durationMs / 1000).toFixed(1)} s while ${record.up.join(', ')} ran`,
    )
  }
  const running = (async () => {
    while (!stopped) {
      for (const g of cluster.groups) {
        const members = g.cluster.nodes.map((n) => n.id)
        const up = members.filter((id) => cluster.isRunning(id) && !cluster.isPaused(id))
        if (up.length < Math.floor(members.length / 2) + 1) {
          close(g.id)
          continue
        }
        const leader = await currentLeader(g.cluster)
        const stall = open.get(g.id)
        if (leader !== null) close(g.id)
        else if (stall === undefined) open.set(g.id, { start: clock(), up })
        // Only the members up throughout count.
        else stall.up = stall.up.filter((id) => up.includes(id))
      }
      await sleep(1000)
    }
  })()
  return {
    async stop() {
      stopped = true
      await running
      for (const group of [...open.keys()]) close(group)
      return stalls
    },
  }
}
