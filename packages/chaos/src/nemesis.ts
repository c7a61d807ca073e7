/**
 * Nemeses: faults on a seeded schedule. Each round waits a healthy interval, starts one fault
 * chosen (with the seed) among the enabled ones, holds it, then heals it. The schedule and
 * every fault window are recorded for the report and printed as they happen.
 */
import { prng } from '@kvstore/core'
import { currentLeader, type ChaosCluster } from './cluster.js'
import { churn, split } from './churn.js'
import { ringChurn } from './ring-churn.js'
import { chaosMemberIds } from './security.js'

/** The seeded draws of schedules and workloads: the project's one PRNG (from the core). */
export { prng }

export const nemesisNames = [
  'kill',
  'pause',
  'pause-leader',
  'partition-one',
  'partition-majority',
  'partition-leader',
  'partition-bridge',
  'loss',
  'slow',
  'slow-leader',
  'member-churn',
  'member-split',
] as const
export type NemesisName = (typeof nemesisNames)[number]

/** Nemeses aimed at the leader: a leaderless cluster has none, so runs refuse them there. */
export const leaderNemeses = ['pause-leader', 'partition-leader', 'slow-leader'] as const

/** Nemeses that change the configuration (member-churn also in leaderless mode, as ring changes). */
export const membershipNemeses = ['member-churn', 'member-split'] as const

/** Membership nemeses a leaderless run may not use: member-split promotes learners. */
export const singleLeaderOnlyNemeses = ['member-split'] as const

/** New member ids a round of each membership nemesis takes. */
const idsPerRound: Record<string, number> = { 'member-churn': 1, 'member-split': 2 }

/** One fault, from when it started to when it was healed (ms since the run began). */
export interface FaultWindow {
  nemesis: NemesisName
  description: string
  start: number
  end: number
}

export function parseNemeses(text: string): NemesisName[] {
  const names = text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
  for (const name of names) {
    if (!(nemesisNames as readonly string[]).includes(name)) {
      throw new Error(`unknown nemesis ${JSON.stringify(name)}; use ${nemesisNames.join(', ')}`)
    }
  }
  if (names.length === 0) throw new Error('give at least one nemesis')
  return names as NemesisName[]
}

export interface NemesisOptions {
  cluster: ChaosCluster
  nemeses: NemesisName[]
  seed: number
  /** The schedule stops starting faults after this long. */
  durationMs: number
  /** Healthy time between faults, and how long each fault lasts (ms). */
  healthyMs?: number
  faultMs?: number
  /** Milliseconds since the run began (the history's clock). */
  clock: () => number
  log: (line: string) => void
  /** A leaderless cluster: no leader to look up, and no target is called the leader. */
  leaderless?: boolean
  /**
   * Members the membership nemesis never removes (nor kills to replace): the member that
   * archives its log, whose archive the run checks at the end.
   */
  protect?: readonly string[]
  /**
   * Leaderless: replicas per key (N). The ring churn never leaves fewer members than the run
   * started with, nor fewer than N.
   */
  replicas?: number
}

function pick<T>(random: () => number, items: readonly T[]): T {
  return items[Math.floor(random() * items.length)] as T
}

function shuffle<T>(random: () => number, items: readonly T[]): T[] {
  const out = [...items]
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    ;[out[i], out[j]] = [out[j] as T, out[i] as T]
  }
  return out
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Runs the schedule until its duration is over; resolves with the fault windows. */
export async function runNemesis(options: NemesisOptions): Promise<FaultWindow[]> {
  const { cluster, clock, log } = options
  const random = prng(options.seed)
  const healthyMs = options.healthyMs ?? 3000
  const faultMs = options.faultMs ?? 4000
  const windows: FaultWindow[] = []
  // Ids never used in this run: the membership nemesis takes new members' ids from them.
  const fresh = chaosMemberIds.filter((id) => !cluster.nodes.some((n) => n.id === id))
  const membersMin = Math.max(cluster.nodes.length, options.replicas ?? 0)
  const begin = clock()
  while (clock() - begin + healthyMs + faultMs <= options.durationMs) {
    await sleep(healthyMs * (0.5 + random()))
    // The members change under the membership nemesis: look again every round.
    const ids = cluster.nodes.map((n) => n.id)
    let nemesis = pick(random, options.nemeses)
    const idsNeeded = idsPerRound[nemesis] ?? 0
    if (idsNeeded > fresh.length) {
      // Not enough ids with certificates left for new members: the other nemeses go on.
      const others = options.nemeses.filter((n) => (idsPerRound[n] ?? 0) <= fresh.length)
      if (others.length === 0) continue
      nemesis = pick(random, others)
    }
    if (nemesis === 'member-churn' || nemesis === 'member-split') {
      const start = clock()
      log(`  ${(start / 1000).toFixed(1)}s  ${nemesis}: starting`)
      const progress = (line: string) => log(`  ${(clock() / 1000).toFixed(1)}s    ${line}`)
      const protect = options.protect ?? []
      const change =
        nemesis === 'member-churn' && options.leaderless === true
          ? await ringChurn({
              cluster,
              random,
              newId: fresh.shift() as string,
              protect,
              membersMin,
              log: progress,
            })
          : nemesis === 'member-churn'
            ? await churn({
                cluster,
                random,
                newId: fresh.shift() as string,
                protect,
                log: progress,
              })
            : await split({
                cluster,
                newIds: [fresh.shift() as string, fresh.shift() as string],
                protect,
                holdMs: faultMs * (0.5 + random()),
                log: progress,
              })
      const end = clock()
      log(`  ${(end / 1000).toFixed(1)}s  ${nemesis}: ${change}`)
      windows.push({ nemesis, description: change, start, end })
      continue
    }
    const leader = options.leaderless ? null : await currentLeader(cluster)
    // In leaderless mode the leader nemeses are refused before the run; '' names no node.
    const leaderId = options.leaderless ? '' : (leader?.id ?? pick(random, ids))
    let description = ''
    let heal: () => Promise<void>
    switch (nemesis) {
      case 'kill': {
        const target = pick(random, ids)
        description = `kill -9 ${target}`
        await cluster.kill(target)
        heal = () => cluster.start(target)
        break
      }
      case 'pause':
      case 'pause-leader': {
        const target = nemesis === 'pause' ? pick(random, ids) : leaderId
        description = `pause ${target}${target === leaderId ? ' (the leader)' : ''}`
        await cluster.pause(target)
        heal = () => cluster.resume(target)
        break
      }
      case 'partition-one':
      case 'partition-leader': {
        const target = nemesis === 'partition-one' ? pick(random, ids) : leaderId
        const rest = ids.filter((id) => id !== target)
        description = `isolate ${target}${target === leaderId ? ' (the leader)' : ''}`
        await cluster.partition([[target], rest])
        heal = () => cluster.heal()
        break
      }
      case 'partition-majority': {
        const order = shuffle(random, ids)
        const minority = order.slice(0, Math.floor((ids.length - 1) / 2))
        const majority = order.slice(minority.length)
        description = `split ${minority.join(',')} | ${majority.join(',')}`
        await cluster.partition([minority, majority])
        heal = () => cluster.heal()
        break
      }
      case 'partition-bridge': {
        // One node (the bridge) sees both sides; the sides do not see each other.
        const order = shuffle(random, ids)
        const bridge = order[0] as string
        const rest = order.slice(1)
        const half = Math.ceil(rest.length / 2)
        const a = rest.slice(0, half)
        const b = rest.slice(half)
        description = `bridge ${bridge} between ${a.join(',')} and ${b.join(',')}`
        const links: [string, string][] = []
        for (const x of a) for (const y of b) links.push([x, y])
        await cluster.cutLinks(links)
        heal = () => cluster.heal()
        break
      }
      case 'loss': {
        description = 'drop 30% of packets between all nodes'
        await cluster.loss(ids, 0.3)
        heal = () => cluster.heal()
        break
      }
      case 'slow':
      case 'slow-leader': {
        const target = nemesis === 'slow' ? pick(random, ids) : leaderId
        description = `delay every link of ${target}${target === leaderId ? ' (the leader)' : ''} by 300 ms each way`
        await cluster.slow([target], 300)
        heal = () => cluster.heal()
        break
      }
    }
    const start = clock()
    log(`  ${(start / 1000).toFixed(1)}s  ${nemesis}: ${description}`)
    await sleep(faultMs * (0.5 + random()))
    await heal()
    const end = clock()
    log(`  ${(end / 1000).toFixed(1)}s  healed`)
    windows.push({ nemesis, description, start, end })
  }
  return windows
}
