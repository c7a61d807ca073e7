/**
 * Checks across options: what no single option's bounds can catch, such as a cluster that
 * does not name this node, timeouts that contradict each other, or limits that do not fit.
 */
import { resolve, sep } from 'node:path'
import { configLimitProblems, formatLimitProblem, type LimitCode } from '../limits.js'
import { clusterOf, parseMembers, resolveQuorum } from './members.js'
import { configSpec } from './spec.js'
import { queuedProblems } from './options-queued.js'
import { ConfigError, type MemberConfig, type NodeConfig, type OptionSpec } from './types.js'

/** A reason a configuration cannot be used; limit problems carry their KV_LIMIT_ code. */
export interface ConfigProblem {
  code?: LimitCode
  message: string
}

/**
 * Every problem of a parsed configuration, empty when it can be used: the checks across
 * options here, and the limits that must fit each other (limits.ts).
 */
export function configProblems(config: NodeConfig): ConfigProblem[] {
  const problems: string[] = []
  if (config.mode !== 'standalone') {
    try {
      clusterOf(config)
    } catch (err) {
      if (err instanceof ConfigError) problems.push(err.message)
      else throw err
    }
  }
  if (config.electionTimeoutMs < 2 * config.heartbeatIntervalMs) {
    problems.push(
      `electionTimeoutMs (${config.electionTimeoutMs}) must be at least twice heartbeatIntervalMs (${config.heartbeatIntervalMs}), or followers would call elections between heartbeats`,
    )
  }
  if (config.mode === 'leaderless') problems.push(...leaderlessProblems(config))
  if ((config.shardMap === undefined) !== (config.shardGroup === undefined)) {
    problems.push('--shard-map and --shard-group go together: give both, or neither')
  } else if (config.shardMap !== undefined && config.mode !== 'single-leader') {
    problems.push(
      `sharding (--shard-map) needs single-leader groups; this node's mode is ${config.mode}`,
    )
  }
  if ((config.region === undefined) !== (config.regions === undefined)) {
    problems.push('--region and --regions go together: give both, or neither')
  } else if (config.region !== undefined) {
    if (config.mode !== 'single-leader')
      problems.push(
        `regions (--region) need single-leader mode; this node's mode is ${config.mode}`,
      )
    if (config.shardMap !== undefined)
      problems.push('regions (--region) and sharding (--shard-map) cannot be combined yet')
    if (!/^[a-z][a-z0-9-]{0,31}$/.test(config.region))
      problems.push(
        `--region ${JSON.stringify(config.region)} is not a region id (a lowercase letter, then letters, digits or -, at most 32)`,
      )
  }
  if (config.unsafeRegionSkipConflictRecord && config.region === undefined) {
    problems.push(
      '--unsafe-region-skip-conflict-record needs --region (it breaks the conflict record)',
    )
  }
  if (config.join && config.mode === 'standalone') {
    problems.push('--join needs a cluster mode (--members, --mode single-leader or leaderless)')
  }
  if (config.logRetentionEntriesMax < config.logRetentionEntries) {
    problems.push(
      `logRetentionEntriesMax (${config.logRetentionEntriesMax}) must be at least logRetentionEntries (${config.logRetentionEntries})`,
    )
  }
  problems.push(...securityProblems(config))
  problems.push(...archiveProblems(config))
  problems.push(...queuedProblems(config))
  if (config.unsafeNoFencing && config.mode !== 'single-leader') {
    problems.push(`--unsafe-no-fencing needs --mode single-leader (fencing is single-leader's)`)
  }
  if (config.unsafeShardMoveWithoutFence && config.shardMap === undefined) {
    problems.push('--unsafe-shard-move-without-fence needs --shard-map (it breaks slot moves)')
  }
  if (config.unsafeConcurrentMembershipChanges && config.mode !== 'single-leader') {
    problems.push(
      `--unsafe-concurrent-membership-changes needs --mode single-leader (the log's configuration changes are single-leader's)`,
    )
  }
  return [
    ...problems.map((message) => ({ message })),
    ...configLimitProblems(config).map((problem) => ({
      code: problem.code,
      message: formatLimitProblem(problem),
    })),
  ]
}

/** The archive must live apart from the data directory (a restore needs it when that is gone). */
function archiveProblems(config: NodeConfig): string[] {
  if (config.archiveDir === undefined) return []
  if (config.archiveDir === '') return ['--archive-dir must name a directory']
  const archive = resolve(config.archiveDir)
  const data = resolve(config.dataDir)
  const inside = (a: string, b: string) => a === b || a.startsWith(b.endsWith(sep) ? b : b + sep)
  if (inside(archive, data) || inside(data, archive)) {
    return [
      `--archive-dir (${archive}) must be outside the data directory (${data}) and not contain it: the archive must outlive the data directory`,
    ]
  }
  return []
}

function leaderlessProblems(config: NodeConfig): string[] {
  const problems: string[] = []
  let members = 0
  try {
    members = clusterOf(config).members.length
  } catch {
    return problems // reported by clusterOf already
  }
  // A joining member's --members names only some seeds and itself: the ring it takes from
  // them says how many members there are.
  if (config.replicas > members && !config.join) {
    problems.push(
      `replicas (${config.replicas}) must be at most the number of members (${members})`,
    )
  }
  for (const [name, value] of [
    ['defaultW', config.defaultW],
    ['defaultR', config.defaultR],
  ] as const) {
    try {
      resolveQuorum(
        value,
        config.join ? config.replicas : Math.min(config.replicas, Math.max(members, 1)),
        name,
      )
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

/** The unsafe switches (`unsafe` rows of the option table) that this configuration turns on. */
export function unsafeOptionsOn(config: NodeConfig): OptionSpec[] {
  return configSpec.filter((spec) => spec.unsafe === true && config[spec.key] === true)
}
