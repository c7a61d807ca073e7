/**
 * What a leader knows of one follower, and every way that knowledge may change.
 *
 * As in etcd's `tracker/progress.go`, a follower is in one of three states:
 * - `probe`: the leader does not know where the follower's log matches its own. It sends one
 *   Append at a time and waits for the answer (or a probe timeout) before sending another.
 * - `replicate`: the follower's log matches up to `matchLsn`. The leader streams Appends
 *   optimistically (`nextLsn` moves on as soon as one is sent), within an in-flight window.
 * - `snapshot`: the entries the follower needs were compacted away. The leader sends a
 *   snapshot and nothing else until the follower acknowledges it.
 *
 * Only the methods below move a follower between states; the core never edits the fields.
 * The class is pure: ticks and LSNs come in as arguments.
 */
import { invariant } from './invariant.js'

export type ProgressState = 'probe' | 'replicate' | 'snapshot'

/** One Append in flight: its last LSN and its entry bytes. */
export interface Inflight {
  lastLsn: number
  bytes: number
}

export class Progress {
  /** Highest LSN known durable on the follower and matching the leader's log. */
  matchLsn = 0
  /** Next LSN to send. */
  nextLsn: number
  state: ProgressState = 'probe'
  /** Whether a stream to the follower is up. */
  connected = false
  /** Tick of the probe in flight, or null. */
  probeSentTick: number | null = null
  /** Waiting for entries loaded from disk. */
  loading = false
  /** Last LSN and bytes of each Append in flight, oldest first. */
  readonly inflight: Inflight[] = []
  inflightBytes = 0
  /** Tick of the last message heard from the follower. */
  lastContactTick = -1
  /** Times the follower was found to have lost entries it had acknowledged. */
  regressions = 0
  /** Tick of the last acknowledgement that freed in-flight appends (or of the last send). */
  lastAckTick = 0

  constructor(nextLsn: number, connected = false) {
    invariant(Number.isSafeInteger(nextLsn) && nextLsn >= 1, `next LSN ${nextLsn} is not valid`)
    this.nextLsn = nextLsn
    this.connected = connected
  }

  // ------------------------------------------------------------------ state transitions

  /** Back to one Append at a time, from where the follower last answered. */
  becomeProbe(): void {
    this.state = 'probe'
    this.probeSentTick = null
    this.resetInflight()
  }

  /** The follower's log matches up to `matchLsn`: stream from just after it. */
  becomeReplicate(): void {
    this.state = 'replicate'
    this.probeSentTick = null
    this.resetInflight()
    this.nextLsn = this.matchLsn + 1
  }

  /** The follower needs a snapshot; nothing else is sent until it acknowledges one. */
  becomeSnapshot(): void {
    this.state = 'snapshot'
    this.probeSentTick = null
    this.resetInflight()
  }

  // ------------------------------------------------------------------ events

  /** A stream to the follower came up: probe from where it stands, within `leaderLastLsn`. */
  connect(leaderLastLsn: number): void {
    this.connected = true
    this.loading = false
    this.becomeProbe()
    this.nextLsn = Math.max(this.matchLsn + 1, Math.min(this.nextLsn, leaderLastLsn + 1))
  }

  /** The stream broke: nothing in flight will be answered. A snapshot still owed stays owed. */
  disconnect(): void {
    this.connected = false
    this.loading = false
    if (this.state === 'snapshot') {
      this.probeSentTick = null
      this.resetInflight()
    } else {
      this.becomeProbe()
    }
  }

  /** A message from the follower arrived at `tick`. */
  heardFrom(tick: number): void {
    this.lastContactTick = tick
  }

  /**
   * The follower accepted entries up to `matchLsn` (capped at the leader's `leaderLastLsn`)
   * at `tick`. Frees what it acknowledged, and leaves probe or snapshot for replicate.
   */
  maybeUpdate(matchLsn: number, leaderLastLsn: number, tick: number): void {
    if (matchLsn > this.matchLsn) this.matchLsn = Math.min(matchLsn, leaderLastLsn)
    this.freeUpTo(this.matchLsn)
    this.lastAckTick = tick
    if (this.nextLsn <= this.matchLsn) this.nextLsn = this.matchLsn + 1
    if (this.state !== 'replicate') this.becomeReplicate()
  }

  /**
   * A heartbeat's answer says the follower holds `matchLsn`; taken only within the leader's
   * log. True when the match moved (the commit LSN may move with it).
   */
  heartbeatMatch(matchLsn: number, leaderLastLsn: number): boolean {
    if (matchLsn <= this.matchLsn || matchLsn > leaderLastLsn) return false
    this.matchLsn = matchLsn
    this.freeUpTo(this.matchLsn)
    return true
  }

  /**
   * The follower refused an Append: its log does not hold `hintLsn - 1` as the leader's does
   * (or it holds up to `matchLsn` only). Back to probe (a snapshot owed stays owed), and
   * `nextLsn` moves back toward the hint, never below the match nor past the leader's log.
   * A hint at or below the match means the follower lost entries it had acknowledged (its
   * disk lost them, or it was rebuilt): it is believed, or the leader would probe past its log
   * end forever. Returns true in that case.
   */
  maybeDecrTo(matchLsn: number, hintLsn: number, leaderLastLsn: number): boolean {
    if (this.state === 'snapshot') {
      this.probeSentTick = null
      this.resetInflight()
    } else {
      this.becomeProbe()
    }
    let regressed = false
    if (hintLsn <= this.matchLsn) {
      this.matchLsn = Math.max(0, Math.min(matchLsn, hintLsn - 1))
      this.regressions++
      regressed = true
    }
    this.matchLsn = Math.max(this.matchLsn, Math.min(matchLsn, leaderLastLsn))
    this.nextLsn = Math.max(
      this.matchLsn + 1,
      Math.min(hintLsn, this.nextLsn - 1, leaderLastLsn + 1),
    )
    return regressed
  }

  /**
   * An Append of entries ending at `lastLsn` (`bytes` of them) left at `tick`. In probe, it is
   * the one probe in flight; in replicate, `nextLsn` moves past it at once (the optimistic
   * update) and it takes its place in the window. An empty Append in replicate changes nothing.
   * (Entries loaded from disk may still go out after the follower asked for a snapshot; they
   * are counted as in replicate, and the follower refuses them.)
   */
  sentEntries(lastLsn: number | null, bytes: number, tick: number): void {
    if (this.state === 'probe') {
      this.probeSentTick = tick
      return
    }
    if (lastLsn === null) return
    invariant(
      lastLsn >= this.nextLsn,
      () => `append ending at ${lastLsn} is behind ${this.nextLsn}`,
    )
    if (this.inflight.length === 0) this.lastAckTick = tick
    this.inflight.push({ lastLsn, bytes })
    this.inflightBytes += bytes
    this.nextLsn = lastLsn + 1
  }

  /** Entries for `nextLsn` on must be read from disk first. */
  startLoading(): void {
    this.loading = true
  }

  /** The entries asked for were loaded (or could not be). */
  loaded(): void {
    this.loading = false
  }

  /** A snapshot stream to the follower failed: probe again. False when none was owed. */
  snapshotFailed(): boolean {
    if (this.state !== 'snapshot') return false
    this.becomeProbe()
    return true
  }

  // ------------------------------------------------------------------ queries

  /**
   * Whether nothing more may be sent now: no stream, entries being loaded, a snapshot owed, a
   * probe unanswered, or the in-flight window full.
   */
  isPaused(inflightAppendsMax: number, inflightBytesMax: number): boolean {
    if (!this.connected || this.loading) return true
    switch (this.state) {
      case 'probe':
        return this.probeSentTick !== null
      case 'replicate':
        return this.inflight.length >= inflightAppendsMax || this.inflightBytes >= inflightBytesMax
      case 'snapshot':
        return true
    }
  }

  /** A probe went unanswered for `timeoutTicks`: it may be sent again (and is forgotten). */
  probeTimedOut(tick: number, timeoutTicks: number): boolean {
    if (this.state !== 'probe' || this.probeSentTick === null) return false
    if (tick - this.probeSentTick < timeoutTicks) return false
    this.probeSentTick = null
    return true
  }

  /**
   * Appends in flight went unanswered for `timeoutTicks`: some were lost on the way (or their
   * answers were). Probes from the acknowledged match again rather than wait forever.
   */
  retransmitDue(tick: number, timeoutTicks: number): boolean {
    if (this.state !== 'replicate' || this.inflight.length === 0) return false
    if (tick - this.lastAckTick < timeoutTicks) return false
    this.becomeProbe()
    this.nextLsn = this.matchLsn + 1
    return true
  }

  // ------------------------------------------------------------------ the window

  private freeUpTo(lsn: number): void {
    while (this.inflight.length > 0 && (this.inflight[0] as Inflight).lastLsn <= lsn) {
      this.inflightBytes -= (this.inflight.shift() as Inflight).bytes
    }
  }

  private resetInflight(): void {
    this.inflight.length = 0
    this.inflightBytes = 0
  }
}
