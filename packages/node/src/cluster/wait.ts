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
  resolve: () => void
  reject: (err: Error) => void
  timer: NodeJS.Timeout
}

export class AckWaiters {
  private waiters: PendingAck[] = []

  get size(): number {
    return this.waiters.length
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
        ...waiter,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== pending)
          reject(onTimeout(waiter))
        }, timeoutMs),
      }
      this.waiters.push(pending)
    })
  }

  /**
   * Answers every waiter whose verdict is in: resolved when confirmed, rejected with
   * `unknown(waiter)` when its outcome cannot be known here.
   */
  trigger(verdict: (waiter: AckWaiter) => AckVerdict, unknown: (waiter: AckWaiter) => Error): void {
    if (this.waiters.length === 0) return
    const waiting: PendingAck[] = []
    for (const w of this.waiters) {
      const v = verdict(w)
      if (v === 'waiting') {
        waiting.push(w)
        continue
      }
      clearTimeout(w.timer)
      if (v === 'confirmed') w.resolve()
      else w.reject(unknown(w))
    }
    this.waiters = waiting
  }

  /** Rejects every waiter with `errorOf(waiter)` (the node stopped leading, or stops). */
  rejectAll(errorOf: (waiter: AckWaiter) => Error): void {
    const waiters = this.waiters
    this.waiters = []
    for (const w of waiters) {
      clearTimeout(w.timer)
      w.reject(errorOf(w))
    }
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
