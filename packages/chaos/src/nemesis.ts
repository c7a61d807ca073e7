/**
 * Nemeses: faults on a seeded schedule. Each round waits a healthy interval, starts one fault
 * chosen (with the seed) among the enabled ones, holds it, then heals it. The schedule and
 * every fault window are recorded for the report and printed as they happen.
 */
import { prng } from '@kvstore/core'
import { parseSlotRanges, rangesContain, formatSlotRanges } from '@kvstore/protocol'
import { currentLeader, type ChaosCluster } from './cluster.js'
import { churn, split } from './churn.js'
import { ringChurn } from './ring-churn.js'
import { chaosMemberIds } from './security.js'
import { groupView, moveSlots, type MoveRecord } from './shard-moves.js'
import { isSharded, type ShardedCluster } from './sharded-cluster.js'
import { isRegioned } from './regions-cluster.js'

/** The seeded draws of schedules and workloads: the project's one PRNG (from the core). */
export { prng }

export const nemesisNames = [
  'kill',
  'pause',
  'pause-leader',
  'kill-leader',
  'partition-one',
  'partition-majority',
  'partition-leader',
  'partition-bridge',
  'loss',
  'slow',
  'slow-leader',
  'member-churn',
  'member-split',
  'move-slots',
  'kill-router',
  'partition-regions',
] as const
export type NemesisName = (typeof nemesisNames)[number]

/** Nemeses aimed at the leader: a leaderless cluster has none, so runs refuse them there. */
export const leaderNemeses = [
  'pause-leader',
  'kill-leader',
  'partition-leader',
  'slow-leader',
] as const

/** Nemeses that need regions (--regions). */
export const regionNemeses = ['partition-regions'] as const

/** The nemeses a --regions run takes: the links between regions, and kills and pauses. */
export const regionsModeNemeses = [
  'partition-regions',
  'kill',
  'kill-leader',
  'pause',
  'pause-leader',
] as const

/** Nemeses that change the configuration (member-churn also in leaderless mode, as ring changes). */
export const membershipNemeses = ['member-churn', 'member-split'] as const

/** Membership nemeses a leaderless run may not use: member-split promotes learners. */
export const singleLeaderOnlyNemeses = ['member-split'] as const

/** Nemeses that need shard groups behind routers (--router). */
export const shardNemeses = ['move-slots', 'kill-router'] as const

/** New member ids a round of each membership nemesis takes. */
const idsPerRound: Record<string, number> = { 'member-churn': 1, 'member-split': 2 }

/** One fault, from when it started to when it was healed (ms since the run began). */
export interface FaultWindow {
  nemesis: NemesisName
  description: string
  start: number
  end: number
  /** move-slots: the move this window is. */
  move?: MoveRecord
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
  /**
   * Draw the nemeses from a shuffled bag (each once before any comes again) rather than
   * independently, so a short run still has every one of them.
   */
  everyOnce?: boolean
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
  /**
   * move-slots: slots the workload's keys live in. Each move takes one of them and the run of
   * slots around it that one group owns.
   */
  hotSlots?: readonly number[]
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

/**
 * Runs the schedule until its duration is over; resolves with the fault windows. `move-slots`
 * runs beside the others (moves overlap kills and pauses), the others take turns.
 */
export async function runNemesis(options: NemesisOptions): Promise<FaultWindow[]> {
  const moving = options.nemeses.includes('move-slots')
  const rounds = options.nemeses.filter((n) => n !== 'move-slots')
  if (moving && !isSharded(options.cluster))
    throw new Error('move-slots needs shard groups: run with --router')
  const moves = moving
    ? runMoves({ ...options, cluster: options.cluster as ShardedCluster })
    : Promise.resolve([])
  // Both loops run to the end: a failure in one must not leave the other running unseen.
  const [roundWindows, moveWindows] = await Promise.all([
    rounds.length > 0 ? runRounds({ ...options, nemeses: rounds }) : Promise.resolve([]),
    moves,
  ])
  return [...roundWindows, ...moveWindows].sort((a, b) => a.start - b.start)
}

/** Slot-run widths a move draws from. */
const moveWidths = [1, 8, 64, 512]

/**
 * The move-slots loop: a pause, then one move of a run of slots around a hot slot from the
 * group that owns it to another, followed to its end; repeated while the duration lasts.
 *
 * With `kill` or `pause` among the nemeses, two moves in five are also interrupted on purpose:
 * 50 to 500 ms after the move is asked for, the source's or the target's leader is killed
 * (kill -9) or paused, and brought back once the move has ended or after a fault's hold (0.5 to
 * 1.5 times --fault-ms), whichever comes first. (The other nemeses' faults
 * overlap moves too, but by chance.)
 */
async function runMoves(
  options: NemesisOptions & { cluster: ShardedCluster },
): Promise<FaultWindow[]> {
  const { cluster, clock, log } = options
  // A draw of its own, so adding move-slots does not change the other faults' schedule.
  const random = prng(options.seed * 7919 + 17)
  const healthyMs = options.healthyMs ?? 3000
  const hot = options.hotSlots ?? []
  if (hot.length === 0) throw new Error("move-slots needs the slots of the workload's keys")
  const windows: FaultWindow[] = []
  const known = new Set<string>()
  const begin = clock()
  const at = () => `${(clock() / 1000).toFixed(1)}s`
  while (clock() - begin + 5000 <= options.durationMs) {
    await sleep(healthyMs * (0.3 + 0.7 * random()))
    const slot = pick(random, hot)
    const width = pick(random, moveWidths)
    const offset = Math.floor(random() * width)
    const abortAfterMs = random() < 0.2 ? Math.round(50 + 700 * random()) : null
    const interruptions = (['kill', 'pause'] as const).filter((n) => options.nemeses.includes(n))
    const interrupt =
      interruptions.length > 0 && random() < 0.4
        ? {
            how: pick(random, interruptions),
            side: random() < 0.5 ? ('source' as const) : ('target' as const),
            afterMs: Math.round(50 + 450 * random()),
            holdMs: Math.round((options.faultMs ?? 4000) * (0.5 + random())),
          }
        : null
    const views = await Promise.all(cluster.groups.map((g) => groupView(g)))
    const owners = cluster.groups
      .map((g, i) => ({ group: g, view: views[i] }))
      .filter(({ view }) => view?.claims.some((c) => c.first <= slot && slot <= c.last))
    const source = owners[0]
    if (
      owners.length !== 1 ||
      source === undefined ||
      source.view === null ||
      source.view === undefined
    ) {
      log(
        `  ${at()}  move-slots: slot ${slot} has ${owners.length} owners now (a group does not answer, or a move ends): skipped`,
      )
      continue
    }
    const view = source.view
    const fenced = parseSlotRanges(view.fenced)
    if (view.move !== null || rangesContain(fenced, slot)) {
      log(
        `  ${at()}  move-slots: ${source.group.id} is still moving ${formatSlotRanges(view.move?.slots ?? fenced)}: skipped`,
      )
      continue
    }
    const claim = view.claims.find((c) => c.first <= slot && slot <= c.last)
    if (claim === undefined) continue
    const first = Math.max(claim.first, slot - offset)
    const last = Math.min(claim.last, first + width - 1)
    const slots = formatSlotRanges([{ first, last }])
    const others = cluster.groups.filter((g) => g !== source.group)
    const target = pick(random, others)
    log(
      `  ${at()}  move-slots: moving ${slots} from ${source.group.id} to ${target.id}${abortAfterMs !== null ? ` (abort after ${abortAfterMs} ms)` : ''}${interrupt !== null ? ` (${interrupt.how} the ${interrupt.side}'s leader after ${interrupt.afterMs} ms)` : ''}`,
    )
    // The interruption runs beside the move. What it did is undone once the move has ended,
    // or after a fault's hold (0.5 to 1.5 fault times), whichever comes first.
    let interrupted = ''
    let moveOver = false
    let moveEnded: () => void = () => {}
    const ended = new Promise<void>((resolve) => (moveEnded = resolve))
    const interrupting =
      interrupt === null
        ? Promise.resolve()
        : (async () => {
            await Promise.race([sleep(interrupt.afterMs), ended])
            if (moveOver) return
            const group = interrupt.side === 'source' ? source.group : target
            const leader = await currentLeader(group.cluster)
            if (leader === null) {
              interrupted = `no leader of ${group.id} to ${interrupt.how}`
              return
            }
            if (interrupt.how === 'kill') await cluster.kill(leader.id)
            else await cluster.pause(leader.id)
            interrupted = `${interrupt.how === 'kill' ? 'kill -9' : 'pause'} ${leader.id} (${group.id}'s leader) at ${at()}`
            log(`  ${at()}  move-slots: ${interrupted}`)
            await Promise.race([sleep(interrupt.holdMs), ended])
            if (interrupt.how === 'kill') await cluster.start(leader.id)
            else await cluster.resume(leader.id)
            interrupted += `, back at ${at()}`
          })()
    const move = await moveSlots({
      cluster,
      from: source.group,
      to: target,
      slots,
      abortAfterMs,
      known,
      clock,
    })
    moveOver = true
    moveEnded()
    await interrupting
    move.interrupted = interrupted
    const description = `move ${slots} ${move.from} -> ${move.to}: ${move.phase} in ${(move.durationMs / 1000).toFixed(1)} s${move.abortRequested ? ', abort asked' : ''}${interrupted !== '' ? `, ${interrupted}` : ''}${move.id !== '' ? ` (${move.id})` : ''}${move.error === '' ? '' : move.phase === 'done' ? `; a step it retried past: ${move.error}` : `: ${move.error}`}`
    log(`  ${at()}  move-slots: ${description}`)
    windows.push({ nemesis: 'move-slots', description, start: move.start, end: move.end, move })
  }
  return windows
}

/** The nemeses that take turns: a healthy interval, one fault, its heal, repeated. */
function shuffled<T>(random: () => number, items: readonly T[]): T[] {
  const out = [...items]
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    ;[out[i], out[j]] = [out[j] as T, out[i] as T]
  }
  return out
}

async function runRounds(options: NemesisOptions): Promise<FaultWindow[]> {
  const { cluster, clock, log } = options
  const random = prng(options.seed)
  const healthyMs = options.healthyMs ?? 3000
  const faultMs = options.faultMs ?? 4000
  const windows: FaultWindow[] = []
  // Ids never used in this run: the membership nemesis takes new members' ids from them.
  const fresh = chaosMemberIds.filter((id) => !cluster.nodes.some((n) => n.id === id))
  const membersMin = Math.max(cluster.nodes.length, options.replicas ?? 0)
  const begin = clock()
  const bag: NemesisName[] = []
  while (clock() - begin + healthyMs + faultMs <= options.durationMs) {
    await sleep(healthyMs * (0.5 + random()))
    // The members change under the membership nemesis: look again every round.
    const ids = cluster.nodes.map((n) => n.id)
    let nemesis: NemesisName
    if (options.everyOnce === true) {
      if (bag.length === 0) bag.push(...shuffled(random, options.nemeses))
      nemesis = bag.pop() as NemesisName
    } else nemesis = pick(random, options.nemeses)
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
    // Shard groups: the leader of one group, drawn; regions: the leader of one region.
    const leader = options.leaderless
      ? null
      : await currentLeader(
          isSharded(cluster)
            ? pick(random, cluster.groups).cluster
            : isRegioned(cluster)
              ? pick(random, cluster.regions).cluster
              : cluster,
        )
    // In leaderless mode the leader nemeses are refused before the run; '' names no node.
    const leaderId = options.leaderless ? '' : (leader?.id ?? pick(random, ids))
    /** A node's name in a description: with its group when there are groups. */
    const named = (id: string) =>
      isSharded(cluster)
        ? `${id} of ${cluster.groupOf(id)}`
        : isRegioned(cluster)
          ? `${id} of ${cluster.regionOf(id)}`
          : id
    let description = ''
    let heal: () => Promise<void>
    switch (nemesis) {
      case 'move-slots':
        // Runs beside the rounds (runMoves), never as one.
        continue
      case 'kill-router': {
        if (!isSharded(cluster)) throw new Error('kill-router needs routers: run with --router')
        const target = pick(
          random,
          cluster.routers.map((r) => r.id),
        )
        description = `kill -9 router ${target}`
        await cluster.killRouter(target)
        heal = () => cluster.startRouter(target)
        break
      }
      case 'partition-regions': {
        if (!isRegioned(cluster))
          throw new Error('partition-regions needs regions: run with --regions')
        // Half the cuts refuse (callers fail fast), half drop everything (callers time out).
        const mode = random() < 0.5 ? ('refuse' as const) : ('blackhole' as const)
        description = `cut every link between regions ${cluster.regions.map((r) => r.id).join(' | ')} (${mode})`
        await cluster.cutRegions(mode)
        heal = () => cluster.healRegions()
        break
      }
      case 'kill-leader': {
        description = `kill -9 ${named(leaderId)} ${leader !== null ? '(the leader)' : '(no leader found: a node drawn at random)'}`
        await cluster.kill(leaderId)
        heal = () => cluster.start(leaderId)
        break
      }
      case 'kill': {
        const target = pick(random, ids)
        description = `kill -9 ${named(target)}`
        await cluster.kill(target)
        heal = () => cluster.start(target)
        break
      }
      case 'pause':
      case 'pause-leader': {
        const target = nemesis === 'pause' ? pick(random, ids) : leaderId
        description = `pause ${named(target)}${target === leaderId ? ' (the leader)' : ''}`
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
