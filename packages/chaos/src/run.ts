/**
 * One chaos run: start a cluster, run a workload while a nemesis schedule injects faults, heal,
 * let the cluster settle, run the final reads, check the history, and write the report.
 *
 * Leaderless mode (`mode: 'leaderless'`): the nodes run `--mode leaderless --replicas N` with a
 * short anti-entropy interval; the workload is ll-set with W and R quorums. After healing, the
 * recovery check wants every node to see every member up (there is no leader), the final read
 * runs at once, and then the runner waits (up to 60 s) until every member of each replica set
 * reports the same Merkle root. Nemeses aimed at the leader (pause-leader, partition-leader,
 * slow-leader) are refused: there is none; use pause, partition-one or slow.
 *
 * Router mode (`router: true`, `--router`): shard groups of kv-node processes (2 groups of
 * `nodes`, one shard map file) behind kv-router processes (2), and the clients talk to the
 * routers only. `move-slots` moves the slots the workload's keys live in between the groups
 * while the other nemeses kill and pause nodes of both groups (`kill-router` kills a router).
 * After healing, each group must agree on a leader and converge, every move must end, and the
 * groups' claims must cover every slot exactly once (the shard-ownership check); the register
 * and set checks run on the history as usual.
 */
import { join } from 'node:path'
import { slotOfKey } from '@kvstore/protocol'
import { checkArchiveRestore } from './checkers/archive-restore.js'
import { checkConvergence } from './checkers/convergence.js'
import { checkReplicaConvergence } from './checkers/replica-convergence.js'
import { checkLinearizable } from './checkers/linearizable.js'
import { analyzeSet, checkLostWrites, matchRollbacks } from './checkers/lost-writes.js'
import { checkSessions } from './checkers/sessions.js'
import { checkShardOwnership } from './checkers/shard-ownership.js'
import { checkLocks } from './checkers/locks.js'
import {
  UnsupportedFault,
  convergedDigests,
  convergedRanges,
  rolledBackKeys,
  waitForLeader,
  waitLeaderlessUp,
  type ChaosCluster,
  type ChaosNode,
  type NodeDigest,
} from './cluster.js'
import { chaosSecurity } from './security.js'
import { DockerCluster } from './docker-cluster.js'
import { pairOperations, type Verdict } from './history.js'
import {
  leaderNemeses,
  membershipNemeses,
  regionNemeses,
  runNemesis,
  shardNemeses,
  singleLeaderOnlyNemeses,
  type FaultWindow,
  type NemesisName,
} from './nemesis.js'
import { watchGroups, type LeaderStall } from './group-watch.js'
import { ProcessCluster } from './process-cluster.js'
import { runRegionsChaos } from './regions-run.js'
import { dirtyReadVerdict } from './workloads-dirty.js'
import { runWatchChaos } from './watch-run.js'
import { groupView, settleMoves, shardViewOf, type MoveRecord } from './shard-moves.js'
import { ShardedProcessCluster } from './sharded-cluster.js'
import { ringView, settleRing } from './ring-churn.js'
import { writeReport, type RunSummary } from './report.js'
import {
  HistoryRecorder,
  leaderlessWorkloads,
  registerKeys,
  setSlots,
  startWorkload,
  type AckMode,
  type Workload,
  type WorkloadName,
} from './workloads.js'

export interface ChaosOptions {
  backend: 'process' | 'docker'
  /**
   * The cluster's certificates (made by kv certs init with members n1..n9 and the user root);
   * made in the run's directory when omitted.
   */
  certsDir?: string
  workload: WorkloadName
  nemeses: NemesisName[]
  ack: AckMode
  durationMs: number
  seed: number
  nodes: number
  clients: number
  /** Where the report folder goes. */
  out: string
  /** Environment for every node: KV_* options and test-only switches. */
  nodeEnv?: Record<string, string>
  /** Session workload: read followers without session tokens (its teeth test). */
  noSessions?: boolean
  /** dirty-read workload: the reads' consistency (default committed; `default` is the teeth). */
  readConsistency?: 'default' | 'committed'
  /** Locks workload: resource writes without fencing tokens (its teeth test). */
  unfenced?: boolean
  healthyMs?: number
  faultMs?: number
  log?: (line: string) => void
  /** The command that replays this run, for the report. */
  command?: string
  /** The cluster mode (default single-leader). */
  mode?: 'single-leader' | 'leaderless'
  /** Leaderless: replicas per key, N (default 3). */
  replicas?: number
  /** Leaderless: write and read quorums, a number of replicas, quorum or all (default quorum). */
  w?: string
  r?: string
  /** Leaderless: let writes count hinted stand-ins towards W (default false: strict quorums). */
  sloppy?: boolean
  /** Leaderless: the nodes' anti-entropy interval (default 1000 ms). */
  antiEntropyIntervalMs?: number
  /** Extra kv-node arguments for every node. */
  nodeArgs?: string[]
  /**
   * Single-leader: the member that archives its log for the archive-restore check (default
   * n2, a follower at the start; 'none' turns the check off).
   */
  archiveOn?: string
  /**
   * Single-leader: how long the replicas get to converge after healing (default 60 s; 5 s
   * when they did not agree on one leader). A teeth test that expects divergence waits less.
   */
  convergeTimeoutMs?: number
  /**
   * Router mode: `groups` shard groups of `nodes` kv-node processes each behind `routers`
   * kv-router processes; clients talk to the routers only (process backend, single-leader).
   */
  router?: boolean
  /** Router mode: shard groups (default 2). */
  groups?: number
  /** Router mode: routers (default 2). */
  routers?: number
  /**
   * Regions mode (`--regions N`, process backend): N regions (2 or 3) of `nodes` kv-node
   * processes each, joined by cuttable links; the regions workload and checkers. See
   * regions-run.ts.
   */
  regions?: number
  /** Regions mode: quorum writers per region (default 3). */
  writersPerRegion?: number
  /** Regions mode: queued sessions per region (default 1). */
  queuedPerRegion?: number
  /**
   * Regions mode: how long the tickets get to end, and then the regions to converge, after
   * healing (each; default 60 s).
   */
  settleTimeoutMs?: number
}

/** The size of a quorum given as a number, 'quorum' or 'all', for N replicas. */
export function quorumSize(quorum: string, replicas: number): number {
  if (quorum === 'all') return replicas
  if (quorum === 'quorum') return Math.floor(replicas / 2) + 1
  const n = Number(quorum)
  if (!Number.isInteger(n) || n < 1 || n > replicas) {
    throw new Error(`a quorum must be 1 to ${replicas}, quorum or all, not ${quorum}`)
  }
  return n
}

export interface ChaosResult {
  summary: RunSummary
  dir: string
  windows: FaultWindow[]
}

export async function runChaos(options: ChaosOptions): Promise<ChaosResult> {
  if (options.regions !== undefined) return runRegionsChaos(options)
  if (options.workload === 'watch') return runWatchChaos(options)
  if (options.workload === 'regions') throw new Error('the regions workload needs --regions')
  const regional = options.nemeses.filter((n) => (regionNemeses as readonly string[]).includes(n))
  if (regional.length > 0) throw new Error(`${regional.join(', ')} needs regions: add --regions 2`)
  const log = options.log ?? ((line: string) => process.stdout.write(`${line}\n`))
  const leaderless = options.mode === 'leaderless'
  const replicas = options.replicas ?? 3
  const w = options.w ?? 'quorum'
  const r = options.r ?? 'quorum'
  const sloppy = options.sloppy ?? false
  if (leaderless) {
    const refused = options.nemeses.filter((n) => (leaderNemeses as readonly string[]).includes(n))
    if (refused.length > 0) {
      throw new UnsupportedFault(
        `${refused.join(', ')} ${refused.length === 1 ? 'aims' : 'aim'} at the leader, and a leaderless cluster has none: use pause, partition-one or slow (a random node) instead`,
      )
    }
    const changes = options.nemeses.filter((n) =>
      (singleLeaderOnlyNemeses as readonly string[]).includes(n),
    )
    if (changes.length > 0) {
      throw new UnsupportedFault(
        `${changes.join(', ')} promotes learners of a single-leader cluster; a leaderless ring has none: use member-churn (joins, leaves and replacements of ring members)`,
      )
    }
    if (!leaderlessWorkloads.includes(options.workload)) {
      throw new Error(
        `the ${options.workload} workload needs a leader; in leaderless mode use ${leaderlessWorkloads.join(', ')}`,
      )
    }
    if (replicas > options.nodes) {
      throw new Error(`--replicas ${replicas} needs at least ${replicas} nodes`)
    }
    quorumSize(w, replicas)
    quorumSize(r, replicas)
  } else if (leaderlessWorkloads.includes(options.workload)) {
    throw new Error(`the ${options.workload} workload needs --mode leaderless`)
  }
  const routed = options.router === true
  const groupCount = options.groups ?? 2
  const routerCount = options.routers ?? 2
  if (routed) {
    if (options.backend !== 'process')
      throw new UnsupportedFault('--router runs on the process backend only (--backend process)')
    if (leaderless) throw new Error('--router needs single-leader groups (shard groups are)')
    if (options.workload !== 'register' && options.workload !== 'set')
      throw new Error(`--router runs the register and set workloads, not ${options.workload}`)
    const changes = options.nemeses.filter((n) =>
      (membershipNemeses as readonly string[]).includes(n),
    )
    if (changes.length > 0)
      throw new UnsupportedFault(
        `${changes.join(', ')} ${changes.length === 1 ? 'changes' : 'change'} a group's members, which must match the shard map file: not with --router`,
      )
    const cuts = options.nemeses.filter(
      (n) => n.startsWith('partition') || n === 'loss' || n.startsWith('slow'),
    )
    if (cuts.length > 0)
      throw new UnsupportedFault(
        `${cuts.join(', ')} ${cuts.length === 1 ? 'needs' : 'need'} per-node networks, which --router (on the process backend) does not have: use move-slots, kill, pause, pause-leader, kill-router`,
      )
    if (groupCount < 2) throw new Error('--router needs at least 2 shard groups')
    if (routerCount < 1) throw new Error('--router needs at least 1 router')
  } else {
    const sharded = options.nemeses.filter((n) => (shardNemeses as readonly string[]).includes(n))
    if (sharded.length > 0)
      throw new Error(`${sharded.join(', ')} needs shard groups behind routers: add --router`)
  }
  const ackText = leaderless ? `w=${w},r=${r}${sloppy ? ',sloppy' : ''}` : options.ack
  const stamp = new Date().toISOString().replace(/[:.]/g, '-')
  const name = `${stamp}-${options.backend}${routed ? '-router' : ''}-${options.workload}-${options.nemeses.join('+')}-${ackText.replace(/[=,]/g, '')}-seed${options.seed}`
  const dir = join(options.out, name)
  log(
    `chaos: ${options.workload} under ${options.nemeses.join(', ')} on ${routed ? `${groupCount} groups of ` : ''}${options.nodes} ${options.backend} nodes${routed ? ` behind ${routerCount} routers` : ''}${leaderless ? ` (leaderless, N=${replicas})` : ''}, ${leaderless ? ackText : `ack=${options.ack}`}, ${options.durationMs / 1000} s, seed ${options.seed}`,
  )
  const networkFaults = options.nemeses.filter(
    (n) =>
      n.startsWith('partition') || n === 'loss' || n.startsWith('slow') || n === 'member-split',
  )
  if (options.backend === 'process' && networkFaults.length > 0) {
    throw new UnsupportedFault(
      `${networkFaults.join(', ')} need per-node networks: use --backend docker (the process backend can kill, pause and restart)`,
    )
  }
  const env: Record<string, string> = leaderless
    ? { ...options.nodeEnv }
    : { KV_DEFAULT_ACK: options.ack, ...options.nodeEnv }
  const args = [
    ...(leaderless
      ? [
          '--mode',
          'leaderless',
          '--replicas',
          String(replicas),
          '--anti-entropy-interval-ms',
          String(options.antiEntropyIntervalMs ?? 1000),
        ]
      : []),
    ...(options.nodeArgs ?? []),
  ]
  // As shipped: mutual TLS between members, HTTPS and auth for clients.
  const security = await chaosSecurity(options.certsDir ?? join(dir, 'certs'))
  const archiveOn = leaderless || routed ? 'none' : (options.archiveOn ?? 'n2')
  const archiveOption = archiveOn === 'none' ? {} : { archiveOn }
  const sharded = routed
    ? await ShardedProcessCluster.start({
        groups: groupCount,
        nodesPerGroup: options.nodes,
        routers: routerCount,
        env,
        args,
        logDir: join(dir, 'logs'),
        security,
      })
    : null
  const cluster: ChaosCluster =
    sharded !== null
      ? sharded
      : options.backend === 'docker'
        ? await DockerCluster.start({
            nodes: options.nodes,
            env,
            args,
            leaderless,
            security,
            ...archiveOption,
          })
        : await ProcessCluster.start({
            nodes: options.nodes,
            env,
            args,
            leaderless,
            logDir: join(dir, 'logs'),
            security,
            ...archiveOption,
          })
  const history = new HistoryRecorder()
  let windows: FaultWindow[] = []
  const extra: Record<string, string> = {}
  const verdicts: Verdict[] = []
  const prefix = `chaos-${options.seed}/`
  // Router mode: register keys that live in both groups, and the slots moves aim at.
  const keys = routed ? registerKeys(prefix) : undefined
  const hotSlots = !routed
    ? undefined
    : options.workload === 'register'
      ? (keys as string[]).map((k) => slotOfKey(k))
      : setSlots(prefix)
  let moves: MoveRecord[] = []
  let stalls: LeaderStall[] = []
  try {
    const workload = startWorkload(options.workload, {
      cluster,
      history,
      ack: options.ack,
      clients: options.clients,
      seed: options.seed,
      prefix,
      ...(options.noSessions ? { noSessions: true } : {}),
      ...(options.readConsistency ? { readConsistency: options.readConsistency } : {}),
      ...(options.unfenced === true ? { unfenced: true } : {}),
      ...(leaderless ? { quorums: { w, r, sloppy } } : {}),
      ...(sharded !== null ? { routers: sharded.routers } : {}),
      ...(keys !== undefined ? { registerKeys: keys } : {}),
    })
    // Router mode: who leads each group, every second, while the faults run.
    const watch = sharded !== null ? watchGroups(sharded, () => history.now(), log) : null
    try {
      windows = await runNemesis({
        cluster,
        nemeses: options.nemeses,
        seed: options.seed,
        durationMs: options.durationMs,
        ...(options.healthyMs !== undefined ? { healthyMs: options.healthyMs } : {}),
        ...(options.faultMs !== undefined ? { faultMs: options.faultMs } : {}),
        clock: () => history.now(),
        log,
        ...(leaderless ? { leaderless: true, replicas } : {}),
        // The archiving member stays: its archive is checked at the end.
        ...(archiveOn === 'none' ? {} : { protect: [archiveOn] }),
        ...(hotSlots !== undefined ? { hotSlots } : {}),
      })
      moves = windows.flatMap((w) => (w.move !== undefined ? [w.move] : []))
      // The rest of the duration runs without faults.
      const left = options.durationMs - history.now()
      if (left > 0) await new Promise((r) => setTimeout(r, left))
    } finally {
      if (watch !== null) stalls = await watch.stop()
      await workload.stop()
    }
    // Heal everything, bring killed nodes back, and let the cluster settle.
    await cluster.heal()
    for (const node of cluster.nodes) await cluster.start(node.id)
    if (sharded !== null) for (const r of sharded.routers) await sharded.startRouter(r.id)
    if (leaderless) {
      // A ring change still in flight finishes first (bounded), and nodes the ring does not
      // name (removed members, new nodes never added) are stopped: from here on the nodes are
      // the final ring's members. Every one must come back, see every member up and hold the
      // same ring; the final read runs at once (before anti-entropy has had its time), then
      // the replicas of the final ring must converge within 60 s.
      const ring = options.nemeses.includes('member-churn')
        ? await settleRing(cluster, 60_000).then(
            (view) => ({ ok: true, text: `ring v${view.version}` }),
            (err: unknown) => ({ ok: false, text: (err as Error).message }),
          )
        : null
      verdicts.push(
        await recoveryVerdict(
          ring?.ok === false
            ? Promise.reject(new Error(ring.text))
            : waitLeaderlessUp(cluster, 30_000),
          ring?.ok === false
            ? 'a ring change did not finish within 60 s'
            : 'the nodes did not all see each other within 30 s',
        ),
      )
      await workload.finish()
      // The final ring's members, as the running members agree on it.
      const finalRing = await ringView(cluster)
      const ringNodes: ChaosNode[] =
        finalRing === null
          ? [...cluster.nodes]
          : finalRing.members.map(
              (m) => cluster.nodes.find((n) => n.id === m.id) ?? { id: m.id, url: m.clientUrl },
            )
      const converged = await convergedRanges(cluster, 60_000, () => ringNodes)
      const ops = pairOperations(history.events)
      const overlap = quorumSize(w, replicas) + quorumSize(r, replicas) > replicas
      const verdict = options.workload === 'll-register' ? checkSessions(ops) : checkLostWrites(ops)
      if (!overlap && verdict.valid === false) {
        verdict.summary += ` (W + R <= N: reads need not see acknowledged writes, so this is expected)`
      }
      verdicts.push(verdict)
      verdicts.push(checkReplicaConvergence(converged.reports, converged.waitedMs))
      return await finishRun(ops)
    }
    if (sharded !== null) return await finishSharded(sharded, workload)
    // A cluster that cannot agree on one leader after healing is itself a finding; the
    // history is still checked.
    const recovery = await recoveryVerdict(
      waitForLeader(cluster, 30_000).then(
        (leader) => `${leader.id} leads, and every node follows it`,
      ),
      'the nodes did not agree on one leader',
    )
    verdicts.push(recovery)
    await workload.finish()
    const digests = await convergedDigests(
      cluster,
      recovery.valid === true ? (options.convergeTimeoutMs ?? 60_000) : 5000,
    )
    const ops = pairOperations(history.events)
    await historyVerdicts(ops)
    const convergence = checkConvergence(digests)
    verdicts.push(convergence)
    const archived =
      archiveOn === 'none'
        ? null
        : await archiveVerdict(cluster, archiveOn, convergence.valid === true ? digests : [])
    if (archived !== null) verdicts.push(archived)
    return await finishRun(ops)
  } finally {
    await cluster.stop()
  }

  /** The checks of the history: linearizability, sessions, or the set's lost writes. */
  async function historyVerdicts(ops: ReturnType<typeof pairOperations>): Promise<void> {
    if (options.workload === 'register') verdicts.push(checkLinearizable(ops))
    if (options.workload === 'session') verdicts.push(checkSessions(ops))
    if (options.workload === 'dirty-read') {
      const level = options.readConsistency ?? 'committed'
      verdicts.push(await dirtyReadVerdict(cluster, ops, `chaos-${options.seed}/`, level))
    }
    if (options.workload === 'locks') verdicts.push(checkLocks(ops))
    if (options.workload === 'set') {
      verdicts.push(checkLostWrites(ops))
      // Every lost write must be in some node's rollback record (async writes of a leader
      // that lost its place).
      const prefix = `chaos-${options.seed}/s/`
      const rolled: number[] = []
      for (const node of cluster.nodes) {
        for (const key of await rolledBackKeys(node)) {
          if (key.startsWith(prefix)) rolled.push(Number(key.slice(prefix.length)))
        }
      }
      const analysis = analyzeSet(ops)
      const match = matchRollbacks(analysis.lost, rolled)
      verdicts.push({
        checker: 'rollback-record',
        valid: match.lostNotInRollbacks.length === 0,
        summary: `${analysis.lost.length} lost acknowledged writes, ${match.matched.length} of them in the rollback records (${rolled.length} entries rolled back in all)`,
        details: {
          lost: analysis.lost.length,
          matched: match.matched.length,
          rolledBack: rolled.length,
          lostNotInRollbacks: match.lostNotInRollbacks.slice(0, 100),
          rollbacksNotLost: match.rollbacksNotLost.slice(0, 100),
        },
      })
    }
  }

  /**
   * Router mode, after healing: each group agrees on a leader, every move ends, the final
   * reads run, each group converges, and the groups' claims cover every slot exactly once.
   */
  async function finishSharded(
    sharded: ShardedProcessCluster,
    workload: Workload,
  ): Promise<ChaosResult> {
    const leaders = await Promise.all(
      sharded.groups.map((g) =>
        waitForLeader(g.cluster, 30_000).then(
          (leader) => ({
            ok: true,
            text: `${g.id}: ${leader.id} leads, and every member follows it`,
          }),
          (err: unknown) => ({ ok: false, text: `${g.id}: ${(err as Error).message}` }),
        ),
      ),
    )
    const recovered = leaders.every((l) => l.ok)
    verdicts.push({
      checker: 'recovery',
      valid: recovered,
      summary: `after healing${recovered ? '' : ', a group did not agree on one leader'}: ${leaders.map((l) => l.text).join('; ')}`,
      details: {},
    })
    // A move the nemesis left running finishes or rolls back by itself (bounded).
    const settled = await settleMoves(sharded, 60_000)
    log(
      `  moves ${settled.settled ? 'settled' : 'still in flight'} after ${(settled.waitedMs / 1000).toFixed(1)} s`,
    )
    await workload.finish()
    const groupVerdicts: Verdict[] = []
    for (const g of sharded.groups) {
      const digests = await convergedDigests(
        g.cluster,
        recovered ? (options.convergeTimeoutMs ?? 60_000) : 5000,
      )
      groupVerdicts.push(checkConvergence(digests))
    }
    const convergence: Verdict = {
      checker: 'convergence',
      valid: groupVerdicts.every((v) => v.valid === true),
      summary: sharded.groups.map((g, i) => `${g.id}: ${groupVerdicts[i]?.summary}`).join('; '),
      details: Object.fromEntries(sharded.groups.map((g, i) => [g.id, groupVerdicts[i]?.details])),
    }
    // Who owns what, once the groups have converged: each group's leader, and every member.
    const views = await Promise.all(sharded.groups.map((g) => groupView(g)))
    const members = await Promise.all(
      sharded.groups.flatMap((g) =>
        g.cluster.nodes
          .filter((n) => g.cluster.isRunning(n.id))
          .map(async (n) => ({ group: g.id, node: n.id, view: await shardViewOf(n, 2000) })),
      ),
    )
    const ownership = checkShardOwnership({
      groups: sharded.groups.map((g) => g.id),
      views,
      members,
      settled: settled.settled,
      waitedMs: settled.waitedMs,
    })
    const ops = pairOperations(history.events)
    await historyVerdicts(ops)
    verdicts.push(convergence, ownership)
    return finishRun(ops)
  }

  /** Writes the report and logs the verdicts. */
  async function finishRun(ops: ReturnType<typeof pairOperations>): Promise<ChaosResult> {
    if (cluster instanceof DockerCluster) {
      for (const [id, text] of Object.entries(await cluster.logs())) extra[`${id}.log`] = text
    }
    const counts = { ok: 0, fail: 0, info: 0 }
    for (const op of ops) counts[op.type]++
    const valid: boolean | 'unknown' = verdicts.some((v) => v.valid === false)
      ? false
      : verdicts.some((v) => v.valid === 'unknown')
        ? 'unknown'
        : true
    const summary: RunSummary = {
      command:
        options.command ??
        (leaderless
          ? `pnpm chaos --mode leaderless --backend ${options.backend} --workload ${options.workload} --nemesis ${options.nemeses.join(',')} --replicas ${replicas} --w ${w} --r ${r}${sloppy ? ' --sloppy' : ''} --anti-entropy-interval-ms ${options.antiEntropyIntervalMs ?? 1000} --duration ${options.durationMs / 1000}s --seed ${options.seed} --nodes ${options.nodes} --clients ${options.clients}`
          : `pnpm chaos --backend ${options.backend}${routed ? ` --router --groups ${groupCount} --routers ${routerCount}` : ''} --workload ${options.workload} --nemesis ${options.nemeses.join(',')} --ack ${options.ack} --duration ${options.durationMs / 1000}s --seed ${options.seed} --nodes ${options.nodes} --clients ${options.clients}${options.unfenced === true ? ' --unsafe-unfenced-locks' : ''}${options.healthyMs !== undefined ? ` --healthy-ms ${options.healthyMs}` : ''}${options.faultMs !== undefined ? ` --fault-ms ${options.faultMs}` : ''}${options.nodeEnv?.KV_UNSAFE_SHARD_MOVE_WITHOUT_FENCE === '1' ? ' --unsafe-shard-move-without-fence' : ''}`),
      backend: options.backend,
      workload: options.workload,
      nemeses: options.nemeses,
      ack: ackText,
      seed: options.seed,
      durationMs: options.durationMs,
      operations: counts,
      verdicts,
      valid,
      ...(routed ? { router: { groups: groupCount, routers: routerCount } } : {}),
      ...(options.nemeses.includes('move-slots') ? { moves } : {}),
      ...(routed ? { stalls } : {}),
    }
    await writeReport(dir, summary, history.events, ops, windows, extra)
    for (const v of verdicts) {
      log(
        `  ${v.valid === true ? 'valid  ' : v.valid === false ? 'INVALID' : 'unknown'}  ${v.checker}: ${v.summary}`,
      )
    }
    log(
      `  ${counts.ok} ok, ${counts.fail} fail, ${counts.info} info; report: ${join(dir, 'report.html')}`,
    )
    return { summary, dir, windows }
  }
}

/**
 * The archive-restore verdict: once the archive holds the cluster's final LSN, a restore to it
 * must have the cluster's digest. Null when no member archives; 'unknown' when the cluster
 * did not converge (there is no one final state to compare with).
 */
async function archiveVerdict(
  cluster: ChaosCluster,
  archiveOn: string,
  digests: NodeDigest[],
): Promise<Verdict> {
  const first = digests[0]
  if (first === undefined) {
    return {
      checker: 'archive-restore',
      valid: 'unknown',
      summary: 'the replicas did not converge, so there is no final state to restore to',
      details: {},
    }
  }
  const node = cluster.nodes.find((n) => n.id === archiveOn) as ChaosNode
  const deadline = Date.now() + 60_000
  let archivedLsn = -1
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`${node.url}/v1/status`, { signal: AbortSignal.timeout(2000) })
      const status = (await res.json()) as { archive?: { archivedLsn: number } }
      archivedLsn = status.archive?.archivedLsn ?? -1
      if (archivedLsn >= first.appliedLsn) break
    } catch {
      // not answering yet
    }
    await new Promise((r) => setTimeout(r, 250))
  }
  if (archivedLsn < first.appliedLsn) {
    return {
      checker: 'archive-restore',
      valid: false,
      summary: `the archive on ${archiveOn} reached LSN ${archivedLsn} only, not the cluster's ${first.appliedLsn}, within 60 s`,
      details: { node: archiveOn, archivedLsn, clusterLsn: first.appliedLsn },
    }
  }
  const copy = await cluster.archive()
  if (copy === null) throw new Error(`${archiveOn} was to archive, but the cluster has no archive`)
  return checkArchiveRestore({
    archiveDir: copy.dir,
    node: archiveOn,
    lsn: first.appliedLsn,
    digest: first.digest,
  })
}

/** The recovery verdict: what `waiting` resolves with, or why it failed. */
async function recoveryVerdict(waiting: Promise<string>, failure: string): Promise<Verdict> {
  const recovery = await waiting.then(
    (text) => ({ ok: true, text }),
    (err: unknown) => ({ ok: false, text: (err as Error).message }),
  )
  return {
    checker: 'recovery',
    valid: recovery.ok,
    summary: recovery.ok
      ? `after healing: ${recovery.text}`
      : `after healing, ${failure}: ${recovery.text}`,
    details: {},
  }
}
