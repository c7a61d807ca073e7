/**
 * The ring this member holds now (its committed ring) and where it places keys, plus the
 * durable copies of the ring, the agreement's acceptor state and the handoff progress, kept
 * under metadata keys of the store ('m' + "ring", "ring.acceptor", "ring.handoff"), written
 * through the node's log like every other change.
 */
import {
  RingPlacement,
  ringMember,
  ringProblem,
  type AcceptorState,
  type RingMember,
  type RingState,
} from '@kvstore/core'
import {
  KvError,
  decodeAcceptorState,
  decodeHandoffState,
  decodeRing,
  encodeAcceptorState,
  encodeHandoffState,
  encodeRing,
  type HandoffStateRecord,
} from '@kvstore/protocol'
import type { Sequencer, Store } from '@kvstore/storage'
import { metaPrefix } from './context.js'

export class Topology {
  private placementValue: RingPlacement | null = null

  constructor(
    readonly self: string,
    private readonly n: number,
    private readonly vnodes: number,
  ) {}

  /** The committed ring, or null (a member started with --join that has not learned it yet). */
  get ring(): RingState | null {
    return this.placementValue?.ring ?? null
  }

  /** The ring's version (0: none yet). */
  get version(): number {
    return this.placementValue?.version ?? 0
  }

  /** Where keys go now; throws when this member cannot place them (see `ready`). */
  get placement(): RingPlacement {
    const p = this.placementValue
    if (p === null) {
      throw new KvError(
        'KV_ERR_NOT_READY',
        `${this.self} was started with --join and has not been added to the cluster yet (POST /admin/v1/members on a member)`,
      )
    }
    if (ringMember(p.ring, this.self) === undefined) {
      if (p.ring.removed.includes(this.self)) {
        throw new KvError(
          'KV_ERR_NOT_A_MEMBER',
          `${this.self} was removed from the cluster (ring version ${p.ring.version}); it serves nothing any more`,
        )
      }
      throw new KvError(
        'KV_ERR_NOT_READY',
        `${this.self} is not in the ring (version ${p.ring.version}) yet: add it with POST /admin/v1/members on a member`,
      )
    }
    return p
  }

  /** The placement whatever this member's own place (null before any ring is known). */
  get placementOrNull(): RingPlacement | null {
    return this.placementValue
  }

  /** Whether this member is named by its ring (so it may coordinate and serve data). */
  get isMember(): boolean {
    const ring = this.ring
    return ring !== null && ringMember(ring, this.self) !== undefined
  }

  member(id: string): RingMember | undefined {
    const ring = this.ring
    return ring === null ? undefined : ringMember(ring, id)
  }

  /** Makes `ring` the current ring; true when reads now use other owners than before. */
  set(ring: RingState): boolean {
    const previous = this.placementValue
    const next = new RingPlacement(ring, this.n, this.vnodes)
    this.placementValue = next
    return previous === null || !sameReadOwners(previous, next)
  }
}

function sameReadOwners(a: RingPlacement, b: RingPlacement): boolean {
  const owners = (p: RingPlacement) => p.read.members.join(',')
  const tokens = (p: RingPlacement) =>
    p.read.members.map((id) => ringMember(p.ring, id)?.tokens ?? id).join(',')
  return owners(a) === owners(b) && tokens(a) === tokens(b)
}

/** The durable ring, acceptor state and handoff progress of this member. */
export class RingStore {
  constructor(
    private readonly store: Store,
    private readonly sequencer: Sequencer,
  ) {}

  private key(name: string): Buffer {
    return Buffer.concat([Buffer.from([metaPrefix]), Buffer.from(name, 'utf8')])
  }

  private async read(name: string): Promise<Buffer | null> {
    const record = await this.store.get(this.key(name))
    return record === null || record.tombstone ? null : record.value
  }

  private async write(name: string, value: Uint8Array | null): Promise<void> {
    await this.sequencer.write(
      value === null
        ? { kind: 'delete', ops: [{ type: 'delete', key: this.key(name) }] }
        : { kind: 'put', ops: [{ type: 'put', key: this.key(name), value: Buffer.from(value) }] },
    )
  }

  private corrupt(what: string, err: unknown): KvError {
    return new KvError(
      'KV_ERR_STORAGE',
      `the stored ${what} is corrupt: ${(err as Error).message ?? String(err)}`,
    )
  }

  async loadRing(): Promise<RingState | null> {
    const bytes = await this.read('ring')
    if (bytes === null) return null
    let ring: RingState
    try {
      ring = decodeRing(bytes)
    } catch (err) {
      throw this.corrupt('ring', err)
    }
    // Checked when read back, as when written.
    const problem = ringProblem(ring)
    if (problem !== null) throw this.corrupt('ring', new Error(problem))
    return ring
  }

  async saveRing(ring: RingState): Promise<void> {
    const problem = ringProblem(ring)
    if (problem !== null)
      throw new KvError('KV_ERR_INTERNAL', `refused to store a ring: ${problem}`)
    await this.write('ring', encodeRing(ring))
  }

  async loadAcceptor(): Promise<AcceptorState | null> {
    const bytes = await this.read('ring.acceptor')
    if (bytes === null) return null
    try {
      return decodeAcceptorState(bytes)
    } catch (err) {
      throw this.corrupt('ring acceptor state', err)
    }
  }

  async saveAcceptor(state: AcceptorState): Promise<void> {
    await this.write('ring.acceptor', encodeAcceptorState(state))
  }

  async loadHandoff(): Promise<HandoffStateRecord | null> {
    const bytes = await this.read('ring.handoff')
    if (bytes === null) return null
    try {
      return decodeHandoffState(bytes)
    } catch (err) {
      throw this.corrupt('handoff state', err)
    }
  }

  async saveHandoff(state: HandoffStateRecord | null): Promise<void> {
    await this.write('ring.handoff', state === null ? null : encodeHandoffState(state))
  }
}
