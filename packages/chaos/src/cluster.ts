/**
 * What a nemesis and a workload need from a cluster, whatever runs it: local processes or
 * containers. Faults a backend cannot make throw `UnsupportedFault`, naming the backend that can.
 */

import type { ChaosSecurity } from './security.js'
import {
  checkReplicaConvergence,
  type RangeReport,
  type RangeRoot,
} from './checkers/replica-convergence.js'

export interface ChaosNode {
  id: string
  /** Client URL reachable from the runner. */
  url: string
}

export interface NodeDigest {
  node: string
  appliedLsn: number
  digest: string
}

/** A member as the membership API (POST /admin/v1/members) takes it. */
export interface MemberSpec {
  id: string
  clientUrl: string
  peerUrl: string
}

export class UnsupportedFault extends Error {}

export { freePort } from './node-process.js'

/**
 * Polls a node's /ready until it answers 200; fails after `timeoutMs`, or at once when
 * `alive()` says the node is gone.
 */
export async function waitReady(
  node: ChaosNode,
  timeoutMs: number,
  alive: () => boolean = () => true,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      const res = await fetch(`${node.url}/ready`, { signal: AbortSignal.timeout(500) })
      if (res.ok) return
    } catch {
      // not up yet
    }
    if (!alive()) throw new Error(`${node.id} exited while starting`)
    if (Date.now() > deadline) throw new Error(`${node.id} was not ready within ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

export interface ChaosCluster {
  readonly backend: 'process' | 'docker'
  /**
   * The nodes now: the members, and nodes started to join. A member the nemesis removed leaves
   * this list once it is retired, so read it afresh rather than keeping a copy.
   */
  readonly nodes: readonly ChaosNode[]
  /** How clients reach the nodes: the cluster's CA and root's client certificate. */
  readonly tls: ChaosSecurity['tls']
  /** kill -9. */
  kill(id: string): Promise<void>
  /** Starts a killed node again on its data. */
  start(id: string): Promise<void>
  /** SIGSTOP / docker pause. */
  pause(id: string): Promise<void>
  resume(id: string): Promise<void>
  /** Cuts every link between the groups (nodes in no group keep all their links). */
  partition(groups: string[][]): Promise<void>
  /** Cuts exactly these links, both ways. */
  cutLinks(links: [string, string][]): Promise<void>
  /** Drops this share (0-1) of the packets each node receives from its peers. */
  loss(ids: string[], probability: number): Promise<void>
  /** Delays every link of these nodes by delayMs each way (a slow network). */
  slow(ids: string[], delayMs: number): Promise<void>
  /** Removes every partition, loss and slow-link rule. */
  heal(): Promise<void>
  /** Is the node's process running (not killed)? */
  isRunning(id: string): boolean
  /**
   * Starts a brand-new node `id` (a fresh id, an empty data directory, `--join`, `--members`
   * naming the nodes now and itself) and resolves once it serves; it is in `nodes` from then
   * on. Resolves with what POST /admin/v1/members takes to add it.
   */
  join(id: string): Promise<MemberSpec>
  /**
   * A member whose removal has committed: stops it (kill -9) and leaves it out of `nodes` from
   * then on. Its logs stay for the report.
   */
  retire(id: string): Promise<void>
  /** Stops everything and removes what the backend created. */
  stop(): Promise<void>
  /**
   * The member that archives its log (`archiveOn`), and a local directory holding a copy of
   * its archive as it is now; null when no member archives.
   */
  archive(): Promise<{ node: string; dir: string } | null>
}

export interface ClusterView {
  leaderId: string | null
  writable: boolean
  epoch: number
}

/** A node's own view, or null when it does not answer in time. */
export async function viewOf(node: ChaosNode, timeoutMs = 1000): Promise<ClusterView | null> {
  try {
    const res = await fetch(`${node.url}/v1/cluster`, { signal: AbortSignal.timeout(timeoutMs) })
    return res.ok ? ((await res.json()) as ClusterView) : null
  } catch {
    return null
  }
}

/** The node that says it takes writes now, if any. */
export async function currentLeader(cluster: ChaosCluster): Promise<ChaosNode | null> {
  const running = cluster.nodes.filter((n) => cluster.isRunning(n.id))
  const views = await Promise.all(running.map((n) => viewOf(n, 500)))
  const index = views.findIndex((v) => v?.writable === true)
  return index === -1 ? null : (running[index] as ChaosNode)
}

/** Waits until one running node takes writes and every running node follows it. */
export async function waitForLeader(cluster: ChaosCluster, timeoutMs = 60_000): Promise<ChaosNode> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const running = cluster.nodes.filter((n) => cluster.isRunning(n.id))
    const views = await Promise.all(running.map((n) => viewOf(n, 1000)))
    const index = views.findIndex((v) => v?.writable === true)
    const leader = running[index]
    if (leader && views.every((v) => v?.leaderId === leader.id)) return leader
    if (Date.now() > deadline) throw new Error(`no leader within ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

export async function digestOf(node: ChaosNode): Promise<NodeDigest> {
  const res = await fetch(`${node.url}/v1/digest`, { signal: AbortSignal.timeout(10_000) })
  const body = (await res.json()) as { appliedLsn: number; digest: string }
  return { node: node.id, appliedLsn: body.appliedLsn, digest: body.digest }
}

/** Waits (up to timeoutMs) until every running node has the same digest; returns the last seen. */
export async function convergedDigests(
  cluster: ChaosCluster,
  timeoutMs = 60_000,
): Promise<NodeDigest[]> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const running = cluster.nodes.filter((n) => cluster.isRunning(n.id))
    const digests = await Promise.all(
      running.map((n) =>
        digestOf(n).catch(() => ({ node: n.id, appliedLsn: -1, digest: 'unreachable' })),
      ),
    )
    const same = digests.every(
      (d) => d.digest === digests[0]?.digest && d.appliedLsn === digests[0]?.appliedLsn,
    )
    if (same || Date.now() > deadline) return digests
    await new Promise((r) => setTimeout(r, 250))
  }
}

/**
 * The rollback records of one node: the keys its truncations dropped. A reserved key's change
 * (the auth store, a shard group's record) is named there without a key, and is no element.
 */
export async function rolledBackKeys(node: ChaosNode): Promise<string[]> {
  const keys: string[] = []
  let after = 0
  for (;;) {
    const res = await fetch(`${node.url}/admin/v1/rollbacks?after=${after}&limit=1000`, {
      signal: AbortSignal.timeout(10_000),
    })
    const page = (await res.json()) as {
      rollbacks: { ops: { key?: string }[] }[]
      next: number | null
    }
    for (const r of page.rollbacks)
      for (const op of r.ops) if (typeof op.key === 'string') keys.push(op.key)
    if (page.next === null) return keys
    after = page.next
  }
}

/** A node's Merkle roots per replica set (leaderless mode), or null ranges when it does not answer. */
export async function rangesOf(node: ChaosNode): Promise<RangeReport> {
  try {
    const res = await fetch(`${node.url}/admin/v1/ranges`, { signal: AbortSignal.timeout(5000) })
    if (!res.ok) {
      await res.arrayBuffer()
      return { node: node.id, ranges: null, error: `HTTP ${res.status}` }
    }
    const body = (await res.json()) as { ranges: RangeRoot[] }
    return { node: node.id, ranges: body.ranges }
  } catch (err) {
    return { node: node.id, ranges: null, error: (err as Error).message }
  }
}

/**
 * Leaderless mode: polls the ranges of `nodes` (default: every node; give the final ring's
 * members after ring changes) until every replica set agrees, or `timeoutMs` passes; returns
 * the last reports and how long it waited.
 */
export async function convergedRanges(
  cluster: ChaosCluster,
  timeoutMs = 60_000,
  nodes: () => readonly ChaosNode[] = () => cluster.nodes,
): Promise<{ reports: RangeReport[]; waitedMs: number }> {
  const started = Date.now()
  for (;;) {
    const reports = await Promise.all(nodes().map((n) => rangesOf(n)))
    const done = checkReplicaConvergence(reports).valid === true
    if (done || Date.now() - started > timeoutMs) {
      return { reports, waitedMs: Date.now() - started }
    }
    await new Promise((r) => setTimeout(r, 500))
  }
}

interface LeaderlessView {
  mode?: string
  members?: { id: string; up?: boolean; state?: string }[]
  ringVersion?: number
  handoffs?: unknown[]
}

/**
 * Leaderless mode: waits until every node answers /v1/cluster in leaderless mode, sees every
 * member up, and all hold the same ring: its members are exactly the nodes, all owners, at
 * one ring version, with no handoff in flight. Resolves with a one-line account; rejects with
 * what was still wrong.
 */
export async function waitLeaderlessUp(cluster: ChaosCluster, timeoutMs = 30_000): Promise<string> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const problems: string[] = []
    const ids = cluster.nodes
      .map((n) => n.id)
      .sort()
      .join(',')
    const versions = new Set<number>()
    for (const node of cluster.nodes) {
      let view: LeaderlessView | null = null
      try {
        const res = await fetch(`${node.url}/v1/cluster`, { signal: AbortSignal.timeout(1000) })
        view = res.ok ? ((await res.json()) as LeaderlessView) : null
      } catch {
        view = null
      }
      if (view === null) problems.push(`${node.id} does not answer`)
      else if (view.mode !== 'leaderless') problems.push(`${node.id} runs in ${view.mode} mode`)
      else {
        const down = (view.members ?? []).filter((m) => m.up !== true).map((m) => m.id)
        if (down.length > 0) problems.push(`${node.id} sees ${down.join(', ')} down`)
        const ring = (view.members ?? []).map((m) => m.id).sort()
        if (ring.join(',') !== ids) problems.push(`${node.id}'s ring is ${ring.join(',')}`)
        const moving = (view.members ?? []).filter((m) => (m.state ?? 'owner') !== 'owner')
        if (moving.length > 0 || (view.handoffs ?? []).length > 0)
          problems.push(`${node.id} shows a ring change in flight`)
        versions.add(view.ringVersion ?? 0)
      }
    }
    if (versions.size > 1) problems.push(`ring versions differ: ${[...versions].join(', ')}`)
    if (problems.length === 0) {
      return `every one of the ${cluster.nodes.length} nodes answers, sees every member up and holds the same ring (v${[...versions][0] ?? 0}: ${ids})`
    }
    if (Date.now() > deadline) throw new Error(problems.join('; '))
    await new Promise((r) => setTimeout(r, 200))
  }
}
