/**
 * Requests waiting on replication, in the manner of etcd's `pkg/wait`: a caller registers what
 * it waits for and gets a promise; the replicator triggers the list whenever the replica moves
 * on; a waiter that is not triggered in time times out. Bounded, so that outside input cannot
 * grow it without limit.
 *
 * Two lists: writes waiting to be acknowledged as their client asked (`AckWaiters`), and reads
 * waiting for this replica to apply their session's LSN (`ApplyWaiters`).
 */
import type { AckMode } from '../config.js'

/** Where a write stands: acknowledged as asked, still waiting, or unknowable here. */
export type AckVerdict = 'confirmed' | 'waiting' | 'unknown'

/** What `ackVerdict` reads from the core. */
export interface AckView {
  readonly isLeader: boolean
  readonly commitLsn: number
  epochAt(lsn: number): number | null
  allMatchLsn(): number
}

/**
 * Where the entry written at `lsn` in `epoch` stands, for `mode`. An LSN alone says nothing
 * once the leader changed: the same LSN may hold another leader's entry, committed, so the
 * epoch of the entry at that LSN must match too.
 */
export function ackVerdict(view: AckView, lsn: number, epoch: number, mode: AckMode): AckVerdict {
  const at = view.epochAt(lsn)
  // Compacted away: only committed entries are compacted, and this one was in the log.
  const ours = at === epoch || (at === null && lsn <= view.commitLsn)
  if (at !== null && at !== epoch) return 'unknown'
  if (mode === 'quorum' && ours && view.commitLsn >= lsn) return 'confirmed'
  // A leader waits for an entry in its log (its own, or an earlier leader's it holds); a
  // node that no longer leads cannot tell what becomes of it.
  if (!view.isLeader || !ours) return 'unknown'
  if (mode === 'all' && ours && view.allMatchLsn() >= lsn) return 'confirmed'
  return 'waiting'
}

/** A write waiting for its acknowledgement. */
export interface AckWaiter {
  lsn: number
  /** Epoch of the entry at `lsn` when it was written. */
  epoch: number
  mode: AckMode
}

interface PendingAck extends AckWaiter {
  /** When it times out, on the `now` clock. */
  deadlineMs: number
  resolve: () => void
  reject: (err: Error) => void
  onTimeout: (waiter: AckWaiter) => Error
}

/**
 * Writes waiting for their acknowledgement, one queue per mode in LSN order, with one timer for
 * all of them (the earliest deadline) instead of one per write: a busy leader holds one waiter
 * per write in flight, and `trigger` runs on every turn of the replicator's loop.
 */
export class AckWaiters {
  private readonly queues = new Map<AckMode, PendingAck[]>()
  private count = 0
  private timer: NodeJS.Timeout | null = null
  private timerAtMs = Infinity

  constructor(private readonly now: () => number = () => performance.now()) {}

  get size(): number {
    return this.count
  }

  /**
   * Waits for `waiter`; after `timeoutMs` it is dropped and rejected with `onTimeout(waiter)`.
   * The caller checks the verdict first: a write confirmed or unknown already does not wait.
   */
  wait(
    waiter: AckWaiter,
    timeoutMs: number,
    onTimeout: (waiter: AckWaiter) => Error,
  ): Promise<void> {
    return new Promise((resolve, reject) => {
      const pending: PendingAck = {
        lsn: waiter.lsn,
        epoch: waiter.epoch,
        mode: waiter.mode,
        deadlineMs: this.now() + timeoutMs,
        resolve,
        reject,
        onTimeout,
      }
      let queue = this.queues.get(waiter.mode)
      if (queue === undefined) {
        queue = []
        this.queues.set(waiter.mode, queue)
      }
      // Writes arrive in LSN order nearly always: the place is found from the end.
      let at = queue.length
      while (at > 0 && (queue[at - 1] as PendingAck).lsn > pending.lsn) at--
      queue.splice(at, 0, pending)
      this.count++
      this.armTimer(pending.deadlineMs)
    })
  }

  /**
   * Answers the waiters whose verdict is in: resolved when confirmed, rejected with
   * `unknown(waiter)` when its outcome cannot be known here. Each queue is read from its lowest
   * LSN and stops at the first waiter of `epoch` (this node's current one) still waiting: a
   * later write of the same mode and epoch cannot be decided before it, as the commit LSN and
   * every member's match only grow while this node leads, and once it no longer leads every
   * verdict is `unknown`. Waiters of older epochs are always judged.
   */
  trigger(
    verdict: (waiter: AckWaiter) => AckVerdict,
    unknown: (waiter: AckWaiter) => Error,
    epoch: number,
  ): void {
    if (this.count === 0) return
    for (const [mode, queue] of this.queues) {
      let kept: PendingAck[] | null = null
      let i = 0
      for (; i < queue.length; i++) {
        const w = queue[i] as PendingAck
        const v = verdict(w)
        if (v === 'waiting' && w.epoch === epoch) break
        // Something changes from here on: the waiters before it stay (all of older epochs).
        kept ??= queue.slice(0, i)
        if (v === 'waiting') {
          kept.push(w)
          continue
        }
        this.count--
        if (v === 'confirmed') w.resolve()
        else w.reject(unknown(w))
      }
      if (kept !== null)
        this.queues.set(mode, i < queue.length ? kept.concat(queue.slice(i)) : kept)
    }
    if (this.count === 0) this.clearTimer()
  }

  /** Rejects every waiter with `errorOf(waiter)` (the node stopped leading, or stops). */
  rejectAll(errorOf: (waiter: AckWaiter) => Error): void {
    const queues = [...this.queues.values()]
    this.queues.clear()
    this.count = 0
    this.clearTimer()
    for (const queue of queues) for (const w of queue) w.reject(errorOf(w))
  }

  private armTimer(deadlineMs: number): void {
    if (deadlineMs >= this.timerAtMs) return
    if (this.timer !== null) clearTimeout(this.timer)
    this.timerAtMs = deadlineMs
    this.timer = setTimeout(() => this.expire(), Math.max(0, deadlineMs - this.now()))
  }

  private clearTimer(): void {
    if (this.timer !== null) clearTimeout(this.timer)
    this.timer = null
    this.timerAtMs = Infinity
  }

  /** Rejects every waiter past its deadline, then waits for the next deadline. */
  private expire(): void {
    this.timer = null
    this.timerAtMs = Infinity
    const now = this.now()
    let next = Infinity
    const late: PendingAck[] = []
    for (const [mode, queue] of this.queues) {
      const kept: PendingAck[] = []
      for (const w of queue) {
        if (w.deadlineMs <= now) late.push(w)
        else {
          kept.push(w)
          next = Math.min(next, w.deadlineMs)
        }
      }
      this.queues.set(mode, kept)
    }
    this.count -= late.length
    if (next !== Infinity) this.armTimer(next)
    for (const w of late) w.reject(w.onTimeout(w))
  }
}

interface PendingApply {
  lsn: number
  resolve: (applied: boolean) => void
  timer: NodeJS.Timeout
}

export class ApplyWaiters {
  private waiters: PendingApply[] = []

  /** At most `waitersMax` reads wait at once; one more is answered false at once. */
  constructor(private readonly waitersMax: number) {}

  get size(): number {
    return this.waiters.length
  }

  /** Resolves true once `trigger` reports `lsn` applied, false after `timeoutMs` or when full. */
  wait(lsn: number, timeoutMs: number): Promise<boolean> {
    if (timeoutMs <= 0 || this.waiters.length >= this.waitersMax) return Promise.resolve(false)
    return new Promise((resolve) => {
      const waiter: PendingApply = {
        lsn,
        resolve,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== waiter)
          resolve(false)
        }, timeoutMs),
      }
      this.waiters.push(waiter)
    })
  }

  /** The replica has applied up to `appliedLsn`: every waiter at or below it resolves true. */
  trigger(appliedLsn: number): void {
    if (this.waiters.length === 0) return
    const waiting: PendingApply[] = []
    for (const w of this.waiters) {
      if (appliedLsn >= w.lsn) {
        clearTimeout(w.timer)
        w.resolve(true)
      } else {
        waiting.push(w)
      }
    }
    this.waiters = waiting
  }

  /** Every waiter resolves false (the node stops). */
  cancelAll(): void {
    const waiters = this.waiters
    this.waiters = []
    for (const w of waiters) {
      clearTimeout(w.timer)
      w.resolve(false)
    }
  }
}
