/**
 * Prometheus metrics, served at GET /metrics. Names follow Prometheus conventions: a `kv_`
 * prefix, base units (seconds, bytes) and `_total` on counters.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { BatchStats, Store } from '@kvstore/storage'

export class NodeMetrics {
  readonly registry = new Registry()
  readonly httpRequests: Counter<'route' | 'method' | 'status'>
  readonly httpDuration: Histogram<'route' | 'method'>
  readonly errors: Counter<'code'>
  readonly writes: Counter<'kind'>
  readonly batchEntries: Histogram
  readonly batchSeconds: Histogram

  constructor() {
    const registers = [this.registry]
    collectDefaultMetrics({ register: this.registry, prefix: 'kv_' })
    this.httpRequests = new Counter({
      name: 'kv_http_requests_total',
      help: 'HTTP requests answered, by route, method and status.',
      labelNames: ['route', 'method', 'status'],
      registers,
    })
    this.httpDuration = new Histogram({
      name: 'kv_http_request_duration_seconds',
      help: 'Time from receiving a request to sending its response.',
      labelNames: ['route', 'method'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    })
    this.errors = new Counter({
      name: 'kv_errors_total',
      help: 'Error responses, by stable error code.',
      labelNames: ['code'],
      registers,
    })
    this.writes = new Counter({
      name: 'kv_writes_total',
      help: 'Writes made durable, by kind (put, delete, batch).',
      labelNames: ['kind'],
      registers,
    })
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
    gauge('kv_log_start_lsn', 'First LSN still in the log (older entries were compacted).', (s) => s.meta.logStartLsn)
    gauge('kv_epoch', 'Highest epoch this node has seen.', (s) => s.meta.epoch)
    gauge('kv_write_queue_writes', 'Writes waiting for the disk.', (s) => s.queueDepth.writes)
    gauge('kv_write_queue_bytes', 'Bytes of writes waiting for the disk.', (s) => s.queueDepth.bytes)
  }
}
