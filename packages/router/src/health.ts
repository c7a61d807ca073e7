/**
 * The health of one replica as the router sees it: a small state machine, fed by active probes
 * (GET /v1/cluster every --probe-interval-ms) and by the outcome of the requests it proxies
 * (passive outlier detection). Pure: the caller passes the time in, so tests drive it with a
 * fake clock.
 *
 *   unknown ──probe ok──▶ healthy ◀──lag back under the bound──▶ lagging
 *      │                    │  ▲
 *      │          probe fails│  │probe ok
 *      ▼                    ▼  │
 *   unresponsive ◀──────────────┘
 *
 *   any ──N request failures in a row──▶ ejected ──(time up) and probe ok──▶ healthy/lagging
 *
 * Only `healthy` replicas take reads. An ejection lasts --eject-ms, doubled for each ejection
 * that follows soon after the last re-admission (a flapping replica stays out longer), up to
 * --eject-ms-max.
 */

export type ReplicaState = 'unknown' | 'healthy' | 'lagging' | 'unresponsive' | 'ejected'

export const replicaStates: readonly ReplicaState[] = [
  'unknown',
  'healthy',
  'lagging',
  'unresponsive',
  'ejected',
]

export interface HealthOptions {
  /** A replica lagging more than this takes no reads. */
  maxLagMs: number
  /** Request failures in a row that eject a replica. */
  ejectFailures: number
  /** How long a first ejection lasts. */
  ejectMs: number
  ejectMsMax: number
}

/** What a successful probe says of the replica. */
export interface ProbeReport {
  /** Its lag behind the leader (the leader's measure when it answered, else its own). */
  lagMs: number
  /** The leader's stream to it is up (true when the leader did not say). */
  connected: boolean
}

export class ReplicaHealth {
  private readonly options: HealthOptions
  /** null until the first probe answers or fails. */
  private probeOk: boolean | null = null
  private consecutiveFailures = 0
  /** 0 when not ejected. */
  private ejectedUntilMs = 0
  /** Ejections since the replica last stayed in for a whole --eject-ms-max. */
  private ejectionsInARow = 0
  private readmittedAtMs = -Infinity
  /** Lag as last reported, by a probe or by a read's kv-lag-ms header. */
  lagMs = 0
  connected = true
  ejectionsTotal = 0
  /** When the state last changed (ms, the caller's clock). */
  changedAtMs = 0

  constructor(options: HealthOptions) {
    this.options = options
  }

  get state(): ReplicaState {
    if (this.ejectedUntilMs !== 0) return 'ejected'
    if (this.probeOk === null) return 'unknown'
    if (!this.probeOk) return 'unresponsive'
    if (this.lagMs > this.options.maxLagMs || !this.connected) return 'lagging'
    return 'healthy'
  }

  /** Takes reads now. */
  get readable(): boolean {
    return this.state === 'healthy'
  }

  /** Reachable enough to try (for writes and as the last resort of reads). */
  get reachable(): boolean {
    return this.ejectedUntilMs === 0 && this.probeOk !== false
  }

  get ejectedUntil(): number {
    return this.ejectedUntilMs
  }

  get failuresInARow(): number {
    return this.consecutiveFailures
  }

  /** A request it served succeeded. Returns true when the state changed. */
  onRequestSuccess(nowMs: number): boolean {
    this.consecutiveFailures = 0
    return this.touch(nowMs, this.state)
  }

  /**
   * A request to it failed (unreachable, timed out, shutting down, not ready). Returns true
   * when this ejected it.
   */
  onRequestFailure(nowMs: number): boolean {
    this.consecutiveFailures++
    if (this.ejectedUntilMs !== 0 || this.consecutiveFailures < this.options.ejectFailures)
      return false
    const before = this.state
    this.ejectionsInARow =
      nowMs - this.readmittedAtMs < this.options.ejectMsMax ? this.ejectionsInARow + 1 : 0
    const ms = Math.min(
      this.options.ejectMsMax,
      this.options.ejectMs * 2 ** Math.min(this.ejectionsInARow, 30),
    )
    this.ejectedUntilMs = Math.max(1, nowMs + ms)
    this.ejectionsTotal++
    this.touch(nowMs, before)
    return true
  }

  /** A read reported the replica's lag (the kv-lag-ms header). Returns true on a state change. */
  onLagReport(nowMs: number, lagMs: number): boolean {
    const before = this.state
    this.lagMs = lagMs
    return this.touch(nowMs, before)
  }

  /** A probe answered. Returns true when the state changed. */
  onProbeSuccess(nowMs: number, report: ProbeReport): boolean {
    const before = this.state
    this.probeOk = true
    this.lagMs = report.lagMs
    this.connected = report.connected
    if (this.ejectedUntilMs !== 0 && nowMs >= this.ejectedUntilMs) {
      this.ejectedUntilMs = 0
      this.consecutiveFailures = 0
      this.readmittedAtMs = nowMs
    }
    return this.touch(nowMs, before)
  }

  /** A probe failed or timed out. Returns true when the state changed. */
  onProbeFailure(nowMs: number): boolean {
    const before = this.state
    this.probeOk = false
    return this.touch(nowMs, before)
  }

  private touch(nowMs: number, before: ReplicaState): boolean {
    if (this.state === before) return false
    this.changedAtMs = nowMs
    return true
  }
}
