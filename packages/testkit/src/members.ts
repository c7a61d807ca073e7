/** What both cluster launchers share: members on free loopback ports, and how nodes start. */
import { join } from 'node:path'
import { freePort } from '@kvstore/chaos'
import type { NodeProcess } from './node-process.js'
import { nodeSecurity, type NodeSecurity } from './security.js'

export interface ClusterMember {
  id: string
  /** Client URL (HTTP API). */
  url: string
  /** Peer URL (node-to-node). */
  peerUrl: string
  dataDir: string
  /** The running process; null while stopped. */
  process: NodeProcess | null
}

/** How a cluster launcher runs its nodes; tests take the defaults. */
export interface ClusterOptions {
  /** How the nodes are secured; the one set by useNodeSecurity when omitted. */
  security?: NodeSecurity
  /** Parent of the members' data directories; a fresh temporary one when omitted. */
  dir?: string
  /** --log-level of every node; KV_TEST_LOG_LEVEL or info by default. */
  logLevel?: string
  /**
   * Keep every node's log lines (default true). Off (a benchmark), nodes count as started once
   * GET /ready answers, and their output is not read at all.
   */
  keepLogs?: boolean
  /** Pass the nodes' stderr through to this process's. */
  inheritStderr?: boolean
}

/** Members n1..n`size`, each with a client and a peer port, under `dir`. */
export async function newMembers(
  size: number,
  dir: string,
  security: NodeSecurity,
): Promise<ClusterMember[]> {
  const members: ClusterMember[] = []
  for (let i = 1; i <= size; i++) {
    members.push({
      id: `n${i}`,
      url: `${security.scheme}://127.0.0.1:${await freePort()}`,
      peerUrl: `${security.scheme}://127.0.0.1:${await freePort()}`,
      dataDir: join(dir, `n${i}`),
      process: null,
    })
  }
  return members
}

/** `--members` as every node gets it: id@clientURL@peerURL, comma-separated. */
export function membersFlag(members: readonly ClusterMember[]): string {
  return members.map((m) => `${m.id}@${m.url}@${m.peerUrl}`).join(',')
}

export function securityOf(options: ClusterOptions): NodeSecurity {
  return options.security ?? nodeSecurity()
}

/** A GET answered with JSON, or null when it fails or does not answer within `timeoutMs`. */
export async function getJson<T>(url: string, timeoutMs = 1000): Promise<T | null> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) })
    if (!res.ok) {
      await res.arrayBuffer()
      return null
    }
    return (await res.json()) as T
  } catch {
    return null
  }
}

/** The last log lines of `members`, for a failure message. */
export function lastLogs(members: readonly ClusterMember[], lines = 40): string {
  return members
    .map(
      (m) =>
        `${m.id}:\n${(m.process?.logs ?? [])
          .slice(-lines)
          .map((l) => JSON.stringify(l))
          .join('\n')}`,
    )
    .join('\n')
}
