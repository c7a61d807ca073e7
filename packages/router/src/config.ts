/**
 * kv-router's configuration: one option table (flag, environment variable, type, default,
 * bounds, description), read from the command line, the environment and a JSON config file,
 * in that order of precedence, as kv-node reads its own. Every value is bounded, and the
 * option table also makes `kv-router --help`.
 *
 * Certificate flags are the node's (`--certs-dir`, `--cert-file`, `--key-file`, `--ca-file`);
 * `--tls-cert`, `--tls-key` and `--tls-ca` are accepted as their synonyms.
 */
import { readFileSync } from 'node:fs'
import { identityNamePattern, limitsCeiling, limitsDefault } from '@kvstore/protocol'
import { homeRegionProblems } from './regions.js'

const KiB = 1024
const MiB = 1024 * KiB

export const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
export type LogLevel = (typeof logLevels)[number]

export const upstreamProtocols = ['http1', 'h2'] as const
export type UpstreamProtocol = (typeof upstreamProtocols)[number]

export interface RouterConfig {
  routerId: string
  host: string
  port: number
  logLevel: LogLevel
  /** The shard map file (many groups), or undefined with `group`. */
  shardMap: string | undefined
  /** `ID=URL,URL,...`: one unsharded group that owns every slot. */
  group: string | undefined
  /** The regions file (regions mode: keys go to their home region), or undefined. */
  regions: string | undefined
  /** Regions mode: the region of every key no `homeRegionPrefixes` entry claims. */
  homeRegion: string | undefined
  /** Regions mode: `PREFIX=REGION` entries; the longest prefix a key starts with wins. */
  homeRegionPrefixes: string[]
  clusterId: string | undefined
  certsDir: string | undefined
  certFile: string | undefined
  keyFile: string | undefined
  caFile: string | undefined
  identityCert: string | undefined
  identityKey: string | undefined
  probeUser: string | undefined
  insecure: boolean
  readFromLeader: boolean
  maxLagMs: number
  probeIntervalMs: number
  probeTimeoutMs: number
  ejectFailures: number
  ejectMs: number
  ejectMsMax: number
  mapRefreshIntervalMs: number
  retryForMs: number
  slotMovingRetryMs: number
  wrongShardRetriesMax: number
  upstreamTimeoutMs: number
  followerReadTimeoutMs: number
  upstreamProtocol: UpstreamProtocol
  upstreamConnections: number
  inflightRequestsMax: number
  inflightBodyBytesMax: number
  /** Dashboard pages streamed to at once (GET /ui/v1/stream). */
  uiStreamsMax: number
  /** Bytes waiting for one dashboard page before it is cut off (it reconnects). */
  uiStreamBufferBytesMax: number
  /** A member's dashboard stream that sends nothing for this long is ended (the page reconnects). */
  uiStreamIdleMs: number
  keyBytesMax: number
  valueBytesMax: number
  requestBodyBytesMax: number
  listLimitMax: number
  listLimitDefault: number
  responseBytesMax: number
  rateLimitPerAddressPerSecond: number
  rateLimitPerAddressBurst: number
  rateLimitPerCredentialPerSecond: number
  rateLimitPerCredentialBurst: number
  listCost: number
  listValuesCost: number
  rateLimitBucketsMax: number
  authCacheMs: number
  authCacheEntriesMax: number
  connectionsMax: number
  connectionsPerIpMax: number
  h2StreamsMax: number
  headersTimeoutMs: number
  requestTimeoutMs: number
  keepAliveTimeoutMs: number
  tlsHandshakeTimeoutMs: number
  h2ResetsPerSecondMax: number
  shutdownTimeoutMs: number
}

/** `list`: a flag given once per entry; comma-separated in the environment; an array in a file. */
type Kind = 'string' | 'integer' | 'bytes' | 'boolean' | 'enum' | 'list'

export interface RouterOptionSpec {
  key: keyof RouterConfig
  flag: string
  /** Other flags that mean the same. */
  aliases?: string[]
  /** The value's name in `--help` (`FLAG NAME`), for options whose form is not obvious. */
  valueName?: string
  env: string
  kind: Kind
  default:
    string | number | boolean | string[] | undefined | ((c: Partial<RouterConfig>) => unknown)
  defaultText?: string
  min?: number
  max?: number
  values?: readonly string[]
  group: 'router' | 'groups' | 'security' | 'routing' | 'health' | 'abuse' | 'limits' | 'http'
  description: string
}

/** A configuration that cannot be used; the message names the option and why. */
export class RouterConfigError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'RouterConfigError'
  }
}

export const routerOptions: readonly RouterOptionSpec[] = [
  {
    key: 'routerId',
    flag: '--id',
    env: 'KV_ROUTER_ID',
    kind: 'string',
    default: 'r1',
    group: 'router',
    description:
      'Id of this router: in its logs and metrics, and the name its identity certificate gives it (kv://<cluster-id>/router/<id>).',
  },
  {
    key: 'host',
    flag: '--host',
    env: 'KV_ROUTER_HOST',
    kind: 'string',
    default: '127.0.0.1',
    group: 'router',
    description: 'Address to listen on. Use 0.0.0.0 to accept connections from other machines.',
  },
  {
    key: 'port',
    flag: '--port',
    env: 'KV_ROUTER_PORT',
    kind: 'integer',
    default: 7100,
    min: 0,
    max: 65535,
    group: 'router',
    description:
      'Client port: the same HTTP API as a node (HTTP/1.1 and HTTP/2; h2c with prior knowledge on plaintext).',
  },
  {
    key: 'logLevel',
    flag: '--log-level',
    env: 'KV_ROUTER_LOG_LEVEL',
    kind: 'enum',
    values: logLevels,
    default: 'info',
    group: 'router',
    description: 'Level of the JSON logs on stdout.',
  },
  {
    key: 'shardMap',
    flag: '--shard-map',
    env: 'KV_ROUTER_SHARD_MAP',
    kind: 'string',
    default: undefined,
    defaultText: 'none',
    group: 'groups',
    description:
      'The shard map file every node was started with (JSON: groups, their members, their starting slots). The groups are asked for their claims (GET /v1/shards) periodically and on KV_ERR_WRONG_SHARD.',
  },
  {
    key: 'group',
    flag: '--group',
    env: 'KV_ROUTER_GROUP',
    kind: 'string',
    default: undefined,
    defaultText: 'none',
    group: 'groups',
    description:
      'One unsharded group that owns every slot, as ID=URL,URL,... (the client URLs of its members). Either this or --shard-map.',
  },
  {
    key: 'regions',
    flag: '--regions',
    env: 'KV_ROUTER_REGIONS',
    kind: 'string',
    default: undefined,
    defaultText: 'none',
    valueName: 'FILE',
    group: 'groups',
    description:
      "Regions mode: the regions file the nodes were started with (JSON: regions, their members' client URLs). Each key goes to its home region (see --home-region); instead of --group or --shard-map (a router does not shard regions).",
  },
  {
    key: 'homeRegion',
    flag: '--home-region',
    env: 'KV_ROUTER_HOME_REGION',
    kind: 'string',
    default: undefined,
    defaultText: 'none',
    valueName: 'ID',
    group: 'groups',
    description:
      "Regions mode (needed with --regions): the region of every key that no --home-region-prefix claims; also where logging in, who-am-I and GET /v1/regions go. Usually the router's own region.",
  },
  {
    key: 'homeRegionPrefixes',
    flag: '--home-region-prefix',
    env: 'KV_ROUTER_HOME_REGION_PREFIXES',
    kind: 'list',
    default: [],
    defaultText: 'none',
    valueName: 'PREFIX=REGION',
    max: 1024,
    group: 'groups',
    description:
      'Regions mode: keys starting with PREFIX belong to REGION (the longest matching prefix wins). Give the flag once per prefix; in the environment, comma-separated; in a config file, an array of strings.',
  },
  {
    key: 'clusterId',
    flag: '--cluster-id',
    env: 'KV_ROUTER_CLUSTER_ID',
    kind: 'string',
    default: undefined,
    defaultText: 'the one the identity certificate names',
    group: 'security',
    description:
      'Id of the cluster: client certificates must name a user of it (kv://<cluster-id>/user/<name>).',
  },
  {
    key: 'certsDir',
    flag: '--certs-dir',
    env: 'KV_ROUTER_CERTS_DIR',
    kind: 'string',
    default: undefined,
    defaultText: 'none',
    group: 'security',
    description:
      'Directory made by `kv certs init`: the router takes ca.crt, <id>.crt and <id>.key from it unless the file flags say otherwise.',
  },
  {
    key: 'certFile',
    flag: '--cert-file',
    aliases: ['--tls-cert'],
    env: 'KV_ROUTER_CERT_FILE',
    kind: 'string',
    default: (c) =>
      c.certsDir === undefined ? undefined : `${c.certsDir}/${c.routerId ?? 'r1'}.crt`,
    defaultText: '<certs-dir>/<id>.crt',
    group: 'security',
    description:
      'The certificate (PEM) served on the client port (HTTPS). Without one the router serves plaintext, on loopback only unless --insecure.',
  },
  {
    key: 'keyFile',
    flag: '--key-file',
    aliases: ['--tls-key'],
    env: 'KV_ROUTER_KEY_FILE',
    kind: 'string',
    default: (c) =>
      c.certsDir === undefined ? undefined : `${c.certsDir}/${c.routerId ?? 'r1'}.key`,
    defaultText: '<certs-dir>/<id>.key',
    group: 'security',
    description: 'The private key of --cert-file (PEM).',
  },
  {
    key: 'caFile',
    flag: '--ca-file',
    aliases: ['--tls-ca'],
    env: 'KV_ROUTER_CA_FILE',
    kind: 'string',
    default: (c) => (c.certsDir === undefined ? undefined : `${c.certsDir}/ca.crt`),
    defaultText: '<certs-dir>/ca.crt',
    group: 'security',
    description:
      "The cluster's CA (PEM): the groups' certificates must be signed by it, and so must client certificates.",
  },
  {
    key: 'identityCert',
    flag: '--identity-cert',
    env: 'KV_ROUTER_IDENTITY_CERT',
    kind: 'string',
    default: (c) => c.certFile,
    defaultText: '--cert-file',
    group: 'security',
    description:
      "The certificate the router presents to the groups (PEM), naming it kv://<cluster-id>/router/<id>: with it the nodes let the router act for the users it names in kv-on-behalf-of. A user's certificate (kv://<cluster-id>/user/<name>) works for development: the router then acts as that user for callers without a credential of their own.",
  },
  {
    key: 'identityKey',
    flag: '--identity-key',
    env: 'KV_ROUTER_IDENTITY_KEY',
    kind: 'string',
    default: (c) => c.keyFile,
    defaultText: '--key-file',
    group: 'security',
    description: 'The private key of --identity-cert (PEM).',
  },
  {
    key: 'probeUser',
    flag: '--probe-user',
    env: 'KV_ROUTER_PROBE_USER',
    kind: 'string',
    default: undefined,
    defaultText: 'none',
    group: 'security',
    description:
      "The user the router's own calls act for (kv-on-behalf-of): probes (GET /v1/cluster) and shard map refreshes (GET /v1/shards). With auth on, a router certificate alone is no user: give one that may read the cluster view (any user may). Not needed with a development identity (a user's certificate).",
  },
  {
    key: 'insecure',
    flag: '--insecure',
    env: 'KV_ROUTER_INSECURE',
    kind: 'boolean',
    default: false,
    group: 'security',
    description:
      'INSECURE: serve the client port in plaintext on an address other than loopback. Tokens then cross the network in the clear.',
  },
  {
    key: 'readFromLeader',
    flag: '--read-from-leader',
    env: 'KV_ROUTER_READ_FROM_LEADER',
    kind: 'boolean',
    default: false,
    group: 'routing',
    description:
      'Let the leader take a share of the reads too (round-robin with the followers). Without it the leader serves reads only when no follower can.',
  },
  {
    key: 'maxLagMs',
    flag: '--max-lag-ms',
    env: 'KV_ROUTER_MAX_LAG_MS',
    kind: 'integer',
    default: 1000,
    min: 0,
    max: 3_600_000,
    group: 'routing',
    description:
      'A follower that lags the leader by more than this is left out of the read pool until it catches up.',
  },
  {
    key: 'probeIntervalMs',
    flag: '--probe-interval-ms',
    env: 'KV_ROUTER_PROBE_INTERVAL_MS',
    kind: 'integer',
    default: 500,
    min: 20,
    max: 600_000,
    group: 'health',
    description:
      'How often every member is asked for its view (GET /v1/cluster): its role, the leader, and each follower lag.',
  },
  {
    key: 'probeTimeoutMs',
    flag: '--probe-timeout-ms',
    env: 'KV_ROUTER_PROBE_TIMEOUT_MS',
    kind: 'integer',
    default: (c) => Math.min(1000, Math.max(20, c.maxLagMs ?? 1000)),
    defaultText: 'the smaller of 1000 and --max-lag-ms',
    min: 10,
    max: 600_000,
    group: 'health',
    description:
      'A member that does not answer a probe within this long is unresponsive: out of the read pool until it answers again.',
  },
  {
    key: 'ejectFailures',
    flag: '--eject-failures',
    env: 'KV_ROUTER_EJECT_FAILURES',
    kind: 'integer',
    default: 3,
    min: 1,
    max: 1000,
    group: 'health',
    description:
      'Passive outlier detection: this many requests in a row that fail (unreachable, timed out, shutting down, not ready) eject a member for --eject-ms.',
  },
  {
    key: 'ejectMs',
    flag: '--eject-ms',
    env: 'KV_ROUTER_EJECT_MS',
    kind: 'integer',
    default: 2000,
    min: 10,
    max: 3_600_000,
    group: 'health',
    description:
      'How long a first ejection lasts; each ejection in a row doubles it up to --eject-ms-max. An ejected member comes back once it is past that time and answers a probe.',
  },
  {
    key: 'ejectMsMax',
    flag: '--eject-ms-max',
    env: 'KV_ROUTER_EJECT_MS_MAX',
    kind: 'integer',
    default: 30_000,
    min: 10,
    max: 3_600_000,
    group: 'health',
    description: 'The longest ejection.',
  },
  {
    key: 'mapRefreshIntervalMs',
    flag: '--map-refresh-interval-ms',
    env: 'KV_ROUTER_MAP_REFRESH_INTERVAL_MS',
    kind: 'integer',
    default: 5000,
    min: 100,
    max: 3_600_000,
    group: 'groups',
    description:
      'How often the shard map is refreshed from the groups (also at once on KV_ERR_WRONG_SHARD, and when a session token names a newer map).',
  },
  {
    key: 'retryForMs',
    flag: '--retry-for-ms',
    env: 'KV_ROUTER_RETRY_FOR_MS',
    kind: 'integer',
    default: 8000,
    min: 0,
    max: 600_000,
    group: 'routing',
    description:
      "How long a request keeps being retried while its group has no reachable leader (a failover): writes carry one kv-request-id through every attempt, so each is applied once. Keep it below the clients' own timeout (the SDK's is 10 s).",
  },
  {
    key: 'slotMovingRetryMs',
    flag: '--slot-moving-retry-ms',
    env: 'KV_ROUTER_SLOT_MOVING_RETRY_MS',
    kind: 'integer',
    default: 6000,
    min: 0,
    max: 600_000,
    group: 'routing',
    description:
      'How long a write (or linearizable read) refused with KV_ERR_SLOT_MOVING is retried, with short pauses, before the refusal is passed on.',
  },
  {
    key: 'wrongShardRetriesMax',
    flag: '--wrong-shard-retries-max',
    env: 'KV_ROUTER_WRONG_SHARD_RETRIES_MAX',
    kind: 'integer',
    default: 3,
    min: 0,
    max: 100,
    group: 'routing',
    description:
      'Times one request follows KV_ERR_WRONG_SHARD (refreshing the map each time) before the error is passed on.',
  },
  {
    key: 'upstreamTimeoutMs',
    flag: '--upstream-timeout-ms',
    env: 'KV_ROUTER_UPSTREAM_TIMEOUT_MS',
    kind: 'integer',
    default: 10_000,
    min: 100,
    max: 600_000,
    group: 'routing',
    description:
      'Longest wait for a node to answer one request (headers, and then each body chunk).',
  },
  {
    key: 'followerReadTimeoutMs',
    flag: '--follower-read-timeout-ms',
    env: 'KV_ROUTER_FOLLOWER_READ_TIMEOUT_MS',
    kind: 'integer',
    default: 1000,
    min: 10,
    max: 600_000,
    group: 'routing',
    description:
      'A follower that does not answer a read within this long (plus --max-lag-ms when the read waits for a session) counts a failure, and the read goes to the leader.',
  },
  {
    key: 'upstreamProtocol',
    flag: '--upstream-protocol',
    env: 'KV_ROUTER_UPSTREAM_PROTOCOL',
    kind: 'enum',
    values: upstreamProtocols,
    default: 'http1',
    group: 'routing',
    description:
      'How the router talks to the nodes: http1 (a pool of keep-alive HTTP/1.1 connections per node) or h2 (one multiplexed HTTP/2 connection per node).',
  },
  {
    key: 'upstreamConnections',
    flag: '--upstream-connections',
    env: 'KV_ROUTER_UPSTREAM_CONNECTIONS',
    kind: 'integer',
    default: 64,
    min: 1,
    max: 4096,
    group: 'routing',
    description: 'HTTP/1.1 connections kept per node (requests in flight to one node at most).',
  },
  {
    key: 'inflightRequestsMax',
    flag: '--inflight-requests-max',
    env: 'KV_ROUTER_INFLIGHT_REQUESTS_MAX',
    kind: 'integer',
    default: 8192,
    min: 1,
    max: 1_000_000,
    group: 'limits',
    description: 'Requests being proxied at once; beyond it new ones get KV_ERR_OVERLOADED (503).',
  },
  {
    key: 'inflightBodyBytesMax',
    flag: '--inflight-body-bytes-max',
    env: 'KV_ROUTER_INFLIGHT_BODY_BYTES_MAX',
    kind: 'bytes',
    default: 256 * MiB,
    min: 1 * MiB,
    max: 64 * 1024 * MiB,
    group: 'limits',
    description:
      'Request-body bytes held at once (a body is kept until its write is answered, to retry it); beyond it new requests with a body get KV_ERR_OVERLOADED (503).',
  },
  {
    key: 'uiStreamsMax',
    flag: '--ui-streams-max',
    env: 'KV_ROUTER_UI_STREAMS_MAX',
    kind: 'integer',
    default: 32,
    min: 1,
    max: 10_000,
    group: 'limits',
    description:
      "Dashboard pages streamed to at once (GET /ui/v1/stream, each passing on a member's stream); beyond it KV_ERR_DASHBOARD_STREAMS_TOO_MANY (503).",
  },
  {
    key: 'uiStreamBufferBytesMax',
    flag: '--ui-stream-buffer-bytes-max',
    env: 'KV_ROUTER_UI_STREAM_BUFFER_BYTES_MAX',
    kind: 'bytes',
    default: 1 * MiB,
    min: 64 * KiB,
    max: 256 * MiB,
    group: 'limits',
    description:
      'Bytes waiting to be sent to one dashboard page; a page that far behind is cut off, and reconnects to a fresh snapshot.',
  },
  {
    key: 'uiStreamIdleMs',
    flag: '--ui-stream-idle-ms',
    env: 'KV_ROUTER_UI_STREAM_IDLE_MS',
    kind: 'integer',
    default: 5000,
    min: 500,
    max: 600_000,
    group: 'health',
    description:
      "A member's dashboard stream that sends nothing for this long (the node samples every 500 ms by default) is ended; the page reconnects through a member that answers.",
  },
  {
    key: 'keyBytesMax',
    flag: '--key-bytes-max',
    env: 'KV_ROUTER_KEY_BYTES_MAX',
    kind: 'bytes',
    default: limitsDefault.keyBytesMax,
    min: 1,
    max: limitsCeiling.keyBytesMax,
    group: 'limits',
    description: "Longest key; set it to the nodes' (KV_ERR_KEY_TOO_LARGE).",
  },
  {
    key: 'valueBytesMax',
    flag: '--value-bytes-max',
    env: 'KV_ROUTER_VALUE_BYTES_MAX',
    kind: 'bytes',
    default: limitsDefault.valueBytesMax,
    min: 1,
    max: limitsCeiling.valueBytesMax,
    group: 'limits',
    description: "Largest value; set it to the nodes' (KV_ERR_VALUE_TOO_LARGE).",
  },
  {
    key: 'requestBodyBytesMax',
    flag: '--request-body-bytes-max',
    env: 'KV_ROUTER_REQUEST_BODY_BYTES_MAX',
    kind: 'bytes',
    default: limitsDefault.requestBodyBytesMax,
    min: 1,
    max: limitsCeiling.requestBodyBytesMax,
    group: 'limits',
    description: "Largest batch body; set it to the nodes' (KV_ERR_BODY_TOO_LARGE).",
  },
  {
    key: 'listLimitMax',
    flag: '--list-limit-max',
    env: 'KV_ROUTER_LIST_LIMIT_MAX',
    kind: 'integer',
    default: limitsDefault.listLimitMax,
    min: 1,
    max: limitsCeiling.listLimitMax,
    group: 'limits',
    description: "Most keys one list page may ask for; set it to the nodes'.",
  },
  {
    key: 'listLimitDefault',
    flag: '--list-limit-default',
    env: 'KV_ROUTER_LIST_LIMIT_DEFAULT',
    kind: 'integer',
    default: limitsDefault.listLimitDefault,
    min: 1,
    max: limitsCeiling.listLimitMax,
    group: 'limits',
    description: "Keys in a list page that gives no limit; set it to the nodes'.",
  },
  {
    key: 'responseBytesMax',
    flag: '--response-bytes-max',
    env: 'KV_ROUTER_RESPONSE_BYTES_MAX',
    kind: 'bytes',
    default: 64 * MiB,
    min: 64 * KiB,
    max: 4096 * MiB,
    group: 'limits',
    description:
      "Largest answer read from a node (a value, a list page); a larger one fails with KV_ERR_INTERNAL. Keep it above the nodes' value and list-page limits.",
  },
  {
    key: 'rateLimitPerAddressPerSecond',
    flag: '--rate-limit-per-address',
    env: 'KV_ROUTER_RATE_LIMIT_PER_ADDRESS',
    kind: 'integer',
    default: 0,
    min: 0,
    max: 10_000_000,
    group: 'abuse',
    description:
      'Requests a second one client address may make (a token bucket; 0 = no limit). Past it: 429 KV_ERR_RATE_LIMITED with Retry-After.',
  },
  {
    key: 'rateLimitPerAddressBurst',
    flag: '--rate-limit-per-address-burst',
    env: 'KV_ROUTER_RATE_LIMIT_PER_ADDRESS_BURST',
    kind: 'integer',
    default: (c) => Math.max(1, 2 * (c.rateLimitPerAddressPerSecond ?? 0)),
    defaultText: 'twice --rate-limit-per-address',
    min: 1,
    max: 100_000_000,
    group: 'abuse',
    description: 'Requests an address may make at once after a quiet spell (the bucket size).',
  },
  {
    key: 'rateLimitPerCredentialPerSecond',
    flag: '--rate-limit-per-credential',
    env: 'KV_ROUTER_RATE_LIMIT_PER_CREDENTIAL',
    kind: 'integer',
    default: 0,
    min: 0,
    max: 10_000_000,
    group: 'abuse',
    description:
      'Requests a second one credential may make: a bearer token, or the user a client certificate names (0 = no limit).',
  },
  {
    key: 'rateLimitPerCredentialBurst',
    flag: '--rate-limit-per-credential-burst',
    env: 'KV_ROUTER_RATE_LIMIT_PER_CREDENTIAL_BURST',
    kind: 'integer',
    default: (c) => Math.max(1, 2 * (c.rateLimitPerCredentialPerSecond ?? 0)),
    defaultText: 'twice --rate-limit-per-credential',
    min: 1,
    max: 100_000_000,
    group: 'abuse',
    description: 'Requests a credential may make at once after a quiet spell.',
  },
  {
    key: 'listCost',
    flag: '--list-cost',
    env: 'KV_ROUTER_LIST_COST',
    kind: 'integer',
    default: 2,
    min: 1,
    max: 1_000_000,
    group: 'abuse',
    description: 'Tokens a listing (GET /v1/kv?prefix=) takes from the rate-limit buckets.',
  },
  {
    key: 'listValuesCost',
    flag: '--list-values-cost',
    env: 'KV_ROUTER_LIST_VALUES_COST',
    kind: 'integer',
    default: 10,
    min: 1,
    max: 1_000_000,
    group: 'abuse',
    description:
      'Tokens a listing with values (values=true) takes: a scrape of the catalogue costs more than a lookup.',
  },
  {
    key: 'rateLimitBucketsMax',
    flag: '--rate-limit-buckets-max',
    env: 'KV_ROUTER_RATE_LIMIT_BUCKETS_MAX',
    kind: 'integer',
    default: 100_000,
    min: 16,
    max: 10_000_000,
    group: 'abuse',
    description:
      'Token buckets kept per limit (addresses, credentials); past it the least recently seen is dropped.',
  },
  {
    key: 'authCacheMs',
    flag: '--auth-cache-ms',
    env: 'KV_ROUTER_AUTH_CACHE_MS',
    kind: 'integer',
    default: 5000,
    min: 0,
    max: 600_000,
    group: 'abuse',
    description:
      "How long the router keeps a group's answer on who a caller is (GET /v1/auth/whoami), for its own endpoints (/v1/cluster, /v1/shards, /metrics).",
  },
  {
    key: 'authCacheEntriesMax',
    flag: '--auth-cache-entries-max',
    env: 'KV_ROUTER_AUTH_CACHE_ENTRIES_MAX',
    kind: 'integer',
    default: 10_000,
    min: 1,
    max: 1_000_000,
    group: 'abuse',
    description: 'Callers kept in that cache.',
  },
  {
    key: 'connectionsMax',
    flag: '--connections-max',
    env: 'KV_ROUTER_CONNECTIONS_MAX',
    kind: 'integer',
    default: 8192,
    min: 1,
    max: 1_000_000,
    group: 'http',
    description: 'Client connections open at once; more are closed as they arrive.',
  },
  {
    key: 'connectionsPerIpMax',
    flag: '--connections-per-ip-max',
    env: 'KV_ROUTER_CONNECTIONS_PER_IP_MAX',
    kind: 'integer',
    default: 512,
    min: 1,
    max: 1_000_000,
    group: 'http',
    description: 'Client connections one address may hold open; more are closed as they arrive.',
  },
  {
    key: 'h2StreamsMax',
    flag: '--h2-streams-max',
    env: 'KV_ROUTER_H2_STREAMS_MAX',
    kind: 'integer',
    default: 256,
    min: 1,
    max: 65_535,
    group: 'http',
    description: 'Concurrent streams per HTTP/2 connection.',
  },
  {
    key: 'headersTimeoutMs',
    flag: '--headers-timeout-ms',
    env: 'KV_ROUTER_HEADERS_TIMEOUT_MS',
    kind: 'integer',
    default: 10_000,
    min: 100,
    max: 600_000,
    group: 'http',
    description: 'A request whose headers take longer to arrive is dropped (slowloris).',
  },
  {
    key: 'requestTimeoutMs',
    flag: '--request-timeout-ms',
    env: 'KV_ROUTER_REQUEST_TIMEOUT_MS',
    kind: 'integer',
    default: 30_000,
    min: 1000,
    max: 3_600_000,
    group: 'http',
    description: 'A request whose body takes longer to arrive is answered KV_ERR_REQUEST_TIMEOUT.',
  },
  {
    key: 'keepAliveTimeoutMs',
    flag: '--keep-alive-timeout-ms',
    env: 'KV_ROUTER_KEEP_ALIVE_TIMEOUT_MS',
    kind: 'integer',
    default: 65_000,
    min: 1000,
    max: 3_600_000,
    group: 'http',
    description: 'An idle client connection is closed after this long.',
  },
  {
    key: 'tlsHandshakeTimeoutMs',
    flag: '--tls-handshake-timeout-ms',
    env: 'KV_ROUTER_TLS_HANDSHAKE_TIMEOUT_MS',
    kind: 'integer',
    default: 5000,
    min: 100,
    max: 120_000,
    group: 'http',
    description: 'A TLS handshake that takes longer is dropped.',
  },
  {
    key: 'h2ResetsPerSecondMax',
    flag: '--h2-resets-per-second-max',
    env: 'KV_ROUTER_H2_RESETS_PER_SECOND_MAX',
    kind: 'integer',
    default: 200,
    min: 1,
    max: 1_000_000,
    group: 'http',
    description:
      'HTTP/2 streams a connection may cancel a second (rapid reset); past it the connection is closed.',
  },
  {
    key: 'shutdownTimeoutMs',
    flag: '--shutdown-timeout-ms',
    env: 'KV_ROUTER_SHUTDOWN_TIMEOUT_MS',
    kind: 'integer',
    default: 10_000,
    min: 100,
    max: 600_000,
    group: 'router',
    description: 'On SIGTERM, requests in flight get this long to finish.',
  },
]

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

function parseValue(spec: RouterOptionSpec, raw: unknown, source: string): unknown {
  const where = `${spec.flag} (from ${source})`
  switch (spec.kind) {
    case 'list': {
      const items = Array.isArray(raw)
        ? (raw as unknown[])
        : typeof raw === 'string'
          ? raw.split(',').filter((item) => item !== '')
          : null
      if (items === null || !items.every((item) => typeof item === 'string' && item !== ''))
        throw new RouterConfigError(`${where} must be a list of non-empty strings`)
      if (spec.max !== undefined && items.length > spec.max)
        throw new RouterConfigError(`${where} has ${items.length} entries (at most ${spec.max})`)
      return items
    }
    case 'string':
      if (typeof raw !== 'string' || raw.length === 0)
        throw new RouterConfigError(`${where} must be a non-empty string`)
      return raw
    case 'enum':
      if (typeof raw !== 'string' || !spec.values?.includes(raw))
        throw new RouterConfigError(
          `${where} must be one of ${spec.values?.join(', ')}; got ${String(raw)}`,
        )
      return raw
    case 'boolean': {
      if (typeof raw === 'boolean') return raw
      const text = String(raw).toLowerCase()
      if (['true', '1', 'yes', 'on'].includes(text)) return true
      if (['false', '0', 'no', 'off'].includes(text)) return false
      throw new RouterConfigError(`${where} must be true or false; got ${String(raw)}`)
    }
    case 'integer':
    case 'bytes': {
      let value: number
      if (typeof raw === 'number') value = raw
      else {
        const match = /^\s*(\d+)\s*([a-zA-Z]*)\s*$/.exec(String(raw))
        const unit = match?.[2]?.toLowerCase() ?? ''
        if (!match || (spec.kind === 'integer' && unit !== '') || !(unit in sizeUnits)) {
          const hint = spec.kind === 'bytes' ? ' (a number of bytes, or with KiB, MiB or GiB)' : ''
          throw new RouterConfigError(`${where} must be a whole number${hint}; got ${String(raw)}`)
        }
        value = Number(match[1]) * (sizeUnits[unit] ?? 1)
      }
      if (!Number.isSafeInteger(value))
        throw new RouterConfigError(`${where} must be a whole number`)
      if (spec.min !== undefined && value < spec.min)
        throw new RouterConfigError(`${where} must be at least ${spec.min}; got ${value}`)
      if (spec.max !== undefined && value > spec.max)
        throw new RouterConfigError(`${where} must be at most ${spec.max}; got ${value}`)
      return value
    }
  }
}

/** What is wrong with a whole configuration (checks across options). */
export function routerConfigProblems(c: RouterConfig): string[] {
  const problems: string[] = []
  if (c.probeUser !== undefined && !identityNamePattern.test(c.probeUser))
    problems.push(`--probe-user ${JSON.stringify(c.probeUser)} is not a user name`)
  if (!identityNamePattern.test(c.routerId))
    problems.push(`--id ${JSON.stringify(c.routerId)} is not valid (letters, digits, . _ -)`)
  if (c.regions !== undefined) {
    if (c.shardMap !== undefined)
      problems.push(
        '--regions and --shard-map cannot go together: a router routes keys to regions or to shard groups, not both (sharded regions are not supported); run one router per mode',
      )
    if (c.group !== undefined)
      problems.push(
        '--regions and --group cannot go together: the regions file names every region and its members',
      )
    if (c.homeRegion === undefined)
      problems.push(
        '--regions needs --home-region ID: the region of every key that no --home-region-prefix claims',
      )
    else problems.push(...homeRegionProblems(c.homeRegion, c.homeRegionPrefixes, c.keyBytesMax))
  } else {
    if ((c.shardMap === undefined) === (c.group === undefined))
      problems.push(
        'give the groups with --shard-map FILE (sharded) or --group ID=URL,URL,... (one unsharded group), not both; or the regions with --regions FILE',
      )
    if (c.homeRegion !== undefined || c.homeRegionPrefixes.length > 0)
      problems.push(
        '--home-region and --home-region-prefix are for regions mode: give --regions FILE',
      )
  }
  if ((c.certFile === undefined) !== (c.keyFile === undefined))
    problems.push('--cert-file and --key-file go together')
  if ((c.identityCert === undefined) !== (c.identityKey === undefined))
    problems.push('--identity-cert and --identity-key go together')
  const loopback = c.host === '127.0.0.1' || c.host === '::1' || c.host === 'localhost'
  if (c.certFile === undefined && !loopback && !c.insecure)
    problems.push(
      `without a certificate (--cert-file or --certs-dir) the router serves plaintext; it listens on ${c.host} only with --insecure`,
    )
  if (c.ejectMsMax < c.ejectMs) problems.push('--eject-ms-max must be at least --eject-ms')
  if (c.listLimitDefault > c.listLimitMax)
    problems.push('--list-limit-default must be at most --list-limit-max')
  if (c.responseBytesMax < c.valueBytesMax)
    problems.push('--response-bytes-max must be at least --value-bytes-max')
  if (c.inflightBodyBytesMax < c.requestBodyBytesMax)
    problems.push('--inflight-body-bytes-max must be at least --request-body-bytes-max')
  if (c.probeTimeoutMs > 10 * c.probeIntervalMs + 60_000)
    problems.push('--probe-timeout-ms is far longer than --probe-interval-ms')
  return problems
}

export interface ParsedRouterArgs {
  config: RouterConfig
  help: boolean
}

/**
 * Builds the configuration from the command line (without the node and script paths), the
 * environment and a config file (`--config FILE` or KV_ROUTER_CONFIG). Throws
 * RouterConfigError with a precise message on any bad input.
 */
export function parseRouterConfig(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): ParsedRouterArgs {
  const byFlag = new Map<string, RouterOptionSpec>()
  for (const spec of routerOptions) {
    byFlag.set(spec.flag, spec)
    for (const alias of spec.aliases ?? []) byFlag.set(alias, spec)
  }
  const flags = new Map<RouterOptionSpec, string | string[]>()
  let configFile = env.KV_ROUTER_CONFIG
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
      if (value === undefined) throw new RouterConfigError('--config needs a file path')
      configFile = value
      continue
    }
    const negated = name.startsWith('--no-') ? byFlag.get(`--${name.slice(5)}`) : undefined
    if (negated?.kind === 'boolean' && value === undefined) {
      flags.set(negated, 'false')
      continue
    }
    const spec = byFlag.get(name)
    if (spec === undefined) {
      const guess = [...byFlag.keys()].find((flag) => flag.includes(name.replace(/^-+/, '')))
      throw new RouterConfigError(
        `unknown option ${name}${guess ? ` (did you mean ${guess}?)` : ''}; see kv-router --help`,
      )
    }
    if (value === undefined) {
      const next = argv[i + 1]
      if (spec.kind === 'boolean' && (next === undefined || next.startsWith('--'))) value = 'true'
      else {
        value = argv[++i]
        if (value === undefined) throw new RouterConfigError(`${name} needs a value`)
      }
    }
    if (spec.kind === 'list') {
      // A list flag is given once per entry; the entries add up.
      const entries = flags.get(spec)
      if (Array.isArray(entries)) entries.push(value)
      else flags.set(spec, [value])
      continue
    }
    // A later flag overrides an earlier one (as with kv-node).
    flags.set(spec, value)
  }

  let fileValues: Record<string, unknown> = {}
  if (configFile !== undefined) {
    let text: string
    try {
      text = readFileSync(configFile, 'utf8')
    } catch (err) {
      throw new RouterConfigError(
        `cannot read config file ${configFile}: ${(err as Error).message}`,
      )
    }
    try {
      const parsed: unknown = JSON.parse(text)
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed))
        throw new Error('the top level must be an object')
      fileValues = parsed as Record<string, unknown>
    } catch (err) {
      throw new RouterConfigError(
        `config file ${configFile} is not valid JSON: ${(err as Error).message}`,
      )
    }
    const known = new Set<string>(routerOptions.map((spec) => spec.key))
    for (const key of Object.keys(fileValues)) {
      if (!known.has(key))
        throw new RouterConfigError(`config file ${configFile} has unknown option "${key}"`)
    }
  }

  const config: Partial<Record<keyof RouterConfig, unknown>> = {}
  const deferred: RouterOptionSpec[] = []
  for (const spec of routerOptions) {
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
      source = 'config file'
    } else {
      if (typeof spec.default === 'function') deferred.push(spec)
      else config[spec.key] = Array.isArray(spec.default) ? [...spec.default] : spec.default
      continue
    }
    config[spec.key] = parseValue(spec, raw, source)
  }
  // Derived defaults in table order: a later one may depend on an earlier derived one.
  for (const spec of deferred) {
    config[spec.key] = (spec.default as (c: Partial<RouterConfig>) => unknown)(
      config as Partial<RouterConfig>,
    )
  }
  const result = config as unknown as RouterConfig
  if (!help) {
    const problems = routerConfigProblems(result)
    if (problems.length > 0)
      throw new RouterConfigError(`invalid configuration: ${problems.join('; ')}`)
  }
  return { config: result, help }
}

/** `kv-router --help`. */
export function routerHelpText(): string {
  const lines = [
    'kv-router: one endpoint in front of many single-leader groups (the same HTTP API as a node).',
    '',
    'Usage: kv-router (--group ID=URL,URL,... | --shard-map FILE | --regions FILE --home-region ID) [options]',
    '       Every option may also come from its environment variable or a JSON file (--config FILE).',
    '',
  ]
  let group = ''
  for (const spec of routerOptions) {
    if (spec.group !== group) {
      group = spec.group
      lines.push(`${group}:`)
    }
    const def =
      spec.defaultText ??
      (spec.default === undefined || typeof spec.default === 'function'
        ? 'none'
        : String(spec.default))
    const aliases = spec.aliases ? ` (also ${spec.aliases.join(', ')})` : ''
    const value = spec.valueName !== undefined ? ` ${spec.valueName}` : ''
    lines.push(`  ${spec.flag}${value}${aliases}  [${spec.env}, default ${def}]`)
    lines.push(`      ${spec.description}`)
  }
  return `${lines.join('\n')}\n`
}
