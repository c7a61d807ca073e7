/**
 * Checks across options: what no single option's bounds can catch, such as a cluster that
 * does not name this node, timeouts that contradict each other, or limits that do not fit.
 */
import { frameLimits, leaderlessLimits } from '@kvstore/protocol'
import { checkLimits } from '@kvstore/protocol/limits'
import { largestEntryBytes, replicationFrameBytesMax } from '../limits.js'
import { clusterOf, parseMembers, resolveQuorum } from './members.js'
import { ConfigError, type MemberConfig, type NodeConfig } from './types.js'

/** Every problem of a parsed configuration, empty when it can be used. */
export function configProblems(result: NodeConfig): string[] {
  const problems = checkLimits(result)
  if (result.mode !== 'standalone') {
    try {
      clusterOf(result)
    } catch (err) {
      if (err instanceof ConfigError) problems.push(err.message)
      else throw err
    }
  }
  if (
    result.mode !== 'standalone' &&
    replicationFrameBytesMax(result) > frameLimits.frameBytesMax
  ) {
    problems.push(
      `replication frames must carry the largest write: replicationAppendBytesMax (${result.replicationAppendBytesMax}) plus the largest entry (valueBytesMax + keyBytesMax, or requestBodyBytesMax: ${largestEntryBytes(result)}) must stay under ${frameLimits.frameBytesMax} bytes`,
    )
  }
  if (result.electionTimeoutMs < 2 * result.heartbeatIntervalMs) {
    problems.push(
      `electionTimeoutMs (${result.electionTimeoutMs}) must be at least twice heartbeatIntervalMs (${result.heartbeatIntervalMs}), or followers would call elections between heartbeats`,
    )
  }
  if (result.mode === 'leaderless') problems.push(...leaderlessProblems(result))
  if (result.logRetentionEntriesMax < result.logRetentionEntries) {
    problems.push(
      `logRetentionEntriesMax (${result.logRetentionEntriesMax}) must be at least logRetentionEntries (${result.logRetentionEntries})`,
    )
  }
  if (result.writeQueueBytesMax < result.requestBodyBytesMax) {
    problems.push(
      `writeQueueBytesMax (${result.writeQueueBytesMax}) must be at least requestBodyBytesMax (${result.requestBodyBytesMax}), or the largest write could never be queued`,
    )
  }
  problems.push(...securityProblems(result))
  if (result.inflightBodyBytesMax < result.requestBodyBytesMax) {
    problems.push(
      `inflightBodyBytesMax (${result.inflightBodyBytesMax}) must be at least requestBodyBytesMax (${result.requestBodyBytesMax}), or the largest request could never be taken`,
    )
  }
  return problems
}

function leaderlessProblems(config: NodeConfig): string[] {
  const problems: string[] = []
  let members = 0
  try {
    members = clusterOf(config).members.length
  } catch {
    return problems // reported by clusterOf already
  }
  if (config.replicas > members) {
    problems.push(
      `replicas (${config.replicas}) must be at most the number of members (${members})`,
    )
  }
  for (const [name, value] of [
    ['defaultW', config.defaultW],
    ['defaultR', config.defaultR],
  ] as const) {
    try {
      resolveQuorum(value, Math.min(config.replicas, Math.max(members, 1)), name)
    } catch (err) {
      problems.push((err as Error).message)
    }
  }
  const needed = config.hintWindowMs + 2 * config.antiEntropyIntervalMs
  if (config.tombstoneGcMs <= needed) {
    problems.push(
      `tombstoneGcMs (${config.tombstoneGcMs}) must exceed hintWindowMs plus two antiEntropyIntervalMs (${needed}), or a hint older than a delete could arrive after the tombstone is collected and bring the deleted value back`,
    )
  }
  // A key's record (all its siblings) must fit in one peer message.
  const recordBytesMax = config.siblingsMax * (config.valueBytesMax + 256) + 64 * 1024
  if (recordBytesMax > leaderlessLimits.messageBytesMax) {
    problems.push(
      `siblingsMax (${config.siblingsMax}) values of valueBytesMax (${config.valueBytesMax}) bytes must fit in one peer message of ${leaderlessLimits.messageBytesMax} bytes; lower one of them`,
    )
  }
  if (config.siblingsWarn > config.siblingsMax) {
    problems.push(
      `siblingsWarn (${config.siblingsWarn}) must be at most siblingsMax (${config.siblingsMax})`,
    )
  }
  return problems
}

/** True for an address that only this machine can reach. */
export function isLoopbackHost(host: string): boolean {
  const h = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h)
}

/** True when this node serves its client port over TLS (it has a certificate). */
export function clientTlsOn(config: NodeConfig): boolean {
  return config.certFile !== undefined
}

/** True when members talk mutual TLS (every cluster mode, unless the unsafe switch is on). */
export function peerTlsOn(config: NodeConfig): boolean {
  return config.mode !== 'standalone' && !config.unsafePlaintextPeers
}

function securityProblems(config: NodeConfig): string[] {
  const problems: string[] = []
  const given = [config.certFile, config.keyFile].filter((f) => f !== undefined).length
  if (given === 1)
    problems.push('--cert-file and --key-file go together: give both, or --certs-dir')
  if (peerTlsOn(config)) {
    if (config.certFile === undefined || config.caFile === undefined) {
      problems.push(
        `--mode ${config.mode} needs certificates: members talk mutual TLS. Make them with \`kv certs init --dir certs --members <ids>\` and pass --certs-dir certs (or --cert-file, --key-file and --ca-file)`,
      )
    }
  }
  if (config.unsafePlaintextPeers) {
    if (config.mode === 'standalone') problems.push('--unsafe-plaintext-peers needs a cluster mode')
    else if (!isLoopbackHost(config.host)) {
      problems.push(
        `--unsafe-plaintext-peers is refused on ${config.host}: plaintext peer ports are for tests on loopback only`,
      )
    }
  }
  if (!clientTlsOn(config) && !config.insecure && !isLoopbackHost(config.host)) {
    problems.push(
      `refusing to serve plaintext HTTP on ${config.host}: give the node a certificate (--certs-dir, or --cert-file and --key-file), listen on loopback, or pass --insecure if you really mean it`,
    )
  }
  if (config.mode !== 'standalone' && config.members !== undefined) {
    let members: MemberConfig[] = []
    try {
      members = parseMembers(config.members)
    } catch {
      return problems // reported by clusterOf
    }
    const clientScheme = clientTlsOn(config) ? 'https:' : 'http:'
    const peerScheme = peerTlsOn(config) ? 'https:' : 'http:'
    for (const m of members) {
      if (new URL(m.clientUrl).protocol !== clientScheme) {
        problems.push(
          `client URL of ${m.id} (${m.clientUrl}) must start with ${clientScheme}// since this node ${clientTlsOn(config) ? 'serves TLS' : 'has no certificate'}`,
        )
      }
      if (new URL(m.peerUrl).protocol !== peerScheme) {
        problems.push(
          `peer URL of ${m.id} (${m.peerUrl}) must start with ${peerScheme}// since members talk ${peerTlsOn(config) ? 'mutual TLS' : 'plaintext (unsafe)'}`,
        )
      }
    }
  }
  return problems
}
