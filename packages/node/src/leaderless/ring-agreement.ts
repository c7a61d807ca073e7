/**
 * How members agree on the ring and learn it (the I/O around the core's ring-state.ts).
 *
 * Agreement: a ring change proposes version v+1 and is decided by single-decree Paxos among
 * the members of ring v (core: onPrepare, onAccept, chooseValue). The proposer asks every
 * member of ring v to promise a ballot, then to accept the ring (its own, or the one some
 * acceptor accepted already under the highest ballot); once a majority accepted, the ring is
 * chosen: the proposer commits it (makes it its ring, durably) and pushes it to every member.
 * Promises and acceptances are made durable before they are answered. Why Paxos rather than a
 * bare compare-and-set on v: with CAS, two proposers racing each win some acceptors and a
 * proposer that dies halfway leaves them holding a tentative v+1 that refuses every other
 * proposal forever; ballots let a later proposer find, finish or replace it, and two different
 * rings can never both be chosen for one version (each acceptor accepts at or above the ballot
 * it promised, and any two majorities of ring v meet).
 *
 * Serialization: at most one change is in flight (the ring's `change`); a proposal whose
 * builder sees one refuses with KV_ERR_MEMBERSHIP_CHANGE_IN_PROGRESS, and a proposer that
 * finds another ring already accepted for v+1 finishes that one first and then rebuilds its
 * own on it (so it too is refused while that change runs).
 *
 * Learning: every peer message carries the sender's ring version. A member that sees a higher
 * one fetches the ring from that peer (RingFetch) and adopts it if it is newer; a data request
 * from a member with an older ring is refused with KV_ERR_STALE_RING, upon which the sender
 * learns and retries. Rings are only ever adopted forward, after a durable write.
 */
import {
  agreementQuorum,
  chooseValue,
  invariant,
  onAccept,
  onPrepare,
  ringProblem,
  sameRing,
  type AcceptorReply,
  type AcceptorState,
  type Ballot,
  type RingState,
} from '@kvstore/core'
import { KvError, type PeerReply, type PeerRequest } from '@kvstore/protocol'
import type { Logger } from 'pino'
import type { RingStore, Topology } from './topology.js'

export interface RingSyncOptions {
  self: string
  topology: Topology
  ringStore: RingStore
  /** Calls a peer; a refusal is thrown as a KvError. */
  call(peer: string, body: PeerRequest['body'], timeoutMs: number): Promise<PeerReply>
  timeoutMs: number
  log: Logger
  /** Called (synchronously) after a ring was made durable, before anything else sees it. */
  apply(ring: RingState, previous: RingState | null): void
  readonly stopped: boolean
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms).unref())

export class RingSync {
  private acceptor: AcceptorState | null = null
  /** Ring adoptions and acceptor steps, one at a time. */
  private chain: Promise<unknown> = Promise.resolve()
  private proposing: Promise<unknown> = Promise.resolve()
  private readonly learning = new Map<string, Promise<void>>()
  /** Highest ballot round seen (promised elsewhere): the next proposal goes above it. */
  private roundSeen = 0

  constructor(private readonly options: RingSyncOptions) {}

  get version(): number {
    return this.options.topology.version
  }

  /** Loads the acceptor state kept on disk (the ring is loaded by the engine). */
  async load(): Promise<void> {
    this.acceptor = await this.options.ringStore.loadAcceptor()
    this.roundSeen = Math.max(this.roundSeen, this.acceptor?.promised?.round ?? 0)
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn)
    this.chain = run.catch(() => {})
    return run
  }

  /**
   * Makes `ring` this member's ring if it is newer (durably first, then in memory); true when
   * it was adopted.
   */
  adopt(ring: RingState, from: string): Promise<boolean> {
    const problem = ringProblem(ring)
    if (problem !== null) {
      return Promise.reject(
        new KvError('KV_ERR_BAD_FRAME', `${from} sent a malformed ring: ${problem}`),
      )
    }
    return this.serial(async () => {
      const previous = this.options.topology.ring
      if (previous !== null && ring.version <= previous.version) return false
      await this.options.ringStore.saveRing(ring)
      this.options.apply(ring, previous)
      this.options.log.info(
        {
          ringVersion: ring.version,
          from,
          members: ring.members.map((m) => `${m.id}:${m.state}`).join(','),
          change: ring.change,
        },
        'ring adopted',
      )
      return true
    })
  }

  /** Fetches `peer`'s ring and adopts it if newer (one fetch per peer at a time). */
  learn(peer: string): Promise<void> {
    const known = this.learning.get(peer)
    if (known) return known
    const run = (async () => {
      try {
        const reply = await this.options.call(peer, { kind: 'ringFetch' }, this.options.timeoutMs)
        if (reply.kind !== 'ringReply')
          throw new KvError('KV_ERR_BAD_FRAME', `${peer} answered a ring fetch with ${reply.kind}`)
        if (reply.ring !== null) await this.adopt(reply.ring, peer)
      } catch (err) {
        this.options.log.debug({ err, peer }, 'could not fetch the ring from a peer')
      } finally {
        this.learning.delete(peer)
      }
    })()
    this.learning.set(peer, run)
    return run
  }

  /** A peer showed its ring version: learn its ring in the background when it is newer. */
  noteVersion(peer: string, version: number): void {
    if (version > this.version && !this.options.stopped) void this.learn(peer)
  }

  /** Serves the ring messages: fetch, prepare, accept, commit. */
  async serve(request: PeerRequest): Promise<PeerReply> {
    const body = request.body
    switch (body.kind) {
      case 'ringFetch':
        return { kind: 'ringReply', ring: this.options.topology.ring }
      case 'ringCommit':
        await this.adopt(body.ring, request.from)
        return { kind: 'ringReply', ring: this.options.topology.ring }
      case 'ringPrepare':
        return { kind: 'acceptorReply', reply: await this.prepareLocal(body.version, body.ballot) }
      case 'ringAccept':
        return { kind: 'acceptorReply', reply: await this.acceptLocal(body.ballot, body.ring) }
      default:
        throw new KvError('KV_ERR_BAD_FRAME', `${body.kind} is not a ring message`)
    }
  }

  private prepareLocal(version: number, ballot: Ballot): Promise<AcceptorReply> {
    return this.serial(async () => {
      const r = onPrepare(this.version, this.acceptor, version, ballot)
      // Persist before answering: a promise forgotten in a crash could let two rings be chosen.
      if (r.persist) await this.options.ringStore.saveAcceptor(r.state)
      this.acceptor = r.state
      return r.reply
    })
  }

  private acceptLocal(ballot: Ballot, ring: RingState): Promise<AcceptorReply> {
    const problem = ringProblem(ring)
    if (problem !== null)
      return Promise.reject(new KvError('KV_ERR_BAD_FRAME', `a malformed ring: ${problem}`))
    return this.serial(async () => {
      const r = onAccept(this.version, this.acceptor, ballot, ring)
      if (r.persist) await this.options.ringStore.saveAcceptor(r.state)
      this.acceptor = r.state
      return r.reply
    })
  }

  /** Asks every acceptor of `ring` (this member locally) and collects their answers. */
  private async askAll(
    ring: RingState,
    local: () => Promise<AcceptorReply>,
    body: PeerRequest['body'],
  ): Promise<{ id: string; reply: AcceptorReply | null }[]> {
    return Promise.all(
      ring.members.map(async (m) => {
        try {
          if (m.id === this.options.self) return { id: m.id, reply: await local() }
          const reply = await this.options.call(m.id, body, this.options.timeoutMs)
          if (reply.kind !== 'acceptorReply') return { id: m.id, reply: null }
          return { id: m.id, reply: reply.reply }
        } catch {
          return { id: m.id, reply: null }
        }
      }),
    )
  }

  /**
   * Proposes the ring `build` makes of the current one (which must be its version + 1), and
   * returns it once it is chosen and committed here. `build` throws (a KvError) to refuse,
   * for instance while another change is in flight. Another ring found accepted for the same
   * version is finished first, and `build` asked again on it.
   */
  propose(build: (ring: RingState) => RingState): Promise<RingState> {
    const run = this.proposing.then(
      () => this.runProposal(build),
      () => this.runProposal(build),
    )
    this.proposing = run.catch(() => {})
    return run
  }

  private async runProposal(build: (ring: RingState) => RingState): Promise<RingState> {
    const self = this.options.self
    let lastProblem = 'no majority answered'
    for (let attempt = 0; attempt < 10 && !this.options.stopped; attempt++) {
      if (attempt > 0) await sleep(Math.min(1000, 50 * attempt + (hashOf(self) % 50)))
      const base = this.options.topology.ring
      if (base === null) throw new KvError('KV_ERR_NOT_READY', `${self} knows no ring yet`)
      const own = build(base)
      invariant(own.version === base.version + 1, 'a proposal is for the next ring version')
      const needed = agreementQuorum(base)
      const ballot: Ballot = { round: ++this.roundSeen, proposer: self }
      // Phase 1: promises.
      const prepared = await this.askAll(base, () => this.prepareLocal(own.version, ballot), {
        kind: 'ringPrepare',
        version: own.version,
        ballot,
      })
      if (await this.learnedNewer(prepared, base)) continue
      const promises = prepared.flatMap((p) => (p.reply?.kind === 'promise' ? [p.reply] : []))
      this.noteRejections(prepared)
      if (promises.length < needed) {
        lastProblem = `${promises.length} of the ${base.members.length} members of ring ${base.version} promised, ${needed} needed`
        continue
      }
      const value = chooseValue(
        promises.map((p) => p.accepted),
        own,
      )
      // Phase 2: acceptances.
      const accepted = await this.askAll(base, () => this.acceptLocal(ballot, value.ring), {
        kind: 'ringAccept',
        ballot,
        ring: value.ring,
      })
      if (await this.learnedNewer(accepted, base)) continue
      this.noteRejections(accepted)
      const acks = accepted.filter((a) => a.reply?.kind === 'accepted').length
      if (acks < needed) {
        lastProblem = `${acks} of the ${base.members.length} members of ring ${base.version} accepted, ${needed} needed`
        continue
      }
      // Chosen: commit here, then tell everyone (the newcomers too).
      await this.adopt(value.ring, self)
      await this.pushCommit(value.ring)
      if (value.own && sameRing(this.options.topology.ring ?? value.ring, value.ring))
        return value.ring
      this.options.log.info(
        { ringVersion: value.ring.version },
        'finished a ring another member had proposed; proposing again on it',
      )
    }
    throw new KvError(
      'KV_ERR_QUORUM_UNAVAILABLE',
      `the ring change was not accepted by a majority of the members: ${lastProblem}; nothing changed unless a later GET /admin/v1/members shows it`,
    )
  }

  /** True when some acceptor had committed a newer ring (learned now: the proposal restarts). */
  private async learnedNewer(
    answers: { id: string; reply: AcceptorReply | null }[],
    base: RingState,
  ): Promise<boolean> {
    const stale = answers.filter((a) => a.reply?.kind === 'stale')
    if (stale.length === 0) return false
    await Promise.all(stale.map((a) => this.learn(a.id)))
    return this.version > base.version
  }

  private noteRejections(answers: { id: string; reply: AcceptorReply | null }[]): void {
    for (const a of answers) {
      if (a.reply?.kind === 'rejected' && a.reply.promised.round > this.roundSeen)
        this.roundSeen = a.reply.promised.round
    }
  }

  /**
   * Sends a committed ring to every member it or the current ring names (best effort);
   * returns the members that hold it (or a newer one) now, this one included.
   */
  async pushCommit(ring: RingState): Promise<Set<string>> {
    const ids = new Set<string>(ring.members.map((m) => m.id))
    for (const m of this.options.topology.ring?.members ?? []) ids.add(m.id)
    const holders = new Set<string>([this.options.self])
    await Promise.all(
      [...ids]
        .filter((id) => id !== this.options.self)
        .map(async (id) => {
          try {
            const reply = await this.options.call(
              id,
              { kind: 'ringCommit', ring },
              this.options.timeoutMs,
            )
            if (
              reply.kind === 'ringReply' &&
              reply.ring !== null &&
              reply.ring.version >= ring.version
            )
              holders.add(id)
          } catch {
            // down, or refused (a removed member's certificate): it learns on its next contact
          }
        }),
    )
    return holders
  }
}

function hashOf(text: string): number {
  let h = 0
  for (let i = 0; i < text.length; i++) h = (h * 31 + text.charCodeAt(i)) >>> 0
  return h
}
