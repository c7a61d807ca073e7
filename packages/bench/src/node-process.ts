/**
 * The benchmarks' nodes and clusters: the test kit's launchers, run quiet (log level warn, no
 * log lines kept, stderr passed through) and secured by the run's profile.
 */
import {
  LeaderlessCluster,
  TestCluster,
  startNodeProcess,
  type ClusterMember,
  type ClusterOptions,
  type NodeProcess,
} from '@kvstore/testkit'
import { cpuSeconds } from './proc.js'
import type { BenchSecurity } from './security.js'

export type BenchNode = NodeProcess
export type BenchMember = ClusterMember
export type BenchCluster = TestCluster

/** A member's process id (0 while it is stopped: its CPU then reads as 0). */
export const pidOf = (member: BenchMember): number => member.process?.pid ?? 0

function quiet(dir: string, security: BenchSecurity): ClusterOptions {
  return { security, dir, logLevel: 'warn', keepLogs: false, inheritStderr: true }
}

/** One node on a free port (log level info: its "node started" line gives the port). */
export function startBenchNode(args: string[], security: BenchSecurity): Promise<BenchNode> {
  return startNodeProcess(args, 20_000, { security, keepLogs: false, inheritStderr: true })
}

/**
 * An `n`-node single-leader cluster on 127.0.0.1 (n1 is the preferred leader), once a leader
 * is elected and every member is connected to it.
 */
export async function startBenchCluster(
  dir: string,
  n: number,
  security: BenchSecurity,
  args: string[] = [],
): Promise<BenchCluster> {
  const cluster = await TestCluster.start(n, ['--leader', 'n1', ...args], quiet(dir, security))
  try {
    await cluster.waitForLeader(30_000, { connected: true })
  } catch (err) {
    await cluster.stop()
    throw err
  }
  return cluster
}

/** An `n`-node leaderless cluster on 127.0.0.1, once every member is ready and sees the rest. */
export function startLeaderlessBenchCluster(
  dir: string,
  n: number,
  security: BenchSecurity,
  args: string[] = [],
): Promise<LeaderlessCluster> {
  return LeaderlessCluster.start(n, args, quiet(dir, security))
}

/**
 * Stops a leaderless cluster's members with SIGTERM, then closes it (which alone would kill -9
 * them): a node stopped cleanly writes what a preloaded profiler (scripts/cpu-profile.mjs) holds.
 */
export async function closeLeaderlessBenchCluster(cluster: LeaderlessCluster): Promise<void> {
  try {
    await Promise.all(cluster.members.map((m) => cluster.terminate(m.id)))
  } finally {
    await cluster.close()
  }
}

/** CPU per member, in cores, over a stretch of wall time. */
export async function cpuMeter(
  members: BenchMember[],
): Promise<{ stop(): Promise<Record<string, number>> }> {
  const before = new Map<string, number>()
  for (const m of members) before.set(m.id, await cpuSeconds(pidOf(m)))
  const started = performance.now()
  return {
    async stop() {
      const wallS = (performance.now() - started) / 1000
      const cores: Record<string, number> = {}
      for (const m of members)
        cores[m.id] = ((await cpuSeconds(pidOf(m))) - (before.get(m.id) ?? 0)) / wallS
      return cores
    },
  }
}
