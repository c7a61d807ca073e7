/**
 * One kv-node process for a test or benchmark (the built dist, exactly as a user runs it), on
 * the chaos suite's launcher.
 */
import { fileURLToPath } from 'node:url'
import { startKvNode, type KvNodeProcess } from '@kvstore/chaos/node-process'
import { nodeSecurity, type NodeSecurity } from './security.js'

export type NodeProcess = KvNodeProcess

/** The built `kv` and `kv-cluster` commands of the cli package (kv-node: kvNodeBin). */
export const kvBin = fileURLToPath(new URL('../../cli/dist/kv.js', import.meta.url))
export const kvClusterBin = fileURLToPath(new URL('../../cli/dist/kv-cluster.js', import.meta.url))

export interface NodeProcessOptions {
  /** false: add no certificate flags (the test gives its own, or runs plaintext). */
  tls?: boolean
  /** How the node is secured; the one set by useNodeSecurity when omitted. */
  security?: NodeSecurity
  /** The node has peers (passed to `security.nodeArgs`). */
  cluster?: boolean
  /** --log-level; KV_TEST_LOG_LEVEL or info by default. */
  logLevel?: string
  /** Keep every log line in `logs` (default true); a benchmark turns it off. */
  keepLogs?: boolean
  /** Pass the node's stderr through (a benchmark does); collected for errors by default. */
  inheritStderr?: boolean
  /** The client URL when known up front: started means GET /ready answers (see startKvNode). */
  readyUrl?: string
}

/** Flags certificates come from: a test that gives one of them secures the node itself. */
const certificateFlags = ['--certs-dir', '--cert-file']

/**
 * Spawns kv-node on a free port (`--port 0`, unless `args` name one) and resolves once it
 * serves. Nodes run as shipped, with their certificate (TLS on the client port, mutual TLS
 * between members) and auth on, unless `args` give other certificate flags or `tls` is false.
 */
export async function startNodeProcess(
  args: string[],
  timeoutMs = 15_000,
  options: NodeProcessOptions = {},
): Promise<NodeProcess> {
  const ownCerts = options.tls === false || args.some((a) => certificateFlags.includes(a))
  const security = ownCerts ? [] : (options.security ?? nodeSecurity()).nodeArgs(!!options.cluster)
  return startKvNode({
    args: [
      '--port',
      '0',
      '--log-level',
      options.logLevel ?? process.env.KV_TEST_LOG_LEVEL ?? 'info',
      ...security,
      ...args,
    ],
    timeoutMs,
    ...(options.keepLogs !== undefined ? { keepLogs: options.keepLogs } : {}),
    ...(options.inheritStderr !== undefined ? { inheritStderr: options.inheritStderr } : {}),
    ...(options.readyUrl !== undefined ? { readyUrl: options.readyUrl } : {}),
  })
}

/** SIGCONT (a paused process cannot exit), SIGTERM, then SIGKILL after `graceMs`; the exit code. */
export async function terminate(node: NodeProcess, graceMs = 15_000): Promise<number | null> {
  if (node.running()) {
    node.child.kill('SIGCONT')
    node.child.kill('SIGTERM')
  }
  const timer = setTimeout(() => node.child.kill('SIGKILL'), graceMs)
  const { code } = await node.exited
  clearTimeout(timer)
  return code
}
