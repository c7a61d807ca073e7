/**
 * Node configuration. One table (`configSpec`) defines every option: its flag, environment
 * variable, type, default, bounds and description. Parsing, validation, `kv-node --help` and
 * the README's configuration table all come from it.
 *
 * Precedence, highest first: command-line flags, environment variables, the JSON config file
 * (`--config`), defaults.
 */
import { readFileSync } from 'node:fs'
import { frameLimits, leaderlessLimits } from '@kvstore/protocol'
import { checkLimits, limitsCeiling, limitsDefault } from '@kvstore/protocol/limits'

export const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
export type LogLevel = (typeof logLevels)[number]

export const clusterModes = ['standalone', 'single-leader', 'leaderless'] as const
export type ClusterMode = (typeof clusterModes)[number]

export const ackModes = ['async', 'quorum', 'all'] as const

export const conflictModes = ['siblings', 'lww'] as const
export type ConflictMode = (typeof conflictModes)[number]
export type AckMode = (typeof ackModes)[number]

/** One member of a cluster, as the configuration names it. */
export interface MemberConfig {
  id: string
  /** Where clients reach it (HTTP/1.1 and h2c). */
  clientUrl: string
  /** Where peers reach it (h2c replication streams). */
  peerUrl: string
}

export interface NodeConfig {
  nodeId: string
  clusterId: string | undefined
  dataDir: string
  host: string
  port: number
  logLevel: LogLevel
  fsync: boolean
  groupCommitWritesMax: number
  groupCommitBytesMax: number
  writeQueueWritesMax: number
  writeQueueBytesMax: number
  keyBytesMax: number
  valueBytesMax: number
  batchOpsMax: number
  requestBodyBytesMax: number
  listLimitMax: number
  listLimitDefault: number
  listBytesMax: number
  requestIdBytesMax: number
  requestTimeoutMs: number
  keepAliveTimeoutMs: number
  connectionsMax: number
  h2StreamsMax: number
  shutdownTimeoutMs: number
  mode: ClusterMode
  /** Members in compact form (id@clientURL@peerURL, comma-separated) or JSON. */
  members: string | undefined
  leader: string | undefined
  defaultAck: AckMode
  ackTimeoutMs: number
  readWaitMs: number
  heartbeatIntervalMs: number
  electionTimeoutMs: number
  logRetentionEntries: number
  logRetentionEntriesMax: number
  replicationInflightBytesMax: number
  replicationAppendBytesMax: number
  requestIdRetentionMs: number
  rollbackEntriesMax: number
  leveldbCacheBytes: number
  leveldbWriteBufferBytes: number
  readCacheBytes: number
  replicas: number
  /** `quorum`, `all` or a number of replicas, as text. */
  defaultW: string
  defaultR: string
  conflicts: ConflictMode
  vnodes: number
  quorumTimeoutMs: number
  hintWindowMs: number
  hintsMax: number
  antiEntropyIntervalMs: number
  tombstoneGcMs: number
  siblingsMax: number
  siblingsWarn: number
  certsDir: string | undefined
  certFile: string | undefined
  keyFile: string | undefined
  caFile: string | undefined
  insecure: boolean
  unsafePlaintextPeers: boolean
  auth: boolean
  rootPasswordFile: string | undefined
  authSecretFile: string | undefined
  tokenTtlMs: number
  authUsersMax: number
  authRolesMax: number
  authGrantsMax: number
  auditLog: string
  inflightBodyBytesMax: number
  connectionsPerIpMax: number
  headersTimeoutMs: number
  tlsHandshakeTimeoutMs: number
  h2ResetsPerSecondMax: number
  rateLimitPerSecond: number
  rateLimitBurst: number
  loginsInFlightMax: number
}

type Kind = 'string' | 'integer' | 'bytes' | 'boolean' | 'enum'

export interface OptionSpec {
  key: keyof NodeConfig
  flag: string
  env: string
  kind: Kind
  /** Default value; a function of the other options for derived defaults. */
  default: string | number | boolean | undefined | ((config: Partial<NodeConfig>) => unknown)
  /** How the default reads in --help and the README. */
  defaultText?: string
  min?: number
  max?: number
  values?: readonly string[]
  group: 'node' | 'security' | 'cluster' | 'leaderless' | 'storage' | 'limits' | 'http'
  description: string
}

const KiB = 1024
const MiB = 1024 * KiB

export const configSpec: readonly OptionSpec[] = [
  {
    key: 'nodeId',
    flag: '--id',
    env: 'KV_NODE_ID',
    kind: 'string',
    default: 'n1',
    group: 'node',
    description:
      'Id of this node. Stored in the data directory on first start; a directory created by another id is refused.',
  },
  {
    key: 'clusterId',
    flag: '--cluster-id',
    env: 'KV_CLUSTER_ID',
    kind: 'string',
    default: undefined,
    defaultText: 'random, on first start',
    group: 'node',
    description: 'Id of the cluster; when given, a data directory of another cluster is refused.',
  },
  {
    key: 'certsDir',
    flag: '--certs-dir',
    env: 'KV_CERTS_DIR',
    kind: 'string',
    default: undefined,
    defaultText: 'none',
    group: 'security',
    description:
      'Directory made by `kv certs init`: the node takes ca.crt, <id>.crt and <id>.key from it (unless --ca-file, --cert-file and --key-file say otherwise), and root.password when it starts a new cluster.',
  },
  {
    key: 'certFile',
    flag: '--cert-file',
    env: 'KV_CERT_FILE',
    kind: 'string',
    default: (c) =>
      c.certsDir === undefined ? undefined : `${c.certsDir}/${c.nodeId ?? 'n1'}.crt`,
    defaultText: '<certs-dir>/<id>.crt',
    group: 'security',
    description:
      "This member's certificate (PEM), naming it as kv://<cluster-id>/member/<id>. Served on the client port (HTTPS) and presented to peers (mutual TLS). Reloaded on SIGHUP.",
  },
  {
    key: 'keyFile',
    flag: '--key-file',
    env: 'KV_KEY_FILE',
    kind: 'string',
    default: (c) =>
      c.certsDir === undefined ? undefined : `${c.certsDir}/${c.nodeId ?? 'n1'}.key`,
    defaultText: '<certs-dir>/<id>.key',
    group: 'security',
    description: 'The private key of --cert-file (PEM). Reloaded on SIGHUP.',
  },
  {
    key: 'caFile',
    flag: '--ca-file',
    env: 'KV_CA_FILE',
    kind: 'string',
    default: (c) => (c.certsDir === undefined ? undefined : `${c.certsDir}/ca.crt`),
    defaultText: '<certs-dir>/ca.crt',
    group: 'security',
    description:
      "The cluster's CA (PEM): peers must present a certificate it signed, and so must clients that log in with a certificate. Reloaded on SIGHUP.",
  },
  {
    key: 'insecure',
    flag: '--insecure',
    env: 'KV_INSECURE',
    kind: 'boolean',
    default: false,
    group: 'security',
    description:
      'INSECURE: serve the client port in plaintext HTTP on an address other than loopback. Without it a node with no certificate only listens on loopback. Anyone on the network can then read tokens and passwords off the wire.',
  },
  {
    key: 'unsafePlaintextPeers',
    flag: '--unsafe-plaintext-peers',
    env: 'KV_UNSAFE_PLAINTEXT_PEERS',
    kind: 'boolean',
    default: false,
    group: 'security',
    description:
      'UNSAFE, for tests and benchmarks only: members talk cleartext HTTP/2 without certificates, and anyone who reaches a peer port can rewrite committed data. Refused on an address other than loopback.',
  },
  {
    key: 'auth',
    flag: '--auth',
    env: 'KV_AUTH',
    kind: 'boolean',
    default: true,
    group: 'security',
    description:
      'Whether a new cluster starts with authentication on. Read only when the cluster is created; afterwards `kv auth enable|disable` decides, for every member at once.',
  },
  {
    key: 'rootPasswordFile',
    flag: '--root-password-file',
    env: 'KV_ROOT_PASSWORD_FILE',
    kind: 'string',
    default: (c) => (c.certsDir === undefined ? undefined : `${c.certsDir}/root.password`),
    defaultText: '<certs-dir>/root.password',
    group: 'security',
    description:
      'When this node creates a new cluster, the password of its root user is read from this file. Without one, a random password is written to <data-dir>/root.password (mode 0600) and its path is logged once.',
  },
  {
    key: 'authSecretFile',
    flag: '--auth-secret-file',
    env: 'KV_AUTH_SECRET_FILE',
    kind: 'string',
    default: (c) => (c.certsDir === undefined ? undefined : `${c.certsDir}/auth.secret`),
    defaultText: '<certs-dir>/auth.secret',
    group: 'security',
    description:
      'Leaderless mode: a secret every member holds (kv certs init makes it). A new cluster derives its first token signing key from it, so that members agree on it from their first start; without one each member draws its own, and tokens work everywhere only once members have exchanged their records (a second).',
  },
  {
    key: 'tokenTtlMs',
    flag: '--token-ttl-ms',
    env: 'KV_TOKEN_TTL_MS',
    kind: 'integer',
    default: 600_000,
    min: 10_000,
    max: 86_400_000,
    group: 'security',
    description:
      'How long a token from POST /v1/auth/token is valid. A token also stops working at once when its user is deleted, gets a new password or is revoked.',
  },
  {
    key: 'authUsersMax',
    flag: '--auth-users-max',
    env: 'KV_AUTH_USERS_MAX',
    kind: 'integer',
    default: 10_000,
    min: 1,
    max: 1_000_000,
    group: 'security',
    description: 'Most users in the auth store (KV_ERR_AUTH_LIMIT).',
  },
  {
    key: 'authRolesMax',
    flag: '--auth-roles-max',
    env: 'KV_AUTH_ROLES_MAX',
    kind: 'integer',
    default: 1000,
    min: 2,
    max: 100_000,
    group: 'security',
    description: 'Most roles in the auth store (KV_ERR_AUTH_LIMIT).',
  },
  {
    key: 'authGrantsMax',
    flag: '--auth-grants-max',
    env: 'KV_AUTH_GRANTS_MAX',
    kind: 'integer',
    default: 256,
    min: 1,
    max: 10_000,
    group: 'security',
    description: 'Most prefix grants on one role, and most roles on one user (KV_ERR_AUTH_LIMIT).',
  },
  {
    key: 'loginsInFlightMax',
    flag: '--logins-in-flight-max',
    env: 'KV_LOGINS_IN_FLIGHT_MAX',
    kind: 'integer',
    default: 2,
    min: 1,
    max: 64,
    group: 'security',
    description:
      'Password checks (scrypt, memory-hard and slow on purpose) running at once; more logins wait briefly, then get KV_ERR_OVERLOADED. Keeps a login storm from starving disk I/O, which shares their thread pool.',
  },
  {
    key: 'auditLog',
    flag: '--audit-log',
    env: 'KV_AUDIT_LOG',
    kind: 'string',
    default: (c) => `${c.dataDir ?? `./data/${c.nodeId ?? 'n1'}`}/audit.log`,
    defaultText: '<data-dir>/audit.log',
    group: 'security',
    description:
      'Where the audit log goes (JSON lines: every login, auth change and admin call, with who, what, from where and the result): a file path (reopened on SIGHUP, for log rotation), stdout, stderr, or off.',
  },
  {
    key: 'dataDir',
    flag: '--data-dir',
    env: 'KV_DATA_DIR',
    kind: 'string',
    default: (c) => `./data/${c.nodeId ?? 'n1'}`,
    defaultText: './data/<id>',
    group: 'node',
    description: 'Directory of the LevelDB database (write-ahead log, state, metadata).',
  },
  {
    key: 'host',
    flag: '--host',
    env: 'KV_HOST',
    kind: 'string',
    default: '127.0.0.1',
    group: 'node',
    description: 'Address to listen on. Use 0.0.0.0 to accept connections from other machines.',
  },
  {
    key: 'port',
    flag: '--port',
    env: 'KV_PORT',
    kind: 'integer',
    default: 7001,
    min: 0,
    max: 65535,
    group: 'node',
    description: 'Client API port. It speaks HTTP/1.1 and cleartext HTTP/2 (h2c, prior knowledge).',
  },
  {
    key: 'logLevel',
    flag: '--log-level',
    env: 'KV_LOG_LEVEL',
    kind: 'enum',
    values: logLevels,
    default: 'info',
    group: 'node',
    description: 'Log level of the JSON logs on stdout.',
  },
  {
    key: 'fsync',
    flag: '--fsync',
    env: 'KV_FSYNC',
    kind: 'boolean',
    default: true,
    group: 'storage',
    description:
      'Fsync each batch before acknowledging its writes. With false, an acknowledged write survives a process crash but not a power loss.',
  },
  {
    key: 'groupCommitWritesMax',
    flag: '--group-commit-writes-max',
    env: 'KV_GROUP_COMMIT_WRITES_MAX',
    kind: 'integer',
    default: limitsDefault.groupCommitWritesMax,
    min: 1,
    max: limitsCeiling.groupCommitWritesMax,
    group: 'storage',
    description:
      'Most writes that share one LevelDB batch and one fsync. 1 turns group commit off (one fsync per write).',
  },
  {
    key: 'groupCommitBytesMax',
    flag: '--group-commit-bytes-max',
    env: 'KV_GROUP_COMMIT_BYTES_MAX',
    kind: 'bytes',
    default: limitsDefault.groupCommitBytesMax,
    min: 1,
    max: limitsCeiling.groupCommitBytesMax,
    group: 'storage',
    description: 'Most bytes of log entries in one batch.',
  },
  {
    key: 'writeQueueWritesMax',
    flag: '--write-queue-writes-max',
    env: 'KV_WRITE_QUEUE_WRITES_MAX',
    kind: 'integer',
    default: limitsDefault.writeQueueWritesMax,
    min: 1,
    max: limitsCeiling.writeQueueWritesMax,
    group: 'storage',
    description: 'Most writes waiting for the disk; beyond it writes get KV_ERR_OVERLOADED (503).',
  },
  {
    key: 'writeQueueBytesMax',
    flag: '--write-queue-bytes-max',
    env: 'KV_WRITE_QUEUE_BYTES_MAX',
    kind: 'bytes',
    default: limitsDefault.writeQueueBytesMax,
    min: 1,
    max: limitsCeiling.writeQueueBytesMax,
    group: 'storage',
    description: 'Most bytes waiting for the disk; beyond it writes get KV_ERR_OVERLOADED (503).',
  },
  {
    key: 'readCacheBytes',
    flag: '--read-cache-bytes',
    env: 'KV_READ_CACHE_BYTES',
    kind: 'bytes',
    default: 64 * MiB,
    min: 0,
    max: 64 * 1024 * MiB,
    group: 'storage',
    description:
      'Decoded records kept in memory for reads (LRU, kept exact by every write). 0 turns it off.',
  },
  {
    key: 'leveldbCacheBytes',
    flag: '--leveldb-cache-bytes',
    env: 'KV_LEVELDB_CACHE_BYTES',
    kind: 'bytes',
    default: 64 * MiB,
    min: 0,
    max: 64 * 1024 * MiB,
    group: 'storage',
    description: 'LevelDB block cache.',
  },
  {
    key: 'leveldbWriteBufferBytes',
    flag: '--leveldb-write-buffer-bytes',
    env: 'KV_LEVELDB_WRITE_BUFFER_BYTES',
    kind: 'bytes',
    default: 16 * MiB,
    min: 64 * KiB,
    max: 1024 * MiB,
    group: 'storage',
    description:
      'LevelDB memtable size; larger absorbs write bursts, at the cost of memory and recovery time.',
  },
  {
    key: 'keyBytesMax',
    flag: '--key-bytes-max',
    env: 'KV_KEY_BYTES_MAX',
    kind: 'bytes',
    default: limitsDefault.keyBytesMax,
    min: 1,
    max: limitsCeiling.keyBytesMax,
    group: 'limits',
    description: 'Longest key, in UTF-8 bytes (KV_ERR_KEY_TOO_LARGE).',
  },
  {
    key: 'valueBytesMax',
    flag: '--value-bytes-max',
    env: 'KV_VALUE_BYTES_MAX',
    kind: 'bytes',
    default: limitsDefault.valueBytesMax,
    min: 1,
    max: limitsCeiling.valueBytesMax,
    group: 'limits',
    description: 'Largest value (KV_ERR_VALUE_TOO_LARGE).',
  },
  {
    key: 'batchOpsMax',
    flag: '--batch-ops-max',
    env: 'KV_BATCH_OPS_MAX',
    kind: 'integer',
    default: limitsDefault.batchOpsMax,
    min: 1,
    max: limitsCeiling.batchOpsMax,
    group: 'limits',
    description: 'Most operations in one batch (KV_ERR_BATCH_TOO_LARGE).',
  },
  {
    key: 'requestBodyBytesMax',
    flag: '--request-body-bytes-max',
    env: 'KV_REQUEST_BODY_BYTES_MAX',
    kind: 'bytes',
    default: limitsDefault.requestBodyBytesMax,
    min: 1,
    max: limitsCeiling.requestBodyBytesMax,
    group: 'limits',
    description:
      'Largest request body of a batch (KV_ERR_BODY_TOO_LARGE). Must be at least valueBytesMax.',
  },
  {
    key: 'listLimitMax',
    flag: '--list-limit-max',
    env: 'KV_LIST_LIMIT_MAX',
    kind: 'integer',
    default: limitsDefault.listLimitMax,
    min: 1,
    max: limitsCeiling.listLimitMax,
    group: 'limits',
    description: 'Most keys one list page may return.',
  },
  {
    key: 'listLimitDefault',
    flag: '--list-limit-default',
    env: 'KV_LIST_LIMIT_DEFAULT',
    kind: 'integer',
    default: limitsDefault.listLimitDefault,
    min: 1,
    max: limitsCeiling.listLimitMax,
    group: 'limits',
    description: 'Keys per list page when the request gives no limit.',
  },
  {
    key: 'listBytesMax',
    flag: '--list-bytes-max',
    env: 'KV_LIST_BYTES_MAX',
    kind: 'bytes',
    default: limitsDefault.listBytesMax,
    min: 1,
    max: limitsCeiling.listBytesMax,
    group: 'limits',
    description:
      'A list page stops early, with a cursor, once it holds this many bytes of keys and values.',
  },
  {
    key: 'requestIdBytesMax',
    flag: '--request-id-bytes-max',
    env: 'KV_REQUEST_ID_BYTES_MAX',
    kind: 'integer',
    default: limitsDefault.requestIdBytesMax,
    min: 1,
    max: limitsCeiling.requestIdBytesMax,
    group: 'limits',
    description: 'Longest client request id.',
  },
  {
    key: 'requestTimeoutMs',
    flag: '--request-timeout-ms',
    env: 'KV_REQUEST_TIMEOUT_MS',
    kind: 'integer',
    default: 30_000,
    min: 1000,
    max: 3_600_000,
    group: 'http',
    description:
      'Longest time to receive a whole HTTP/1.1 request (protects against slow clients).',
  },
  {
    key: 'keepAliveTimeoutMs',
    flag: '--keep-alive-timeout-ms',
    env: 'KV_KEEP_ALIVE_TIMEOUT_MS',
    kind: 'integer',
    default: 65_000,
    min: 1000,
    max: 3_600_000,
    group: 'http',
    description:
      'Idle time after which an HTTP/1.1 keep-alive connection or an HTTP/2 session is closed.',
  },
  {
    key: 'connectionsMax',
    flag: '--connections-max',
    env: 'KV_CONNECTIONS_MAX',
    kind: 'integer',
    default: 4096,
    min: 1,
    max: 1_000_000,
    group: 'http',
    description: 'Most open client connections (HTTP/1.1 and HTTP/2 together).',
  },
  {
    key: 'h2StreamsMax',
    flag: '--h2-streams-max',
    env: 'KV_H2_STREAMS_MAX',
    kind: 'integer',
    default: 256,
    min: 1,
    max: 65_535,
    group: 'http',
    description: 'Most concurrent requests on one HTTP/2 connection.',
  },
  {
    key: 'connectionsPerIpMax',
    flag: '--connections-per-ip-max',
    env: 'KV_CONNECTIONS_PER_IP_MAX',
    kind: 'integer',
    default: 512,
    min: 1,
    max: 1_000_000,
    group: 'http',
    description:
      'Most open client connections from one IP address; past it new connections from that address are closed at once (counted in kv_connections_refused_total), so one host cannot take every slot.',
  },
  {
    key: 'headersTimeoutMs',
    flag: '--headers-timeout-ms',
    env: 'KV_HEADERS_TIMEOUT_MS',
    kind: 'integer',
    default: 10_000,
    min: 100,
    max: 600_000,
    group: 'http',
    description:
      'Longest time from a new connection (or the end of the previous request) to the end of the request headers: a client that sends headers slowly (slowloris) or connects and says nothing is closed after it.',
  },
  {
    key: 'tlsHandshakeTimeoutMs',
    flag: '--tls-handshake-timeout-ms',
    env: 'KV_TLS_HANDSHAKE_TIMEOUT_MS',
    kind: 'integer',
    default: 5000,
    min: 100,
    max: 120_000,
    group: 'http',
    description:
      'Longest TLS handshake on the client and peer ports; a connection that has not finished it is closed.',
  },
  {
    key: 'h2ResetsPerSecondMax',
    flag: '--h2-resets-per-second-max',
    env: 'KV_H2_RESETS_PER_SECOND_MAX',
    kind: 'integer',
    default: 200,
    min: 1,
    max: 1_000_000,
    group: 'http',
    description:
      'HTTP/2 rapid-reset guard: a connection that cancels more streams than this in one second (averaged over a burst of twice as many) is closed with GOAWAY (counted in kv_connections_refused_total).',
  },
  {
    key: 'inflightBodyBytesMax',
    flag: '--inflight-body-bytes-max',
    env: 'KV_INFLIGHT_BODY_BYTES_MAX',
    kind: 'bytes',
    default: 64 * MiB,
    min: 1 * MiB,
    max: 64 * 1024 * MiB,
    group: 'http',
    description:
      'Most bytes of request bodies being received or waiting to be served, all connections together. A request that would pass it is refused with KV_ERR_OVERLOADED (503, Retry-After) before its body is read. Must be at least requestBodyBytesMax.',
  },
  {
    key: 'rateLimitPerSecond',
    flag: '--rate-limit-per-second',
    env: 'KV_RATE_LIMIT_PER_SECOND',
    kind: 'integer',
    default: 0,
    min: 0,
    max: 10_000_000,
    group: 'http',
    description:
      'Requests per second one user may make on this node (a token bucket; unauthenticated requests count per IP address); past it KV_ERR_RATE_LIMITED (429, Retry-After). 0 turns the limit off. A role can set a lower one for its users (kv role add NAME --rate-limit N).',
  },
  {
    key: 'rateLimitBurst',
    flag: '--rate-limit-burst',
    env: 'KV_RATE_LIMIT_BURST',
    kind: 'integer',
    default: (c) => Math.max(1, 2 * (c.rateLimitPerSecond ?? 0)),
    defaultText: 'twice --rate-limit-per-second',
    min: 1,
    max: 100_000_000,
    group: 'http',
    description: 'Requests one user may make at once after a quiet spell (the bucket size).',
  },
  {
    key: 'shutdownTimeoutMs',
    flag: '--shutdown-timeout-ms',
    env: 'KV_SHUTDOWN_TIMEOUT_MS',
    kind: 'integer',
    default: 10_000,
    min: 100,
    max: 600_000,
    group: 'node',
    description:
      'On SIGTERM or SIGINT, how long to wait for in-flight requests before closing the remaining connections. Storage is always closed cleanly.',
  },
  {
    key: 'mode',
    flag: '--mode',
    env: 'KV_MODE',
    kind: 'enum',
    values: clusterModes,
    default: (c) => (c.members === undefined ? 'standalone' : 'single-leader'),
    defaultText: 'standalone, or single-leader when --members is given',
    group: 'cluster',
    description:
      'standalone: one node on its own. single-leader: one leader takes writes and streams its log to read-only followers. leaderless: any member coordinates quorum reads and writes over a consistent-hash ring (Dynamo-style).',
  },
  {
    key: 'members',
    flag: '--members',
    env: 'KV_MEMBERS',
    kind: 'string',
    default: undefined,
    defaultText: 'none',
    group: 'cluster',
    description:
      'Every member, this node included: id@clientURL@peerURL, comma-separated (n1@http://10.0.0.1:7001@http://10.0.0.1:7101,...), or a JSON list of {id, clientUrl, peerUrl}. This node listens on the ports of its own URLs.',
  },
  {
    key: 'leader',
    flag: '--leader',
    env: 'KV_LEADER',
    kind: 'string',
    default: undefined,
    defaultText: 'the first member',
    group: 'cluster',
    description:
      'Id of the preferred leader: when no leader is known, it campaigns at once instead of waiting out an election timeout, so a new cluster elects it (after the four election timeouts a member with an empty disk abstains). Leaders are elected: any member can lead, and after a failover the new leader stays.',
  },
  {
    key: 'replicas',
    flag: '--replicas',
    env: 'KV_REPLICAS',
    kind: 'integer',
    default: 3,
    min: 1,
    max: 64,
    group: 'leaderless',
    description:
      'N: how many members hold each key (its preference list on the ring). At most the number of members.',
  },
  {
    key: 'defaultW',
    flag: '--default-w',
    env: 'KV_DEFAULT_W',
    kind: 'string',
    default: 'quorum',
    group: 'leaderless',
    description:
      'W of a write that does not choose one (w= query parameter): quorum (N/2+1), all (N), or a number from 1 to N.',
  },
  {
    key: 'defaultR',
    flag: '--default-r',
    env: 'KV_DEFAULT_R',
    kind: 'string',
    default: 'quorum',
    group: 'leaderless',
    description:
      'R of a read that does not choose one (r= query parameter): quorum, all, or a number from 1 to N. With R + W > N a read sees the latest acknowledged write.',
  },
  {
    key: 'conflicts',
    flag: '--conflicts',
    env: 'KV_CONFLICTS',
    kind: 'enum',
    values: conflictModes,
    default: 'siblings',
    group: 'leaderless',
    description:
      'siblings: concurrent writes are all kept (dotted version vectors) until a write with their context resolves them. lww: the write with the highest hybrid logical clock timestamp wins and the others are discarded (counted in kv_lww_discarded_total). Every member must use the same setting.',
  },
  {
    key: 'vnodes',
    flag: '--vnodes',
    env: 'KV_VNODES',
    kind: 'integer',
    default: 64,
    min: 1,
    max: 4096,
    group: 'leaderless',
    description: 'Points per member on the hash ring. Every member must use the same value.',
  },
  {
    key: 'quorumTimeoutMs',
    flag: '--quorum-timeout-ms',
    env: 'KV_QUORUM_TIMEOUT_MS',
    kind: 'integer',
    default: 2000,
    min: 10,
    max: 600_000,
    group: 'leaderless',
    description:
      'How long a coordinator waits for W acks or R answers before it answers KV_ERR_QUORUM_UNAVAILABLE.',
  },
  {
    key: 'hintWindowMs',
    flag: '--hint-window-ms',
    env: 'KV_HINT_WINDOW_MS',
    kind: 'integer',
    default: 10 * 60_000,
    min: 0,
    max: 7 * 24 * 3_600_000,
    group: 'leaderless',
    description:
      'Hinted handoff: no hints are stored for a member that has been down longer than this, and a hint not replayed within this long is dropped (anti-entropy repairs what it held).',
  },
  {
    key: 'hintsMax',
    flag: '--hints-max',
    env: 'KV_HINTS_MAX',
    kind: 'integer',
    default: 100_000,
    min: 0,
    max: 100_000_000,
    group: 'leaderless',
    description:
      'Most hints one member holds for others; beyond it a stand-in refuses new hints (counted in kv_hints_dropped_total).',
  },
  {
    key: 'antiEntropyIntervalMs',
    flag: '--anti-entropy-interval-ms',
    env: 'KV_ANTI_ENTROPY_INTERVAL_MS',
    kind: 'integer',
    default: 10_000,
    min: 100,
    max: 24 * 3_600_000,
    group: 'leaderless',
    description:
      'How often a member compares Merkle trees with every other member it shares ranges with, and streams the differing keys.',
  },
  {
    key: 'tombstoneGcMs',
    flag: '--tombstone-gc-ms',
    env: 'KV_TOMBSTONE_GC_MS',
    kind: 'integer',
    default: 3_600_000,
    min: 1000,
    max: 365 * 24 * 3_600_000,
    group: 'leaderless',
    description:
      'How long a delete is kept as a tombstone at least. It is collected after that only once every replica of the key confirms it holds the tombstone, so a replica that is down or cut off keeps it alive. Must exceed hint-window-ms plus two anti-entropy intervals, so that no hint older than the delete can still arrive.',
  },
  {
    key: 'siblingsMax',
    flag: '--siblings-max',
    env: 'KV_SIBLINGS_MAX',
    kind: 'integer',
    default: 32,
    min: 1,
    max: 1000,
    group: 'leaderless',
    description:
      'Most concurrent values one key may hold. A write without a context that would add one more is refused (KV_ERR_TOO_MANY_SIBLINGS); when replicas merge past it the oldest are dropped and counted (kv_siblings_pruned_total).',
  },
  {
    key: 'siblingsWarn',
    flag: '--siblings-warn',
    env: 'KV_SIBLINGS_WARN',
    kind: 'integer',
    default: 8,
    min: 1,
    max: 1000,
    group: 'leaderless',
    description:
      'A key reaching this many siblings is logged as a warning and counted (kv_sibling_warnings_total).',
  },
  {
    key: 'defaultAck',
    flag: '--default-ack',
    env: 'KV_DEFAULT_ACK',
    kind: 'enum',
    values: ackModes,
    default: 'quorum',
    group: 'cluster',
    description:
      'Durability of a write that does not choose one (ack= query parameter or kv-ack header): async (the leader has it durably), quorum (a majority does), all (every member does).',
  },
  {
    key: 'ackTimeoutMs',
    flag: '--ack-timeout-ms',
    env: 'KV_ACK_TIMEOUT_MS',
    kind: 'integer',
    default: 5000,
    min: 10,
    max: 600_000,
    group: 'cluster',
    description:
      'How long a quorum or all write waits for replicas before it answers KV_ERR_ACK_TIMEOUT (the write stays durable on the leader).',
  },
  {
    key: 'readWaitMs',
    flag: '--read-wait-ms',
    env: 'KV_READ_WAIT_MS',
    kind: 'integer',
    default: 1000,
    min: 0,
    max: 60_000,
    group: 'cluster',
    description:
      'How long a read with a session token waits for this replica to apply that far before it answers KV_ERR_REPLICA_BEHIND.',
  },
  {
    key: 'heartbeatIntervalMs',
    flag: '--heartbeat-interval-ms',
    env: 'KV_HEARTBEAT_INTERVAL_MS',
    kind: 'integer',
    default: 100,
    min: 10,
    max: 10_000,
    group: 'cluster',
    description:
      'How often the leader sends heartbeats (with the commit LSN and lag figures). One tick of the replication core.',
  },
  {
    key: 'electionTimeoutMs',
    flag: '--election-timeout-ms',
    env: 'KV_ELECTION_TIMEOUT_MS',
    kind: 'integer',
    default: 1000,
    min: 20,
    max: 60_000,
    group: 'cluster',
    description:
      'A follower that hears no leader for a random time between this and twice this starts an election; a leader that hears from no majority for this long steps down (check-quorum). At least twice --heartbeat-interval-ms.',
  },
  {
    key: 'logRetentionEntries',
    flag: '--log-retention-entries',
    env: 'KV_LOG_RETENTION_ENTRIES',
    kind: 'integer',
    default: 100_000,
    min: 0,
    max: 1_000_000_000,
    group: 'cluster',
    description:
      'Committed entries always kept in the log, and more while a connected follower still needs them, so a slow but steady follower catches up from the log instead of a snapshot.',
  },
  {
    key: 'logRetentionEntriesMax',
    flag: '--log-retention-entries-max',
    env: 'KV_LOG_RETENTION_ENTRIES_MAX',
    kind: 'integer',
    default: 2_000_000,
    min: 0,
    max: 1_000_000_000,
    group: 'cluster',
    description:
      'Most committed entries kept for lagging followers; one further behind is sent a snapshot. Bounds the disk the log takes.',
  },
  {
    key: 'replicationInflightBytesMax',
    flag: '--replication-inflight-bytes-max',
    env: 'KV_REPLICATION_INFLIGHT_BYTES_MAX',
    kind: 'bytes',
    default: 8 * MiB,
    min: 64 * KiB,
    max: 1024 * MiB,
    group: 'cluster',
    description:
      'Most bytes of entries sent to one follower and not yet acknowledged (backpressure).',
  },
  {
    key: 'replicationAppendBytesMax',
    flag: '--replication-append-bytes-max',
    env: 'KV_REPLICATION_APPEND_BYTES_MAX',
    kind: 'bytes',
    default: 1 * MiB,
    min: 4 * KiB,
    max: 64 * MiB,
    group: 'cluster',
    description:
      'Most bytes of entries in one replication frame (a larger single entry still goes alone).',
  },
  {
    key: 'requestIdRetentionMs',
    flag: '--request-id-retention-ms',
    env: 'KV_REQUEST_ID_RETENTION_MS',
    kind: 'integer',
    default: 600_000,
    min: 1000,
    max: 7 * 24 * 3_600_000,
    group: 'cluster',
    description:
      'How long a write request id is remembered: a retry within it is applied once (kv-request-id header).',
  },
  {
    key: 'rollbackEntriesMax',
    flag: '--rollback-entries-max',
    env: 'KV_ROLLBACK_ENTRIES_MAX',
    kind: 'integer',
    default: 100_000,
    min: 1,
    max: 100_000_000,
    group: 'cluster',
    description:
      'Most entries kept in the rollback record (unconfirmed writes this node dropped when a new leader did not have them; GET /admin/v1/rollbacks). The oldest go first.',
  },
]

/** A configuration that cannot be used; the message says which option and why. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'ConfigError'
  }
}

const sizeUnits: Record<string, number> = {
  '': 1,
  b: 1,
  k: KiB,
  kb: KiB,
  kib: KiB,
  m: MiB,
  mb: MiB,
  mib: MiB,
  g: 1024 * MiB,
  gb: 1024 * MiB,
  gib: 1024 * MiB,
}

function parseValue(spec: OptionSpec, raw: unknown, source: string): unknown {
  const where = `${spec.flag} (from ${source})`
  switch (spec.kind) {
    case 'string': {
      if (typeof raw !== 'string' || raw.length === 0) {
        throw new ConfigError(`${where} must be a non-empty string`)
      }
      return raw
    }
    case 'enum': {
      if (typeof raw !== 'string' || !spec.values?.includes(raw)) {
        throw new ConfigError(
          `${where} must be one of ${spec.values?.join(', ')}; got ${String(raw)}`,
        )
      }
      return raw
    }
    case 'boolean': {
      if (typeof raw === 'boolean') return raw
      const text = String(raw).toLowerCase()
      if (['true', '1', 'yes', 'on'].includes(text)) return true
      if (['false', '0', 'no', 'off'].includes(text)) return false
      throw new ConfigError(`${where} must be true or false; got ${String(raw)}`)
    }
    case 'integer':
    case 'bytes': {
      let value: number
      if (typeof raw === 'number') {
        value = raw
      } else {
        const match = /^\s*(\d+)\s*([a-zA-Z]*)\s*$/.exec(String(raw))
        const unit = match?.[2]?.toLowerCase() ?? ''
        if (!match || (spec.kind === 'integer' && unit !== '') || !(unit in sizeUnits)) {
          const hint = spec.kind === 'bytes' ? ' (a number of bytes, or with KiB, MiB or GiB)' : ''
          throw new ConfigError(`${where} must be a whole number${hint}; got ${String(raw)}`)
        }
        value = Number(match[1]) * (sizeUnits[unit] ?? 1)
      }
      if (!Number.isSafeInteger(value)) throw new ConfigError(`${where} must be a whole number`)
      if (spec.min !== undefined && value < spec.min) {
        throw new ConfigError(`${where} must be at least ${spec.min}; got ${value}`)
      }
      if (spec.max !== undefined && value > spec.max) {
        throw new ConfigError(`${where} must be at most ${spec.max}; got ${value}`)
      }
      return value
    }
  }
}

export interface ParsedArgs {
  config: NodeConfig
  help: boolean
}

/**
 * Builds the configuration from command-line arguments (without the node and script paths)
 * and the environment. Throws `ConfigError` with a precise message on any bad input.
 */
export function parseConfig(argv: readonly string[], env: NodeJS.ProcessEnv): ParsedArgs {
  const byFlag = new Map(configSpec.map((spec) => [spec.flag, spec]))
  const flags = new Map<OptionSpec, string>()
  let configFile = env.KV_CONFIG
  let help = false
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string
    if (arg === '--help' || arg === '-h') {
      help = true
      continue
    }
    const eq = arg.indexOf('=')
    const name = eq >= 0 ? arg.slice(0, eq) : arg
    let value = eq >= 0 ? arg.slice(eq + 1) : undefined
    if (name === '--config') {
      value ??= argv[++i]
      if (value === undefined) throw new ConfigError('--config needs a file path')
      configFile = value
      continue
    }
    const noPrefix = name.startsWith('--no-') ? byFlag.get(`--${name.slice(5)}`) : undefined
    if (noPrefix?.kind === 'boolean' && value === undefined) {
      flags.set(noPrefix, 'false')
      continue
    }
    const spec = byFlag.get(name)
    if (!spec) {
      const guess = [...byFlag.keys()].find((flag) => flag.includes(name.replace(/^-+/, '')))
      throw new ConfigError(
        `unknown option ${name}${guess ? ` (did you mean ${guess}?)` : ''}; see kv-node --help`,
      )
    }
    if (value === undefined) {
      const next = argv[i + 1]
      if (spec.kind === 'boolean' && (next === undefined || next.startsWith('--'))) {
        value = 'true'
      } else {
        value = argv[++i]
        if (value === undefined) throw new ConfigError(`${name} needs a value`)
      }
    }
    flags.set(spec, value)
  }

  let fileValues: Record<string, unknown> = {}
  if (configFile !== undefined) {
    let text: string
    try {
      text = readFileSync(configFile, 'utf8')
    } catch (err) {
      throw new ConfigError(`cannot read config file ${configFile}: ${(err as Error).message}`)
    }
    try {
      const parsed: unknown = JSON.parse(text)
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
        throw new Error('the top level must be an object')
      }
      fileValues = parsed as Record<string, unknown>
    } catch (err) {
      throw new ConfigError(
        `config file ${configFile} is not valid JSON: ${(err as Error).message}`,
      )
    }
    const known = new Set<string>(configSpec.map((spec) => spec.key))
    for (const key of Object.keys(fileValues)) {
      if (!known.has(key))
        throw new ConfigError(`config file ${configFile} has unknown option "${key}"`)
    }
  }

  const config: Partial<Record<keyof NodeConfig, unknown>> = {}
  const deferred: OptionSpec[] = []
  for (const spec of configSpec) {
    let raw: unknown
    let source: string
    if (flags.has(spec)) {
      raw = flags.get(spec)
      source = 'command line'
    } else if (env[spec.env] !== undefined && env[spec.env] !== '') {
      raw = env[spec.env]
      source = `environment ${spec.env}`
    } else if (Object.hasOwn(fileValues, spec.key)) {
      raw = fileValues[spec.key]
      source = `config file`
    } else {
      if (typeof spec.default === 'function') deferred.push(spec)
      else config[spec.key] = spec.default
      continue
    }
    config[spec.key] = parseValue(spec, raw, source)
  }
  for (const spec of deferred) {
    config[spec.key] = (spec.default as (c: Partial<NodeConfig>) => unknown)(
      config as Partial<NodeConfig>,
    )
  }
  const result = config as NodeConfig
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
  if (problems.length > 0) throw new ConfigError(`invalid configuration: ${problems.join('; ')}`)
  return { config: result, help }
}

function defaultText(spec: OptionSpec): string {
  if (spec.defaultText !== undefined) return spec.defaultText
  const value = spec.default
  if (typeof value === 'number' && spec.kind === 'bytes') return formatBytes(value)
  return String(value)
}

export function formatBytes(bytes: number): string {
  if (bytes >= 1024 * MiB && bytes % (1024 * MiB) === 0) return `${bytes / (1024 * MiB)}GiB`
  if (bytes >= MiB && bytes % MiB === 0) return `${bytes / MiB}MiB`
  if (bytes >= KiB && bytes % KiB === 0) return `${bytes / KiB}KiB`
  return String(bytes)
}

const groupTitles: Record<OptionSpec['group'], string> = {
  node: 'Node',
  security: 'Security (TLS and authentication)',
  cluster: 'Cluster',
  storage: 'Storage',
  limits: 'Limits',
  http: 'HTTP',
  leaderless: 'Leaderless mode',
}

/** The text of `kv-node --help`. */
export function helpText(): string {
  const lines = [
    'kv-node: run one storage node of the key-value store.',
    '',
    'Usage: kv-node [options]',
    '',
    'Each option can also come from its environment variable or from a JSON config file',
    '(--config FILE or KV_CONFIG, keys as in the README). Flags beat the environment, which',
    'beats the file. Sizes accept KiB, MiB and GiB (for example 4MiB). Booleans take',
    'true/false, and --no-<flag> sets one to false.',
    '',
    '  --config FILE  (KV_CONFIG)',
    '      JSON file with options, such as {"nodeId": "n1", "port": 7001}.',
    '  --help',
    '      Show this help.',
  ]
  for (const group of Object.keys(groupTitles) as OptionSpec['group'][]) {
    lines.push('', `${groupTitles[group]}:`)
    for (const spec of configSpec.filter((s) => s.group === group)) {
      const values = spec.kind === 'enum' ? ` (${spec.values?.join('|')})` : ''
      lines.push(
        `  ${spec.flag} <${spec.kind}>${values}  (${spec.env}, default ${defaultText(spec)})`,
      )
      lines.push(`      ${spec.description}`)
    }
  }
  return `${lines.join('\n')}\n`
}

/** The README's configuration table (generated; see scripts/sync-readme.mjs). */
export function configTableMarkdown(): string {
  const rows = [
    '| option (config file key) | flag | environment | default | meaning |',
    '|---|---|---|---|---|',
  ]
  for (const spec of configSpec) {
    rows.push(
      `| \`${spec.key}\` | \`${spec.flag}\` | \`${spec.env}\` | ${defaultText(spec)} | ${spec.description} |`,
    )
  }
  return rows.join('\n')
}

/** An upper bound on the encoded size of one log entry under these limits. */
export function largestEntryBytes(config: NodeConfig): number {
  const payload = Math.max(config.valueBytesMax + config.keyBytesMax, config.requestBodyBytesMax)
  // Field tags and lengths: a few bytes per op, and the entry's own fields.
  return payload + config.requestIdBytesMax + config.batchOpsMax * 16 + 1024
}

/**
 * The largest replication frame this node sends or accepts: an append carries up to
 * `replicationAppendBytesMax` of entries but always at least one whole entry, and a snapshot
 * chunk stops after the record that passes that size.
 */
export function replicationFrameBytesMax(config: NodeConfig): number {
  return config.replicationAppendBytesMax + largestEntryBytes(config) + 64 * 1024
}

/** A resolved cluster: the members, this node and the leader. */
export interface ClusterConfig {
  mode: Exclude<ClusterMode, 'standalone'>
  self: MemberConfig
  members: MemberConfig[]
  leaderId: string
}

const memberIdPattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/

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
    if (!memberIdPattern.test(member.id)) {
      throw new ConfigError(
        `member id ${JSON.stringify(member.id)} must be 1-64 letters, digits, '.', '_' or '-'`,
      )
    }
    const client = checkUrl(member.clientUrl, `client URL of ${member.id}`)
    const peer = checkUrl(member.peerUrl, `peer URL of ${member.id}`)
    member.clientUrl = client.origin
    member.peerUrl = peer.origin
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
