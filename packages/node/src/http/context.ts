import type { Sequencer, Store } from '@kvstore/storage'
import type { Replicator } from '../cluster/replicator.js'
import type { LeaderlessEngine } from '../leaderless/engine.js'
import type { NodeConfig } from '../config.js'
import type { NodeMetrics } from '../metrics.js'
import type { TlsSource } from '../security/tls.js'
import type { AuditLog } from '../security/audit.js'
import type { AuthAdmin } from '../security/auth-admin.js'
import type { AuthStore } from '../security/auth-store.js'
import type { HashLimiter } from '../security/passwords.js'
import type { TokenService } from '../security/tokens.js'
import type { AuthSync } from '../leaderless/auth-sync.js'
import type { BackupGate } from '../backup/source.js'
import type { Archiver } from '../backup/archiver.js'
import type { MembershipService } from '../membership/service.js'
import type { Shards } from '../shards/index.js'
import type { Regions } from '../regions/index.js'
import type { OutboxService } from '../outbox/index.js'
import type { Lessor } from '../leases/lessor.js'

/** Users, roles, tokens and the audit log. */
export interface Security {
  auth: AuthStore
  admin: AuthAdmin
  tokens: TokenService
  hashLimiter: HashLimiter
  audit: AuditLog
  clusterId: string
  /** Leaderless mode: the exchange of auth records between members; null otherwise. */
  sync: AuthSync | null
}

/** What the HTTP layer needs from the node. */
export interface AppContext {
  config: NodeConfig
  store: Store
  sequencer: Sequencer
  /** The replication driver in a cluster mode; null for a standalone node. */
  replicator: Replicator | null
  /** The leaderless coordinator in leaderless mode; null otherwise. */
  leaderless: LeaderlessEngine | null
  /** Membership changes in a cluster mode (GET/POST/DELETE /admin/v1/members); null standalone. */
  membership: MembershipService | null
  /** Sharding (--shard-map): what this group owns, slot moves and imports; null otherwise. */
  shards: Shards | null
  /** Regions (multi-leader): null unless started with --region. */
  regions: Regions | null
  /** Queued writes (ack=queued) in single-leader mode: the outbox and its forwarder; null otherwise. */
  outbox: OutboxService | null
  /** Leases (single-leader and standalone; node/src/leases); null in leaderless mode. */
  lessor: Lessor | null
  metrics: NodeMetrics
  /**
   * Stops the node on a failure it must not outlive: a broken invariant found while serving a
   * request crashes the node (after answering 500) rather than serving on in a state a bug made.
   */
  onFatal: (err: Error) => void
  /** The node's certificate when the client port speaks TLS; null for plaintext. */
  tls: TlsSource | null
  security: Security
  /** Backups taken at once (backupsInFlightMax), and the log archive (--archive-dir) or null. */
  backups: { gate: BackupGate; archiver: Archiver | null }
  /** Reads the certificate files again (SIGHUP); null without TLS. */
  reloadTls: (() => { notAfter: string; fingerprint256: string }) | null
  /** Software version, from package.json. */
  version: string
  startedAtMs: number
  lifecycle: Lifecycle
}

/** Readiness of the node, changed by startup and shutdown. */
export interface Lifecycle {
  ready: boolean
  shuttingDown: boolean
}

/** Parses a positive safe integer from a header or query value; null when it is not one. */
export function parsePositiveInteger(text: string): number | null {
  if (!/^[1-9][0-9]{0,15}$/.test(text)) return null
  const value = Number(text)
  return Number.isSafeInteger(value) ? value : null
}
