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
  // Only the methods below change these; the core and tests read them through the getters.
  private matchLsnValue = 0
  private nextLsnValue: number
  private stateValue: ProgressState = 'probe'
  private connectedValue = false
  private probeSentTickValue: number | null = null
  private loadingValue = false
  private readonly inflightValue: Inflight[] = []
  private inflightBytesValue = 0
  private lastContactTickValue = -1
  private regressionsValue = 0
  private lastAckTickValue = 0

  constructor(nextLsn: number, connected = false) {
    invariant(Number.isSafeInteger(nextLsn) && nextLsn >= 1, `next LSN ${nextLsn} is not valid`)
    this.nextLsnValue = nextLsn
    this.connectedValue = connected
  }

  /** Highest LSN known durable on the follower and matching the leader's log. */
  get matchLsn(): number {
    return this.matchLsnValue
  }

  /** Next LSN to send. */
  get nextLsn(): number {
    return this.nextLsnValue
  }

  get state(): ProgressState {
    return this.stateValue
  }

  /** Whether a stream to the follower is up. */
  get connected(): boolean {
    return this.connectedValue
  }

  /** Tick of the probe in flight, or null. */
  get probeSentTick(): number | null {
    return this.probeSentTickValue
  }

  /** Waiting for entries loaded from disk. */
  get loading(): boolean {
    return this.loadingValue
  }

  /** Last LSN and bytes of each Append in flight, oldest first. */
  get inflight(): readonly Readonly<Inflight>[] {
    return this.inflightValue
  }

  get inflightBytes(): number {
    return this.inflightBytesValue
  }

  /** Tick of the last message heard from the follower. */
  get lastContactTick(): number {
    return this.lastContactTickValue
  }

  /** Times the follower was found to have lost entries it had acknowledged. */
  get regressions(): number {
    return this.regressionsValue
  }

  /** Tick of the last acknowledgement that freed in-flight appends (or of the last send). */
  get lastAckTick(): number {
    return this.lastAckTickValue
  }

  // ------------------------------------------------------------------ state transitions

  /** Back to one Append at a time, from where the follower last answered. */
  becomeProbe(): void {
    this.stateValue = 'probe'
    this.probeSentTickValue = null
    this.resetInflight()
  }

  /** The follower's log matches up to `matchLsn`: stream from just after it. */
  becomeReplicate(): void {
    this.stateValue = 'replicate'
    this.probeSentTickValue = null
    this.resetInflight()
    this.nextLsnValue = this.matchLsnValue + 1
  }

  /** The follower needs a snapshot; nothing else is sent until it acknowledges one. */
  becomeSnapshot(): void {
    this.stateValue = 'snapshot'
    this.probeSentTickValue = null
    this.resetInflight()
  }

  // ------------------------------------------------------------------ events

  /** A stream to the follower came up: probe from where it stands, within `leaderLastLsn`. */
  connect(leaderLastLsn: number): void {
    this.connectedValue = true
    this.loadingValue = false
    this.becomeProbe()
    this.nextLsnValue = Math.max(
      this.matchLsnValue + 1,
      Math.min(this.nextLsnValue, leaderLastLsn + 1),
    )
  }

  /** The stream broke: nothing in flight will be answered. A snapshot still owed stays owed. */
  disconnect(): void {
    this.connectedValue = false
    this.loadingValue = false
    if (this.stateValue === 'snapshot') {
      this.probeSentTickValue = null
      this.resetInflight()
    } else {
      this.becomeProbe()
    }
  }

  /** A message from the follower arrived at `tick`. */
  heardFrom(tick: number): void {
    this.lastContactTickValue = tick
  }

  /**
   * The follower accepted entries up to `matchLsn` (capped at the leader's `leaderLastLsn`)
   * at `tick`. Frees what it acknowledged, and leaves probe or snapshot for replicate.
   */
  maybeUpdate(matchLsn: number, leaderLastLsn: number, tick: number): void {
    const before = this.matchLsnValue
    if (matchLsn > this.matchLsnValue) this.matchLsnValue = Math.min(matchLsn, leaderLastLsn)
    this.freeUpTo(this.matchLsnValue)
    // Only an acknowledgement that moves the match answers appends in flight: a repeated one
    // (a duplicate, or a follower re-reporting a snapshot) must not hold off `retransmitDue`.
    // An empty window needs no clock: `sentEntries` starts it with the next append.
    if (this.matchLsnValue > before || this.stateValue !== 'replicate') this.lastAckTickValue = tick
    if (this.nextLsnValue <= this.matchLsnValue) this.nextLsnValue = this.matchLsnValue + 1
    if (this.stateValue !== 'replicate') this.becomeReplicate()
  }

  /**
   * A heartbeat's answer says the follower holds `matchLsn`; taken only within the leader's
   * log. True when the match moved (the commit LSN may move with it).
   */
  heartbeatMatch(matchLsn: number, leaderLastLsn: number): boolean {
    if (matchLsn <= this.matchLsnValue || matchLsn > leaderLastLsn) return false
    this.matchLsnValue = matchLsn
    this.freeUpTo(this.matchLsnValue)
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
    if (this.stateValue === 'snapshot') {
      this.probeSentTickValue = null
      this.resetInflight()
    } else {
      this.becomeProbe()
    }
    let regressed = false
    if (hintLsn <= this.matchLsnValue) {
      this.matchLsnValue = Math.max(0, Math.min(matchLsn, hintLsn - 1))
      this.regressionsValue++
      regressed = true
    }
    this.matchLsnValue = Math.max(this.matchLsnValue, Math.min(matchLsn, leaderLastLsn))
    this.nextLsnValue = Math.max(
      this.matchLsnValue + 1,
      Math.min(hintLsn, this.nextLsnValue - 1, leaderLastLsn + 1),
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
    if (this.stateValue === 'probe') {
      this.probeSentTickValue = tick
      return
    }
    if (lastLsn === null) return
    invariant(
      lastLsn >= this.nextLsnValue,
      () => `append ending at ${lastLsn} is behind ${this.nextLsnValue}`,
    )
    if (this.inflightValue.length === 0) this.lastAckTickValue = tick
    this.inflightValue.push({ lastLsn, bytes })
    this.inflightBytesValue += bytes
    this.nextLsnValue = lastLsn + 1
  }

  /** Entries for `nextLsn` on must be read from disk first. */
  startLoading(): void {
    this.loadingValue = true
  }

  /** The entries asked for were loaded (or could not be). */
  loaded(): void {
    this.loadingValue = false
  }

  /**
   * A snapshot at `lsn` was streamed to the follower whole: probe from just past it (etcd's
   * ReportSnapshot). Its acknowledgement of the install may be lost, and the leader would wait
   * in this state for good; the probe's answer says where its log stands either way. False
   * when none was owed.
   */
  snapshotSent(lsn: number): boolean {
    if (this.stateValue !== 'snapshot') return false
    this.becomeProbe()
    this.nextLsnValue = Math.max(this.matchLsnValue + 1, lsn + 1)
    return true
  }

  /** A snapshot stream to the follower failed: probe again. False when none was owed. */
  snapshotFailed(): boolean {
    if (this.stateValue !== 'snapshot') return false
    this.becomeProbe()
    return true
  }

  // ------------------------------------------------------------------ queries

  /**
   * Whether nothing more may be sent now: no stream, entries being loaded, a snapshot owed, a
   * probe unanswered, or the in-flight window full.
   */
  isPaused(inflightAppendsMax: number, inflightBytesMax: number): boolean {
    if (!this.connectedValue || this.loadingValue) return true
    switch (this.stateValue) {
      case 'probe':
        return this.probeSentTickValue !== null
      case 'replicate':
        return (
          this.inflightValue.length >= inflightAppendsMax ||
          this.inflightBytesValue >= inflightBytesMax
        )
      case 'snapshot':
        return true
    }
  }

  /** A probe went unanswered for `timeoutTicks`: it may be sent again (and is forgotten). */
  probeTimedOut(tick: number, timeoutTicks: number): boolean {
    if (this.stateValue !== 'probe' || this.probeSentTickValue === null) return false
    if (tick - this.probeSentTickValue < timeoutTicks) return false
    this.probeSentTickValue = null
    return true
  }

  /**
   * Appends in flight went unanswered for `timeoutTicks`: some were lost on the way (or their
   * answers were). Probes from the acknowledged match again rather than wait forever.
   */
  retransmitDue(tick: number, timeoutTicks: number): boolean {
    if (this.stateValue !== 'replicate' || this.inflightValue.length === 0) return false
    if (tick - this.lastAckTickValue < timeoutTicks) return false
    this.becomeProbe()
    this.nextLsnValue = this.matchLsnValue + 1
    return true
  }

  // ------------------------------------------------------------------ the window

  private freeUpTo(lsn: number): void {
    while (this.inflightValue.length > 0 && (this.inflightValue[0] as Inflight).lastLsn <= lsn) {
      this.inflightBytesValue -= (this.inflightValue.shift() as Inflight).bytes
    }
  }

  private resetInflight(): void {
    this.inflightValue.length = 0
    this.inflightBytesValue = 0
  }
}
