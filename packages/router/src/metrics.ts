/**
 * The router's Prometheus metrics (GET /metrics, text format 0.0.4). Counters are plain
 * numbers in maps keyed by their labels, resolved without building strings on the hot path;
 * the text is made only when scraped. Every label takes values from a bounded set: routes are
 * the router's own, groups and members come from the directory, outcomes are HTTP statuses.
 */
import type { ReplicaState } from './health.js'
import { replicaStates } from './health.js'

const latencyBucketsSeconds = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10,
]

class Histogram {
  readonly buckets = new Float64Array(latencyBucketsSeconds.length)
  sum = 0
  count = 0

  observe(seconds: number): void {
    this.sum += seconds
    this.count++
    for (let i = 0; i < latencyBucketsSeconds.length; i++) {
      if (seconds <= (latencyBucketsSeconds[i] as number)) {
        this.buckets[i] = (this.buckets[i] as number) + 1
        return
      }
    }
  }
}

/** A counter per combination of labels, the labels given as a fixed-length tuple. */
class LabelledCounter {
  private readonly values = new Map<string, { labels: string[]; value: number }>()

  inc(labels: string[], by = 1): void {
    const key = labels.join('\u0000')
    const entry = this.values.get(key)
    if (entry === undefined) this.values.set(key, { labels, value: by })
    else entry.value += by
  }

  entries(): Iterable<{ labels: string[]; value: number }> {
    return this.values.values()
  }
}

/** What /metrics reads of the live state when scraped. */
export interface MetricsSource {
  mapVersion(): number
  inflightRequests(): number
  inflightBodyBytes(): number
  groups(): {
    id: string
    leader: string | null
    members: { id: string; state: ReplicaState; lagMs: number }[]
  }[]
}

function escape(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')
}

function labelText(names: readonly string[], values: readonly (string | number)[]): string {
  if (names.length === 0) return ''
  return `{${names.map((n, i) => `${n}="${escape(String(values[i]))}"`).join(',')}}`
}

export class RouterMetrics {
  /** route -> group -> status -> count. */
  private readonly requests = new Map<string, Map<string, Map<number, number>>>()
  /** `${group}\0${kind}` -> latency of answers from nodes. */
  private readonly upstream = new Map<string, { group: string; kind: string; h: Histogram }>()
  readonly upstreamFailures = new LabelledCounter()
  readonly retries = new LabelledCounter()
  readonly ejections = new LabelledCounter()
  readonly rateLimited = new LabelledCounter()
  readonly mapRefreshes = new LabelledCounter()
  readonly connectionsRefused = new LabelledCounter()
  readonly errors = new LabelledCounter()

  /** The recorder of one route, resolved once when the route is registered. */
  forRoute(route: string): (group: string, status: number) => void {
    let byGroup = this.requests.get(route)
    if (byGroup === undefined) {
      byGroup = new Map()
      this.requests.set(route, byGroup)
    }
    const groups = byGroup
    return (group, status) => {
      let byStatus = groups.get(group)
      if (byStatus === undefined) {
        byStatus = new Map()
        groups.set(group, byStatus)
      }
      byStatus.set(status, (byStatus.get(status) ?? 0) + 1)
    }
  }

  /** Time a node took to answer (`kind`: read, write, list, probe, shards). */
  observeUpstream(group: string, kind: string, seconds: number): void {
    const key = `${group}\u0000${kind}`
    let entry = this.upstream.get(key)
    if (entry === undefined) {
      entry = { group, kind, h: new Histogram() }
      this.upstream.set(key, entry)
    }
    entry.h.observe(seconds)
  }

  render(source: MetricsSource): string {
    const out: string[] = []
    const header = (name: string, type: string, help: string) => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`)
    }
    const counter = (name: string, help: string, names: string[], c: LabelledCounter) => {
      header(name, 'counter', help)
      for (const { labels, value } of c.entries())
        out.push(`${name}${labelText(names, labels)} ${value}`)
    }

    header(
      'kv_router_requests_total',
      'counter',
      'Requests answered, by route, group (none for requests no group served) and HTTP status.',
    )
    for (const [route, groups] of this.requests)
      for (const [group, statuses] of groups)
        for (const [status, value] of statuses)
          out.push(
            `kv_router_requests_total${labelText(['route', 'group', 'status'], [route, group, status])} ${value}`,
          )

    header(
      'kv_router_upstream_duration_seconds',
      'histogram',
      'Time a node took to answer one request of the router, by group and kind (read, write, list, probe, shards).',
    )
    for (const { group, kind, h } of this.upstream.values()) {
      let cumulative = 0
      latencyBucketsSeconds.forEach((le, i) => {
        cumulative += h.buckets[i] as number
        out.push(
          `kv_router_upstream_duration_seconds_bucket${labelText(['group', 'kind', 'le'], [group, kind, le])} ${cumulative}`,
        )
      })
      out.push(
        `kv_router_upstream_duration_seconds_bucket${labelText(['group', 'kind', 'le'], [group, kind, '+Inf'])} ${h.count}`,
        `kv_router_upstream_duration_seconds_sum${labelText(['group', 'kind'], [group, kind])} ${h.sum}`,
        `kv_router_upstream_duration_seconds_count${labelText(['group', 'kind'], [group, kind])} ${h.count}`,
      )
    }
    counter(
      'kv_router_upstream_failures_total',
      'Requests to a node that got no answer (unreachable, timeout, too_large), by group and member.',
      ['group', 'member', 'reason'],
      this.upstreamFailures,
    )
    counter(
      'kv_router_retries_total',
      'Requests sent again, by why (unreachable, not_leader, election, wrong_shard, slot_moving, replica_behind, follower_failed).',
      ['reason'],
      this.retries,
    )
    counter(
      'kv_router_ejections_total',
      'Members ejected by passive outlier detection (failures in a row), by group and member.',
      ['group', 'member'],
      this.ejections,
    )
    counter(
      'kv_router_rate_limited_total',
      'Requests refused with KV_ERR_RATE_LIMITED, by which limit (address, credential).',
      ['limit'],
      this.rateLimited,
    )
    counter(
      'kv_router_map_refreshes_total',
      'Shard map refreshes, by what started them (periodic, wrong_shard, session) and result (changed, unchanged, failed).',
      ['trigger', 'result'],
      this.mapRefreshes,
    )
    counter(
      'kv_router_connections_refused_total',
      'Client connections closed at once, by why (per_ip, total, handshake, rapid_reset).',
      ['reason'],
      this.connectionsRefused,
    )
    counter(
      'kv_router_errors_total',
      'Errors the router answered itself, by code.',
      ['code'],
      this.errors,
    )

    header('kv_router_map_version', 'gauge', 'Version of the shard map in use.')
    out.push(`kv_router_map_version ${source.mapVersion()}`)
    header('kv_router_inflight_requests', 'gauge', 'Requests being proxied now.')
    out.push(`kv_router_inflight_requests ${source.inflightRequests()}`)
    header('kv_router_inflight_body_bytes', 'gauge', 'Request-body bytes held now.')
    out.push(`kv_router_inflight_body_bytes ${source.inflightBodyBytes()}`)

    const groups = source.groups()
    header(
      'kv_router_replica_state',
      'gauge',
      'Health of each member (1 for its current state): unknown, healthy, lagging, unresponsive, ejected.',
    )
    for (const g of groups)
      for (const m of g.members)
        for (const state of replicaStates)
          out.push(
            `kv_router_replica_state${labelText(['group', 'member', 'state'], [g.id, m.id, state])} ${m.state === state ? 1 : 0}`,
          )
    header('kv_router_replica_lag_seconds', 'gauge', 'Lag of each member behind its leader.')
    for (const g of groups)
      for (const m of g.members)
        out.push(
          `kv_router_replica_lag_seconds${labelText(['group', 'member'], [g.id, m.id])} ${m.lagMs / 1000}`,
        )
    header('kv_router_group_leader', 'gauge', 'The leader of each group as the router knows it.')
    for (const g of groups)
      out.push(
        `kv_router_group_leader${labelText(['group', 'member'], [g.id, g.leader ?? 'none'])} 1`,
      )
    return `${out.join('\n')}\n`
  }
}
