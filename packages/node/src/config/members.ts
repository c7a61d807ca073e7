/** The cluster's members: parsing --members, resolving this node and its leader, and W and R. */
import { memberIdBytesMax } from '../limits.js'
import { ConfigError, type ClusterConfig, type MemberConfig, type NodeConfig } from './types.js'

const memberIdPattern = new RegExp(`^[A-Za-z0-9][A-Za-z0-9._-]{0,${memberIdBytesMax - 1}}$`)

function checkUrl(url: string, what: string): URL {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    throw new ConfigError(`${what} ${JSON.stringify(url)} is not a URL`)
  }
  if (
    (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') ||
    parsed.port === '' ||
    parsed.pathname !== '/' ||
    parsed.search !== ''
  ) {
    throw new ConfigError(`${what} ${JSON.stringify(url)} must look like https://host:port`)
  }
  return parsed
}

/**
 * Checks one member's id and URLs (as --members and POST /admin/v1/members give them) and
 * returns them with the URLs normalized to their origin; throws ConfigError.
 */
export function checkMember(member: MemberConfig): MemberConfig {
  if (!memberIdPattern.test(member.id)) {
    throw new ConfigError(
      `member id ${JSON.stringify(member.id)} must be 1-${memberIdBytesMax} letters, digits, '.', '_' or '-'`,
    )
  }
  const client = checkUrl(member.clientUrl, `client URL of ${member.id}`)
  const peer = checkUrl(member.peerUrl, `peer URL of ${member.id}`)
  return { id: member.id, clientUrl: client.origin, peerUrl: peer.origin }
}

/** Parses --members: compact `id@clientURL@peerURL,...` or a JSON list. */
export function parseMembers(text: string): MemberConfig[] {
  const trimmed = text.trim()
  let members: MemberConfig[]
  if (trimmed.startsWith('[')) {
    let parsed: unknown
    try {
      parsed = JSON.parse(trimmed)
    } catch (err) {
      throw new ConfigError(`--members is not valid JSON: ${(err as Error).message}`)
    }
    if (!Array.isArray(parsed)) throw new ConfigError('--members JSON must be a list')
    members = parsed.map((m: unknown) => {
      const member = m as Partial<MemberConfig>
      if (
        typeof member?.id !== 'string' ||
        typeof member.clientUrl !== 'string' ||
        typeof member.peerUrl !== 'string'
      ) {
        throw new ConfigError('each member needs string id, clientUrl and peerUrl')
      }
      return { id: member.id, clientUrl: member.clientUrl, peerUrl: member.peerUrl }
    })
  } else {
    members = trimmed
      .split(',')
      .filter((part) => part.trim() !== '')
      .map((part) => {
        const pieces = part.trim().split('@')
        if (pieces.length !== 3) {
          throw new ConfigError(`member ${JSON.stringify(part)} must be id@clientURL@peerURL`)
        }
        const [id, clientUrl, peerUrl] = pieces as [string, string, string]
        return { id, clientUrl, peerUrl }
      })
  }
  if (members.length === 0) throw new ConfigError('--members lists no member')
  const seen = new Set<string>()
  for (const member of members) {
    const checked = checkMember(member)
    member.clientUrl = checked.clientUrl
    member.peerUrl = checked.peerUrl
    for (const key of [`id:${member.id}`, `url:${member.clientUrl}`, `url:${member.peerUrl}`]) {
      if (seen.has(key))
        throw new ConfigError(`--members repeats ${key.slice(key.indexOf(':') + 1)}`)
      seen.add(key)
    }
  }
  return members
}

/** Resolves the cluster of a configuration in a cluster mode; throws ConfigError on misfit. */
export function clusterOf(config: NodeConfig): ClusterConfig {
  if (config.mode === 'standalone') throw new ConfigError('standalone mode has no cluster')
  if (config.members === undefined) throw new ConfigError(`--mode ${config.mode} needs --members`)
  const members = parseMembers(config.members)
  const self = members.find((m) => m.id === config.nodeId)
  if (!self) {
    throw new ConfigError(
      `this node's id ${JSON.stringify(config.nodeId)} is not among --members (${members.map((m) => m.id).join(', ')})`,
    )
  }
  const leaderId = config.leader ?? (members[0] as MemberConfig).id
  if (!members.some((m) => m.id === leaderId)) {
    throw new ConfigError(`--leader ${JSON.stringify(leaderId)} is not among --members`)
  }
  return { mode: config.mode, self, members, leaderId }
}

/** Resolves a `w` or `r` setting (quorum, all or a number) against N; throws on a bad one. */
export function resolveQuorum(text: string, replicas: number, name: string): number {
  if (text === 'quorum') return Math.floor(replicas / 2) + 1
  if (text === 'all') return replicas
  if (/^[0-9]{1,4}$/.test(text)) {
    const n = Number(text)
    if (n >= 1 && n <= replicas) return n
  }
  throw new ConfigError(
    `${name} must be quorum, all or a number from 1 to ${replicas} (the replicas); got ${JSON.stringify(text)}`,
  )
}
