/**
 * What the leaderless simulator checks, from the history of acknowledged writes, completed
 * reads, persisted states and collected tombstones:
 *
 * - lost writes: a read at R that started after a write was acknowledged at a strict W, with
 *   R + W > N, must return a state whose vector covers the write's dot (the value itself, or
 *   a later write that saw it; siblings are fine, and so is a concurrent write in flight);
 * - resurrection: once a replica collected a tombstone with vector V, no replica may ever
 *   persist, and no read return, a live value whose dot V covers;
 * - sibling cap: no persisted state holds more siblings than the cap;
 * - values: every value a read returns or a replica persists is the one its dot was minted
 *   with (a digest read must never answer with a value it left out, or another's);
 * - convergence (checked by the simulator after healing): every replica set agrees.
 */
import { covers, type Dot, type VersionVector, type VersionedState } from '@kvstore/core'

export class InvariantViolation extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'InvariantViolation'
  }
}

export interface AckedWrite {
  key: string
  dot: Dot
  w: number
  /** Hints did not count toward W. */
  strict: boolean
  ackTick: number
  /** A delete. */
  tombstone: boolean
}

const dotText = (d: Dot) => `${d.node}:${d.counter}`

export class LeaderlessChecker {
  readonly acked: AckedWrite[] = []
  private readonly ackedByKey = new Map<string, AckedWrite[]>()
  /** The value each dot was minted with ("node:counter" to the value; null for a delete). */
  private readonly mintedValues = new Map<string, string | null>()
  /** Vectors of the tombstones collected, per key. */
  private readonly collected = new Map<string, VersionVector[]>()
  checkedReads = 0

  constructor(
    private readonly n: number,
    private readonly siblingsMax: number,
  ) {}

  writeAcked(write: AckedWrite): void {
    this.acked.push(write)
    let list = this.ackedByKey.get(write.key)
    if (!list) this.ackedByKey.set(write.key, (list = []))
    list.push(write)
  }

  /** A coordinator minted `dot` for a write of `value` (null: a delete). */
  minted(dot: Dot, value: string | null): void {
    this.mintedValues.set(dotText(dot), value)
  }

  private checkValues(who: string, key: string, state: VersionedState<string>): void {
    for (const s of state.siblings) {
      const minted = this.mintedValues.get(dotText(s.dot))
      if (minted === undefined || s.value.value !== minted) {
        throw new InvariantViolation(
          `wrong value: ${who} ${String(s.value.value)} for ${dotText(s.dot)} of ${key}, which was minted with ${String(minted)}`,
        )
      }
    }
  }

  tombstoneCollected(key: string, vector: VersionVector): void {
    let list = this.collected.get(key)
    if (!list) this.collected.set(key, (list = []))
    list.push(vector)
  }

  /** A dot a collected tombstone of the key covered (its value was deleted for good). */
  private deletedForGood(key: string, dot: Dot): boolean {
    return (this.collected.get(key) ?? []).some((v) => covers(v, dot))
  }

  /** A replica persisted `state` for `key`. */
  persisted(member: string, key: string, state: VersionedState<string>): void {
    if (state.siblings.length > this.siblingsMax) {
      throw new InvariantViolation(
        `sibling cap: ${member} holds ${state.siblings.length} siblings of ${key} (cap ${this.siblingsMax})`,
      )
    }
    this.checkNoResurrection(`${member} persisted`, key, state)
    this.checkValues(`${member} persisted`, key, state)
  }

  private checkNoResurrection(who: string, key: string, state: VersionedState<string>): void {
    for (const s of state.siblings) {
      if (s.value.value !== null && this.deletedForGood(key, s.dot)) {
        throw new InvariantViolation(
          `resurrection: ${who} the value ${dotText(s.dot)} of ${key}, whose tombstone was collected`,
        )
      }
    }
  }

  /** A read at `r` that started at `startTick` returned `state`. */
  readReturned(
    coordinator: string,
    key: string,
    r: number,
    startTick: number,
    state: VersionedState<string> | null,
  ): void {
    this.checkedReads++
    if (state !== null) {
      this.checkNoResurrection(`a read via ${coordinator} returned`, key, state)
      this.checkValues(`a read via ${coordinator} returned`, key, state)
    }
    for (const write of this.ackedByKey.get(key) ?? []) {
      if (!write.strict || write.ackTick > startTick || write.w + r <= this.n) continue
      if (state !== null && covers(state.vector, write.dot)) continue
      if (this.deletedForGood(key, write.dot)) continue
      throw new InvariantViolation(
        `lost write: a read of ${key} via ${coordinator} at R=${r} (started tick ${startTick}) does not have ${write.tombstone ? 'the delete' : 'the write'} ${dotText(write.dot)} acknowledged at W=${write.w} at tick ${write.ackTick}`,
      )
    }
  }

  /** After convergence: every acknowledged write is in its key's converged state. */
  finalState(key: string, state: VersionedState<string> | null): void {
    if (state !== null) this.checkNoResurrection('after healing, the replicas hold', key, state)
    for (const write of this.ackedByKey.get(key) ?? []) {
      if (state !== null && covers(state.vector, write.dot)) continue
      if (this.deletedForGood(key, write.dot)) continue
      throw new InvariantViolation(
        `lost write: after healing, the replicas of ${key} do not have the write ${dotText(write.dot)} acknowledged at W=${write.w} at tick ${write.ackTick}`,
      )
    }
  }
}
