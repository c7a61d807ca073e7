/**
 * Prometheus metrics, served at GET /metrics. Names follow Prometheus conventions: a `kv_`
 * prefix, base units (seconds, bytes) and `_total` on counters.
 */
import { Counter, Gauge, Histogram, Registry, Summary, collectDefaultMetrics } from 'prom-client'
import type { BatchStats, Store } from '@kvstore/storage'
import type { Replicator } from './cluster/replicator.js'
import type { LeaderlessEngine } from './leaderless/engine.js'
import type { Shards } from './shards/index.js'
import type { Regions } from './regions/index.js'
import type { Outbox } from './outbox/outbox.js'
import type { Lessor } from './leases/lessor.js'
import { RespStats } from './resp/stats.js'

const httpBucketsSeconds = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]

interface MetricValue {
  labels: Record<string, string | number>
  value: number
  metricName?: string
}

/**
 * Request counts and latencies, recorded with plain counters and fixed bucket arrays on the
 * hot path and turned into Prometheus series only when /metrics is scraped. prom-client's
 * own labelled histograms cost about a tenth of a small request's CPU.
 */
interface MethodStats {
  route: string
  method: string
  statuses: Map<number, number>
  buckets: Float64Array
  sum: number
  count: number
}

export class RequestStats {
  /** route -> method -> stats; no strings are built per request. */
  private readonly routes = new Map<string, Map<string, MethodStats>>()

  /** The recorder of one route, resolved once when the route is registered. */
  forRoute(route: string): (method: string, status: number, seconds: number) => void {
    let methods = this.routes.get(route)
    if (!methods) {
      methods = new Map()
      this.routes.set(route, methods)
    }
    const byMethod = methods
    return (method, status, seconds) => {
      let stats = byMethod.get(method)
      if (!stats) {
        stats = {
          route,
          method,
          statuses: new Map(),
          buckets: new Float64Array(httpBucketsSeconds.length),
          sum: 0,
          count: 0,
        }
        byMethod.set(method, stats)
      }
      this.observe(stats, status, seconds)
    }
  }

  record(route: string, method: string, status: number, seconds: number): void {
    this.forRoute(route)(method, status, seconds)
  }

  private observe(duration: MethodStats, status: number, seconds: number): void {
    duration.statuses.set(status, (duration.statuses.get(status) ?? 0) + 1)
    duration.sum += seconds
    duration.count++
    for (let i = 0; i < httpBucketsSeconds.length; i++) {
      if (seconds <= (httpBucketsSeconds[i] as number)) {
        duration.buckets[i] = (duration.buckets[i] ?? 0) + 1
        break
      }
    }
  }

  /** prom-client custom metrics reading these stats at scrape time. */
  metrics(): {
    name: string
    help: string
    type: string
    labelNames: string[]
    aggregator: string
    get: () => unknown
  }[] {
    const requests = {
      name: 'kv_http_requests_total',
      help: 'HTTP requests answered, by route, method and status.',
      type: 'counter',
      labelNames: ['route', 'method', 'status'],
      aggregator: 'sum',
      get: () => ({
        name: requests.name,
        help: requests.help,
        type: requests.type,
        aggregator: requests.aggregator,
        values: this.all().flatMap((m) =>
          [...m.statuses].map(([status, count]): MetricValue => ({
            labels: { route: m.route, method: m.method, status },
            value: count,
          })),
        ),
      }),
    }
    const durations = {
      name: 'kv_http_request_duration_seconds',
      help: 'Time from receiving a request to sending its response.',
      type: 'histogram',
      labelNames: ['route', 'method'],
      aggregator: 'sum',
      get: () => {
        const values: MetricValue[] = []
        for (const d of this.all()) {
          const labels = { route: d.route, method: d.method }
          let cumulative = 0
          httpBucketsSeconds.forEach((le, i) => {
            cumulative += d.buckets[i] ?? 0
            values.push({
              labels: { ...labels, le },
              value: cumulative,
              metricName: `${durations.name}_bucket`,
            })
          })
          values.push({
            labels: { ...labels, le: '+Inf' },
            value: d.count,
            metricName: `${durations.name}_bucket`,
          })
          values.push({ labels, value: d.sum, metricName: `${durations.name}_sum` })
          values.push({ labels, value: d.count, metricName: `${durations.name}_count` })
        }
        return {
          name: durations.name,
          help: durations.help,
          type: durations.type,
          aggregator: durations.aggregator,
          values,
        }
      },
    }
    return [requests, durations]
  }

  private all(): MethodStats[] {
    return [...this.routes.values()].flatMap((methods) => [...methods.values()])
  }
}

/** The log archive's figures (archiver.ts keeps them; all zero on a node without one). */
export interface ArchiveFigures {
  /** Last LSN archived (base backup or segment). */
  lsn: number
  lagEntries: number
  lagSeconds: number
  /** 1 while the archive has a gap that only a new base backup repairs. */
  broken: number
  breaks: number
  segments: number
  bytes: number
  errors: number
  baseBackups: number
}

export class NodeMetrics {
  readonly registry = new Registry()
  /** Backups answered by POST /admin/v1/backups, by target, and the bytes they sent or wrote. */
  readonly backups = { stream: 0, archive: 0, bytes: 0 }
  readonly archive: ArchiveFigures = {
    lsn: 0,
    lagEntries: 0,
    lagSeconds: 0,
    broken: 0,
    breaks: 0,
    segments: 0,
    bytes: 0,
    errors: 0,
    baseBackups: 0,
  }
  readonly requests = new RequestStats()
  readonly errors: Counter<'code'>
  /** Writes made durable, by kind; plain numbers read at scrape time. */
  readonly writes = { put: 0, delete: 0, batch: 0 }
  readonly batchEntries: Histogram
  readonly batchSeconds: Histogram
  /** Peer connections and messages refused (no certificate, not a member, forged sender...). */
  readonly peerRefused: Counter<'reason'>
  /** Client connections closed at once (per-IP cap, HTTP/2 rapid reset). */
  readonly connectionsRefused: Counter<'reason'>
  /** Password and certificate logins, by result. */
  readonly logins: Counter<'method' | 'result'>
  /** Certificate reloads (SIGHUP), by result. */
  readonly tlsReloads: Counter<'result'>
  /** When the certificate in use expires (Unix seconds); 0 without TLS. */
  tlsNotAfterSeconds = 0

  constructor() {
    const registers = [this.registry]
    collectDefaultMetrics({ register: this.registry, prefix: 'kv_' })
    for (const metric of this.requests.metrics()) {
      this.registry.registerMetric(metric as unknown as Parameters<Registry['registerMetric']>[0])
    }
    this.errors = new Counter({
      name: 'kv_errors_total',
      help: 'Error responses, by stable error code.',
      labelNames: ['code'],
      registers,
    })
    this.peerRefused = new Counter({
      name: 'kv_peer_refused_total',
      help: 'Peer connections and messages refused, by reason: handshake (no or untrusted certificate), no_member_identity, not_a_member, removed_member (an id the configuration removed), sender_mismatch (a message naming another sender than the certificate), bad_frame, buffer_limit.',
      labelNames: ['reason'],
      registers,
    })
    this.connectionsRefused = new Counter({
      name: 'kv_connections_refused_total',
      help: 'Client connections closed at once, by reason: per_ip (connectionsPerIpMax), rapid_reset (h2ResetsPerSecondMax), handshake (failed or timed-out TLS handshake).',
      labelNames: ['reason'],
      registers,
    })
    this.logins = new Counter({
      name: 'kv_logins_total',
      help: 'Logins (POST /v1/auth/token with a password, or a request with a client certificate naming a user), by method and result.',
      labelNames: ['method', 'result'],
      registers,
    })
    this.tlsReloads = new Counter({
      name: 'kv_tls_reloads_total',
      help: 'Certificate reloads (SIGHUP or POST /admin/v1/tls/reload), by result (ok, failed: the old certificate stays in use).',
      labelNames: ['result'],
      registers,
    })
    const notAfter = (): number => this.tlsNotAfterSeconds
    new Gauge({
      name: 'kv_tls_certificate_not_after_seconds',
      help: 'When the certificate in use expires, in Unix seconds (0 without TLS): alert well before it.',
      registers,
      collect() {
        this.set(notAfter())
      },
    })
    const writes = this.writes
    new Counter({
      name: 'kv_writes_total',
      help: 'Writes made durable, by kind (put, delete, batch).',
      labelNames: ['kind'],
      registers,
      collect() {
        this.reset()
        for (const kind of ['put', 'delete', 'batch'] as const) this.inc({ kind }, writes[kind])
      },
    })
    const backups = this.backups
    new Counter({
      name: 'kv_backups_total',
      help: 'Backups taken by POST /admin/v1/backups, by target (stream: sent to the client; archive: a base backup into the archive). Base backups the archiver takes on its own are in kv_archive_base_backups_total.',
      labelNames: ['target'],
      registers,
      collect() {
        this.reset()
        for (const target of ['stream', 'archive'] as const) this.inc({ target }, backups[target])
      },
    })
    new Counter({
      name: 'kv_backup_bytes_total',
      help: 'Bytes of backup files sent or written by POST /admin/v1/backups.',
      registers,
      collect() {
        this.reset()
        this.inc(backups.bytes)
      },
    })
    const archive = this.archive
    const archiveGauge = (name: string, help: string, read: () => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(read())
        },
      })
    const archiveCounter = (name: string, help: string, read: () => number) =>
      new Counter({
        name,
        help,
        registers,
        collect() {
          this.reset()
          this.inc(read())
        },
      })
    archiveGauge(
      'kv_archive_lsn',
      'Last LSN in the log archive (--archive-dir): its newest base backup or segment; 0 without an archive.',
      () => archive.lsn,
    )
    archiveGauge(
      'kv_archive_lag_entries',
      'Committed entries not yet in the log archive.',
      () => archive.lagEntries,
    )
    archiveGauge(
      'kv_archive_lag_seconds',
      'Age of the oldest committed entry not yet in the log archive (0 when it has them all): the seconds of committed writes a loss of the whole cluster would take now (the RPO).',
      () => archive.lagSeconds,
    )
    archiveGauge(
      'kv_archive_broken',
      'ALERT: 1 while the log archive has a gap (the log was compacted or replaced before the archive took its entries) that a new base backup must repair; a restore cannot reach past the gap.',
      () => archive.broken,
    )
    archiveCounter(
      'kv_archive_breaks_total',
      'Times the log archive broke (a gap only a new base backup repairs).',
      () => archive.breaks,
    )
    archiveCounter('kv_archive_segments_total', 'Archive segments written.', () => archive.segments)
    archiveCounter(
      'kv_archive_bytes_total',
      'Bytes written into the log archive (segments and base backups).',
      () => archive.bytes,
    )
    archiveCounter(
      'kv_archive_errors_total',
      'Archive writes that failed (disk full, permissions, ...); retried on the next tick.',
      () => archive.errors,
    )
    archiveCounter(
      'kv_archive_base_backups_total',
      'Base backups written into the log archive.',
      () => archive.baseBackups,
    )
    this.batchEntries = new Histogram({
      name: 'kv_storage_batch_entries',
      help: 'Log entries per LevelDB batch (group commit size).',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
      registers,
    })
    this.batchSeconds = new Histogram({
      name: 'kv_storage_batch_write_seconds',
      help: 'Time to write one batch to LevelDB, including its fsync.',
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5],
      registers,
    })
  }

  /** Bytes of request bodies in flight, read at scrape time. */
  watchBodies(inflight: () => number): void {
    new Gauge({
      name: 'kv_inflight_body_bytes',
      help: 'Bytes of request bodies being received or served now (limit: inflightBodyBytesMax).',
      registers: [this.registry],
      collect() {
        this.set(inflight())
      },
    })
  }

  /** Watch streams (GET /v1/watch; watch/hub.ts), read at scrape time. */
  watchWatches(
    stats: () => {
      watchers: number
      eventsSent: number
      tooSlow: number
      logReads: number
      tailBytes: number
    },
  ): void {
    const gauge = (name: string, help: string, read: () => number): void => {
      new Gauge({
        name,
        help,
        registers: [this.registry],
        collect() {
          this.set(read())
        },
      })
    }
    gauge(
      'kv_watchers',
      'Watch streams open on this node (limit: watchersMax).',
      () => stats().watchers,
    )
    gauge(
      'kv_watch_events_sent',
      'Change events sent to watchers since the node started.',
      () => stats().eventsSent,
    )
    gauge(
      'kv_watch_too_slow',
      'Watch streams ended with KV_ERR_WATCH_TOO_SLOW since the node started.',
      () => stats().tooSlow,
    )
    gauge(
      'kv_watch_log_reads',
      'Log reads made for watchers behind the shared tail since the node started.',
      () => stats().logReads,
    )
    gauge(
      'kv_watch_tail_bytes',
      'Bytes of committed entries held in memory for watchers (limit: watchTailBytesMax).',
      () => stats().tailBytes,
    )
  }

  /** Storage callback: one batch reached the disk. */
  recordBatch(stats: BatchStats): void {
    this.batchEntries.observe(stats.entries)
    this.batchSeconds.observe(stats.durationMs / 1000)
  }

  /** Gauges read from the store when /metrics is scraped. */
  watchStore(store: () => Store | null): void {
    const registers = [this.registry]
    const gauge = (name: string, help: string, read: (s: Store) => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          const s = store()
          if (s) this.set(read(s))
        },
      })
    gauge('kv_applied_lsn', 'Last LSN in the log and applied to the state.', (s) => s.appliedLsn)
    gauge('kv_commit_lsn', 'Highest LSN known to be committed.', (s) => s.commitLsn)
    gauge(
      'kv_log_start_lsn',
      'First LSN still in the log (older entries were compacted).',
      (s) => s.meta.logStartLsn,
    )
    gauge('kv_epoch', 'Highest epoch this node has seen.', (s) => s.meta.epoch)
    gauge('kv_write_queue_writes', 'Writes waiting for the disk.', (s) => s.queueDepth.writes)
    gauge(
      'kv_write_queue_bytes',
      'Bytes of writes waiting for the disk.',
      (s) => s.queueDepth.bytes,
    )
    gauge('kv_read_cache_bytes', 'Bytes held by the read cache.', (s) => s.cache.size.bytes)
    gauge('kv_read_cache_entries', 'Records held by the read cache.', (s) => s.cache.size.entries)
    gauge('kv_read_cache_hits', 'Reads served by the read cache since start.', (s) => s.cache.hits)
    gauge('kv_read_cache_misses', 'Reads that went to LevelDB since start.', (s) => s.cache.misses)
  }

  /** Queued writes (ack=queued): this member's outbox, read when /metrics is scraped. */
  watchOutbox(outbox: Pick<Outbox, 'entries' | 'bytes' | 'oldestAgeMs' | 'figures'>): void {
    const registers = [this.registry]
    new Gauge({
      name: 'kv_outbox_entries',
      help: 'Queued writes (ack=queued) this member accepted that the leader has not applied yet (limit: outboxEntriesMax).',
      registers,
      collect() {
        this.set(outbox.entries)
      },
    })
    new Gauge({
      name: 'kv_outbox_bytes',
      help: "Bytes of the outbox's queued writes (limit: outboxBytesMax).",
      registers,
      collect() {
        this.set(outbox.bytes)
      },
    })
    new Gauge({
      name: 'kv_outbox_oldest_age_seconds',
      help: 'How long the oldest queued write in the outbox has waited for the leader (0 when empty; limit: outboxAgeMaxMs).',
      registers,
      collect() {
        this.set(outbox.oldestAgeMs() / 1000)
      },
    })
    const figures = outbox.figures
    new Counter({
      name: 'kv_outbox_forwarded_total',
      help: 'Outcomes of queued writes sent to the leader, by result: applied, failed (a coded error, on the ticket), retry (no decision yet: sent again later).',
      labelNames: ['result'],
      registers,
      collect() {
        this.reset()
        for (const result of ['applied', 'failed', 'retry'] as const)
          this.inc({ result }, figures.forwarded[result])
      },
    })
    new Counter({
      name: 'kv_outbox_refused_total',
      help: 'Queued writes refused with KV_ERR_OUTBOX_FULL, by reason: entries, bytes, age.',
      labelNames: ['reason'],
      registers,
      collect() {
        this.reset()
        for (const reason of ['entries', 'bytes', 'age'] as const)
          this.inc({ reason }, figures.refused[reason])
      },
    })
  }

  /** Leases (node/src/leases): how many there are, and their ends by reason. */
  /** The RESP front (--resp-port; resp/server.ts), read at scrape time; zeros when it is off. */
  watchResp(stats: RespStats): void {
    const registers = [this.registry]
    new Gauge({
      name: 'kv_resp_connections',
      help: 'RESP connections open on this node (limit: respConnectionsMax).',
      registers,
      collect() {
        this.set(stats.connections)
      },
    })
    new Counter({
      name: 'kv_resp_commands_total',
      help: 'RESP commands answered, by result: ok, or error (any -ERR, -READONLY, -NOAUTH, -KV_ERR_... reply).',
      labelNames: ['result'],
      registers,
      collect() {
        this.reset()
        this.inc({ result: 'ok' }, stats.commands - stats.errors)
        this.inc({ result: 'error' }, stats.errors)
      },
    })
    new Counter({
      name: 'kv_resp_connections_closed_total',
      help: 'RESP connections a limit closed, by reason: connections (respConnectionsMax), auth_timeout (respAuthTimeoutMs), protocol (KV_ERR_RESP_PROTOCOL), output (respOutputBytesMax).',
      labelNames: ['reason'],
      registers,
      collect() {
        this.reset()
        this.inc({ reason: 'connections' }, stats.closed.connections)
        this.inc({ reason: 'auth_timeout' }, stats.closed.authTimeout)
        this.inc({ reason: 'protocol' }, stats.closed.protocol)
        this.inc({ reason: 'output' }, stats.closed.output)
      },
    })
  }

  watchLeases(lessor: Pick<Lessor, 'size' | 'stats'>): void {
    const registers = [this.registry]
    new Gauge({
      name: 'kv_leases',
      help: 'Leases in the state of this member (limit: leasesMax).',
      registers,
      collect() {
        this.set(lessor.size)
      },
    })
    new Counter({
      name: 'kv_lease_ends_total',
      help: 'Lease ends this member wrote as leader, by reason: expired, revoked.',
      labelNames: ['reason'],
      registers,
      collect() {
        this.reset()
        this.inc({ reason: 'expired' }, lessor.stats.expired)
        this.inc({ reason: 'revoked' }, lessor.stats.revoked)
      },
    })
  }

  /** Replication figures, read from the replicator when /metrics is scraped. */
  /** Leaderless mode: read repair, hinted handoff, anti-entropy and sibling figures. */
  watchLeaderless(engine: LeaderlessEngine): void {
    const registers = [this.registry]
    const stats = engine.stats
    const counter = (name: string, help: string, read: () => number) =>
      new Counter({
        name,
        help,
        registers,
        collect() {
          this.reset()
          this.inc(read())
        },
      })
    counter('kv_read_repairs_total', 'Replicas updated by read repair.', () => stats.readRepairs)
    counter(
      'kv_read_digest_mismatches_total',
      'Values a read fetched in a second round trip, because a replica asked for its versions only held one the data lacked.',
      () => stats.digestMismatches,
    )
    counter('kv_hints_stored_total', 'Hints stored here for down members.', () => stats.hintsStored)
    counter(
      'kv_hints_replayed_total',
      'Hints delivered to their member and removed.',
      () => stats.hintsReplayed,
    )
    new Counter({
      name: 'kv_hints_dropped_total',
      help: 'Hints not stored or not delivered: window (the member was down longer than hintWindowMs), full (hintsMax reached), expired (not replayed within hintWindowMs). Anti-entropy repairs what they held.',
      labelNames: ['reason'],
      registers,
      collect() {
        this.reset()
        for (const [reason, n] of Object.entries(stats.hintsDropped)) this.inc({ reason }, n)
      },
    })
    new Gauge({
      name: 'kv_hints_max',
      help: 'Most hints this member holds for others (hintsMax); past it hints are dropped (reason full). Alert when the sum of kv_hint_backlog nears it.',
      registers,
      collect() {
        this.set(engine.config.hintsMax)
      },
    })
    new Gauge({
      name: 'kv_hint_backlog',
      help: 'Hints held here, per target member.',
      labelNames: ['member'],
      registers,
      collect() {
        this.reset()
        for (const m of engine.members) {
          if (m.id !== engine.self) this.set({ member: m.id }, engine.hintBacklog()[m.id] ?? 0)
        }
      },
    })
    counter(
      'kv_anti_entropy_exchanges_total',
      'Anti-entropy exchanges this member started.',
      () => stats.antiEntropyExchanges,
    )
    counter(
      'kv_anti_entropy_records_sent_total',
      'Records this member sent in anti-entropy exchanges (either side): only the keys whose digests differ, unless a peer knows no key digests.',
      () => stats.antiEntropyRecordsSent,
    )
    counter(
      'kv_anti_entropy_keys_repaired_total',
      'Keys whose copy here changed through anti-entropy (either side of an exchange).',
      () => stats.antiEntropyKeysRepaired,
    )
    counter(
      'kv_siblings_pruned_total',
      'Siblings dropped because replicas merged past siblingsMax (the oldest go first).',
      () => stats.siblingsPruned,
    )
    counter(
      'kv_sibling_warnings_total',
      'Writes or merges that left a key with at least siblingsWarn siblings.',
      () => stats.siblingWarnings,
    )
    counter(
      'kv_peer_records_refused_total',
      'Records from peers refused and never merged: a counter this member never minted or above the bound, or a timestamp too far ahead.',
      () => stats.peerRecordsRefused,
    )
    counter(
      'kv_lww_discarded_total',
      'Values discarded here by last-write-wins because a write with a later timestamp won (conflicts=lww).',
      () => stats.lwwDiscarded,
    )
    counter(
      'kv_tombstones_collected_total',
      'Tombstones collected after tombstoneGcMs, once every replica of the key held them.',
      () => stats.tombstonesCollected,
    )
    new Gauge({
      name: 'kv_tombstones_awaiting_replicas',
      help: 'Tombstones old enough to collect, kept because a replica of the key has not confirmed it holds them (it is down or cut off).',
      registers,
      collect() {
        this.set(stats.tombstonesAwaitingReplicas)
      },
    })
    counter(
      'kv_forwarded_writes_total',
      'Writes this member forwarded to a replica of the key.',
      () => stats.forwardedWrites,
    )
    new Gauge({
      name: 'kv_ring_version',
      help: 'Version of the ring this member holds (leaderless); 0 before a joining member has learned it.',
      registers,
      collect() {
        this.set(engine.ringVersion ?? 0)
      },
    })
    new Gauge({
      name: 'kv_ring_changes_in_flight',
      help: 'Ring changes (a join, leave or replace) this member sees in flight: 0 or 1.',
      registers,
      collect() {
        this.set(engine.handoffs?.().length ?? 0)
      },
    })
    counter(
      'kv_handoff_keys_streamed_total',
      'Keys a ring handoff this member drove streamed (pulled by a joining or replacing member, pushed by a leaving one).',
      () => stats.handoffKeysStreamed,
    )
    counter(
      'kv_handoff_bytes_streamed_total',
      'Bytes of keys and values a ring handoff this member drove streamed.',
      () => stats.handoffBytesStreamed,
    )
    counter(
      'kv_ring_stale_refusals_total',
      'Peer requests refused because their sender held an older ring (KV_ERR_STALE_RING); the sender learns the newer one and retries.',
      () => stats.staleRingRefusals,
    )
    new Counter({
      name: 'kv_quorum_failures_total',
      help: 'Reads and writes answered KV_ERR_QUORUM_UNAVAILABLE.',
      labelNames: ['op'],
      registers,
      collect() {
        this.reset()
        this.inc({ op: 'read' }, stats.quorumFailures.read)
        this.inc({ op: 'write' }, stats.quorumFailures.write)
      },
    })
    new Gauge({
      name: 'kv_member_up',
      help: '1 while this member can reach the member.',
      labelNames: ['member'],
      registers,
      collect() {
        this.reset()
        for (const m of engine.members) this.set({ member: m.id }, engine.isUp(m.id) ? 1 : 0)
      },
    })
  }

  /** Sharding: owned and fenced slots, moves, fences and refusals. */
  watchShards(shards: Shards): void {
    const registers = [this.registry]
    new Gauge({
      name: 'kv_shard_slots',
      help: 'Hash slots this group owns (state=owned, fenced ones included) and of those, fenced for a move out (state=fenced).',
      labelNames: ['state'],
      registers,
      collect() {
        this.set({ state: 'owned' }, shards.state.ownedSlots())
        this.set({ state: 'fenced' }, shards.state.fencedSlots())
      },
    })
    new Gauge({
      name: 'kv_shard_map_version',
      help: 'The highest shard map version this group knows.',
      registers,
      collect() {
        this.set(shards.state.mapVersion)
      },
    })
    new Gauge({
      name: 'kv_shard_move_in_progress',
      help: '1 while a slot move out of this group is running, by phase.',
      labelNames: ['phase'],
      registers,
      collect() {
        this.reset()
        const move = shards.state.record.move
        if (move !== null) this.set({ phase: move.phase }, 1)
      },
    })
    new Counter({
      name: 'kv_shard_moves_total',
      help: 'Slot moves this node drove to their end, by outcome (done, aborted).',
      labelNames: ['outcome'],
      registers,
      collect() {
        this.reset()
        this.inc({ outcome: 'done' }, shards.mover.figures.moves.done)
        this.inc({ outcome: 'aborted' }, shards.mover.figures.moves.aborted)
      },
    })
    new Gauge({
      name: 'kv_shard_last_fence_seconds',
      help: 'How long the last slot move this node drove kept its slots fenced (no writes).',
      registers,
      collect() {
        const last = shards.mover.figures.fenceMs[shards.mover.figures.fenceMs.length - 1]
        this.set(last === undefined ? 0 : last / 1000)
      },
    })
    new Counter({
      name: 'kv_shard_refusals_total',
      help: 'Key operations refused: reason=wrong_shard (slot not owned here) or slot_moving (fenced).',
      labelNames: ['reason'],
      registers,
      collect() {
        this.reset()
        this.inc({ reason: 'wrong_shard' }, shards.state.wrongShardRefusals)
        this.inc({ reason: 'slot_moving' }, shards.state.slotMovingRefusals)
      },
    })
  }

  watchRegions(regions: Regions): void {
    const registers = [this.registry]
    new Gauge({
      name: 'kv_region_ship_lag_entries',
      help: "Regions (leader only): this region's committed log entries that region `to` has not confirmed yet.",
      labelNames: ['to'],
      registers,
      collect() {
        this.reset()
        for (const s of regions.shipping()) this.set({ to: s.to }, s.lagEntries)
      },
    })
    new Gauge({
      name: 'kv_region_ship_lag_seconds',
      help: "Regions (leader only): how long this region's oldest write not yet confirmed by region `to` has waited (0 when caught up).",
      labelNames: ['to'],
      registers,
      collect() {
        this.reset()
        for (const s of regions.shipping()) this.set({ to: s.to }, s.lagMs / 1000)
      },
    })
    new Counter({
      name: 'kv_region_shipped_entries_total',
      help: "Regions: log entries with this region's writes that this node, as leader, shipped to region `to` and saw confirmed.",
      labelNames: ['to'],
      registers,
      collect() {
        this.reset()
        for (const s of regions.shipping()) this.inc({ to: s.to }, s.shippedEntries)
      },
    })
    new Counter({
      name: 'kv_region_applied_entries_total',
      help: 'Regions: entries of region `from` that this node, as leader, applied (each once).',
      labelNames: ['from'],
      registers,
      collect() {
        this.reset()
        for (const [from, n] of regions.receiver.figures.appliedEntries) this.inc({ from }, n)
      },
    })
    new Counter({
      name: 'kv_region_conflicts_total',
      help: 'Regions: conflicts between concurrent writes of two regions that this node, as leader, resolved and recorded; outcome=local_lost (the shipped write won) or remote_lost (it lost).',
      labelNames: ['outcome'],
      registers,
      collect() {
        this.reset()
        const c = regions.receiver.figures.conflicts
        this.inc({ outcome: 'local_lost' }, c.local_lost)
        this.inc({ outcome: 'remote_lost' }, c.remote_lost)
      },
    })
    new Counter({
      name: 'kv_region_tombstones_collected_total',
      help: 'Regions: tombstones this node, as leader, deleted outright once every other region had caught up past them (regionTombstoneGcMs).',
      registers,
      collect() {
        this.reset()
        this.inc(regions.tombstones.collected)
      },
    })
    new Gauge({
      name: 'kv_region_tombstones',
      help: "Regions: tombstones the leader's last collection pass kept (too young, or some region has not caught up past them).",
      registers,
      collect() {
        this.set(regions.tombstones.kept)
      },
    })
    new Gauge({
      name: 'kv_region_conflict_records',
      help: 'Regions: conflict records this region keeps (GET /admin/v1/conflicts), at most regionConflictsMax.',
      registers,
      collect() {
        this.set(regions.conflictRecords)
      },
    })
  }

  watchReplicator(replicator: Replicator): void {
    const registers = [this.registry]
    const perMember = (
      name: string,
      help: string,
      read: (view: ReturnType<Replicator['clusterView']>['members'][number]) => number,
    ) =>
      new Gauge({
        name,
        help,
        labelNames: ['member'],
        registers,
        collect() {
          this.reset()
          for (const member of replicator.clusterView().members)
            this.set({ member: member.id }, read(member))
        },
      })
    perMember(
      'kv_replication_lag_entries',
      'Entries a member is behind the leader.',
      (m) => m.lagEntries,
    )
    perMember(
      'kv_replication_lag_seconds',
      'How long the oldest entry a member lacks has existed.',
      (m) => m.lagMs / 1000,
    )
    perMember(
      'kv_replication_acked_lsn',
      'Highest LSN a member acknowledged durable.',
      (m) => m.ackedLsn,
    )
    perMember(
      'kv_replication_connected',
      '1 when the replication stream to the member is up.',
      (m) => (m.connected ? 1 : 0),
    )
    new Gauge({
      name: 'kv_membership_members',
      help: 'Members of the configuration in effect on this node, by role (voter, learner).',
      labelNames: ['role'],
      registers,
      collect() {
        const members = replicator.currentConfig().members
        this.set({ role: 'voter' }, members.filter((m) => m.voter).length)
        this.set({ role: 'learner' }, members.filter((m) => !m.voter).length)
      },
    })
    new Gauge({
      name: 'kv_membership_config_lsn',
      help: 'LSN of the log entry that made the configuration in effect (0: the one --members seeded).',
      registers,
      collect() {
        this.set(replicator.membershipLsn)
      },
    })
    new Gauge({
      name: 'kv_membership_change_in_progress',
      help: '1 while a configuration change is in the log but not committed.',
      registers,
      collect() {
        this.set(replicator.membershipChangeInProgress ? 1 : 0)
      },
    })
    new Gauge({
      name: 'kv_membership_removed',
      help: '1 when this node was removed from the cluster (it serves no data; stop it).',
      registers,
      collect() {
        this.set(replicator.removedFromCluster ? 1 : 0)
      },
    })
    new Gauge({
      name: 'kv_replication_is_leader',
      help: '1 on the leader, 0 on a follower.',
      registers,
      collect() {
        this.set(replicator.isLeader ? 1 : 0)
      },
    })
    new Counter({
      name: 'kv_replication_entries_shipped_total',
      help: 'Log entries the leader sent to each follower.',
      labelNames: ['member'],
      registers,
      collect() {
        this.reset()
        for (const [member, count] of replicator.stats.entriesShipped) this.inc({ member }, count)
      },
    })
    new Counter({
      name: 'kv_replication_append_frames_total',
      help: 'Append frames carrying entries the leader sent to each follower.',
      labelNames: ['member'],
      registers,
      collect() {
        this.reset()
        for (const [member, count] of replicator.stats.appendFramesShipped)
          this.inc({ member }, count)
      },
    })
    new Counter({
      name: 'kv_replication_bytes_shipped_total',
      help: 'Bytes of frames sent to each peer.',
      labelNames: ['member'],
      registers,
      collect() {
        this.reset()
        for (const [member, bytes] of replicator.bytesSent()) this.inc({ member }, bytes)
      },
    })
    const counter = (name: string, help: string, read: () => number) =>
      new Counter({
        name,
        help,
        registers,
        collect() {
          this.reset()
          this.inc(read())
        },
      })
    counter(
      'kv_replication_ack_timeouts_total',
      'Writes answered KV_ERR_ACK_TIMEOUT.',
      () => replicator.stats.ackTimeouts,
    )
    counter(
      'kv_replication_snapshots_sent_total',
      'Snapshots the leader sent.',
      () => replicator.stats.snapshotsSent,
    )
    counter(
      'kv_replication_snapshots_installed_total',
      'Snapshots this node installed.',
      () => replicator.stats.snapshotsInstalled,
    )
    counter(
      'kv_replication_bad_frames_total',
      'Frames from peers that failed validation.',
      () => replicator.stats.badFrames,
    )
    counter(
      'kv_elections_started_total',
      'Elections this node started (pre-votes that won and became votes).',
      () => replicator.stats.electionsStarted,
    )
    counter(
      'kv_epoch_messages_dropped_total',
      'Peer messages the replication core dropped for their epoch: out of range, or too far above its own to take from one message.',
      () => replicator.stats.epochMessagesDropped,
    )
    counter(
      'kv_elections_won_total',
      'Elections this node won.',
      () => replicator.stats.electionsWon,
    )
    counter(
      'kv_leader_step_downs_total',
      'Times this node stopped leading (a higher epoch, or no majority heard in time).',
      () => replicator.stats.stepDowns,
    )
    counter(
      'kv_rollback_entries_total',
      'Log entries this node removed because a new leader did not have them (see GET /admin/v1/rollbacks).',
      () => replicator.rolledBack,
    )
    new Gauge({
      name: 'kv_rollback_records',
      help: 'Rollback records held for an operator to reconcile.',
      registers,
      collect() {
        this.set(replicator.rollbackRecords)
      },
    })
  }
}

/** One metric as GET /metrics serves it (docs/reference/metrics.md is generated from these). */
export interface MetricInfo {
  name: string
  type: 'counter' | 'gauge' | 'histogram' | 'summary'
  help: string
  labels: string[]
  /** Which nodes serve it: every node, or only the nodes of one cluster mode. */
  scope: 'every node' | 'single-leader' | 'sharded' | 'regions' | 'leaderless'
  /** `process`: Node.js process metrics, prom-client's defaults under the `kv_` prefix. */
  origin: 'kvstore' | 'process'
}

interface RegisteredMetric {
  name: string
  help: string
  type?: string
  labelNames?: readonly string[]
}

function metricType(metric: RegisteredMetric): MetricInfo['type'] {
  if (metric instanceof Counter) return 'counter'
  if (metric instanceof Gauge) return 'gauge'
  if (metric instanceof Histogram) return 'histogram'
  if (metric instanceof Summary) return 'summary'
  const type = metric.type
  if (type === 'counter' || type === 'gauge' || type === 'histogram' || type === 'summary')
    return type
  throw new Error(`metric ${metric.name} has no known type`)
}

function registered(registry: Registry): RegisteredMetric[] {
  return registry.getMetricsAsArray() as unknown as RegisteredMetric[]
}

/**
 * Every metric a node registers, read from the registries that the code above fills, the way
 * node.ts fills them: what every node registers, then what the replicator (single-leader) and
 * the leaderless engine add. Registration reads nothing from the replicator or the engine
 * but the engine's stats object, so stand-ins do; nothing is scraped.
 */
export function metricsCatalog(): MetricInfo[] {
  const defaults = new Registry()
  collectDefaultMetrics({ register: defaults, prefix: 'kv_' })
  const processNames = new Set(registered(defaults).map((m) => m.name))
  const everyNode = new NodeMetrics()
  everyNode.watchBodies(() => 0)
  everyNode.watchStore(() => null)
  const singleLeader = new NodeMetrics()
  singleLeader.watchReplicator({} as unknown as Replicator)
  singleLeader.watchWatches(() => ({
    watchers: 0,
    eventsSent: 0,
    tooSlow: 0,
    logReads: 0,
    tailBytes: 0,
  }))
  singleLeader.watchOutbox({
    entries: 0,
    bytes: 0,
    oldestAgeMs: () => 0,
    figures: {
      forwarded: { applied: 0, failed: 0, retry: 0 },
      refused: { entries: 0, bytes: 0, age: 0 },
    },
  })
  singleLeader.watchResp(new RespStats())
  singleLeader.watchLeases({
    size: 0,
    stats: { granted: 0, expired: 0, revoked: 0, promotions: 0 },
  })
  const sharded = new NodeMetrics()
  sharded.watchShards({} as unknown as Shards)
  const regional = new NodeMetrics()
  regional.watchRegions({} as unknown as Regions)
  const leaderless = new NodeMetrics()
  leaderless.watchLeaderless({ stats: {} } as unknown as LeaderlessEngine)
  const catalog: MetricInfo[] = []
  const seen = new Set<string>()
  const add = (registry: Registry, scope: MetricInfo['scope']) => {
    for (const metric of registered(registry)) {
      if (seen.has(metric.name)) continue
      seen.add(metric.name)
      catalog.push({
        name: metric.name,
        type: metricType(metric),
        help: metric.help,
        labels: [...(metric.labelNames ?? [])],
        scope,
        origin: processNames.has(metric.name) ? 'process' : 'kvstore',
      })
    }
  }
  add(everyNode.registry, 'every node')
  add(singleLeader.registry, 'single-leader')
  add(sharded.registry, 'sharded')
  add(regional.registry, 'regions')
  add(leaderless.registry, 'leaderless')
  return catalog
}
