/**
 * The coordinator: a client's write (minted here, made durable, then sent to the rest of the
 * key's preference list, or to stand-ins as hints, until W acks are in) and read (R answers
 * merged, stale replicas repaired). When W or R is met or can no longer be, the merge, which
 * replicas to repair, the sibling cap and hint eligibility are decided by the core's pure
 * leaderless functions (ReadQuorum, WriteQuorum, mintWrite, mayHintFor, pickStandIn), as
 * Riak's get fsm leaves them to riak_kv_get_core; this is the I/O around them.
 */
import { createHash } from 'node:crypto'
import {
  invariant,
  ReadQuorum,
  WriteQuorum,
  versionsOf,
  type VersionsOnly,
  changeReachable,
  mayHintFor,
  mintWrite,
  pickStandIn,
  reachableTargets,
  siblingsRefusal,
  type RingPlacement,
} from '@kvstore/core'
import {
  KvError,
  encodeContext,
  newestStamp,
  leaderlessLimits,
  requestFingerprintBytes,
  type CausalContext,
  type HlcStamp,
} from '@kvstore/protocol'
import { sameRequest } from '@kvstore/storage'
import { resolveQuorum } from '../config.js'
import { knownCode, toState, type LeaderlessContext, type State } from './context.js'
import type { LocalReplica } from './local-replica.js'
import { ownCounterProblem } from './peer-records.js'
import type { PeerHealth } from './peer-health.js'
import { PeerUnreachable } from './rpc.js'

/** What a read returns to the client. */
export interface ReadResult {
  state: State | null
  replicas: string[]
  answered: number
}

/** A client write as the coordinator gets it. */
export interface LeaderlessWrite {
  /** The value, or null for a delete. */
  value: Uint8Array | null
  /** The client's causal context (kv-context), or null for a blind write. */
  context: CausalContext | null
  /** W, or null for the default. */
  w: number | null
  sloppy: boolean
  /** kv-request-id: a retry that reaches the same coordinator is applied once. */
  requestId: string | null
  /** False when the write was forwarded already (a member outside the list refuses it). */
  mayForward?: boolean
  /** How many times it was placed again because a replica held a newer ring. */
  ringRetries?: number
  /** Per-key TTL (PUT ?ttlMs=): the value reads as absent from its HLC wall time + ttlMs. */
  ttlMs?: number
}

/**
 * The request id a write is remembered under (in this coordinator's request table, through
 * its sequencer): the id alone, whatever the key. The record holds the fingerprint of the
 * client's request (`writeFingerprint`), so a retry (same fingerprint) is deduplicated as
 * before, and the id on any other request is refused with KV_ERR_REQUEST_ID_REUSED. Until
 * then the record was keyed by key hash + id: a reuse on another key was simply a new write,
 * and a reuse on the same key with another value was answered as a retry of the first.
 * Records stay on the coordinator that applied the write, as before, so a reuse that reaches
 * another coordinator (a key another member coordinates) is not seen there.
 */
function requestKeyOf(requestId: string): string {
  return `ll:${requestId}`
}

const fingerprintDomain = 'kv-leaderless-write-fingerprint-v1\u0000'

/**
 * What a leaderless request id is bound to: the key, the value or a delete, and the client's
 * context (vector and clock) if it sent one. Not w or sloppy, which only say how long to wait
 * (as ack does in single-leader mode). Every field is tagged and length-prefixed, so no two
 * writes share an encoding; the first 16 bytes of one SHA-256, as `requestFingerprint`.
 */
function writeFingerprint(
  key: string,
  value: Uint8Array | null,
  context: CausalContext | null,
): Buffer {
  const hash = createHash('sha256').update(fingerprintDomain)
  const head = Buffer.allocUnsafe(9)
  const number = (n: number) => {
    head.writeUInt8(0x6e, 0) // 'n'
    head.writeDoubleBE(n, 1)
    hash.update(head)
  }
  const bytes = (b: Uint8Array | string) => {
    const data = typeof b === 'string' ? Buffer.from(b, 'utf8') : b
    head.writeUInt8(0x62, 0) // 'b'
    head.writeUInt32BE(data.length, 1)
    hash.update(head.subarray(0, 5)).update(data)
  }
  bytes(key)
  if (value === null) number(0)
  else {
    number(1)
    bytes(value)
  }
  if (context === null) number(0)
  else {
    const actors = Object.keys(context.vector).sort()
    number(1)
    number(actors.length)
    for (const actor of actors) {
      bytes(actor)
      number(context.vector[actor] ?? 0)
    }
    const hlc = context.hlc
    if (hlc === null) number(0)
    else {
      number(1)
      number(hlc.wallMs)
      number(hlc.logical)
      bytes(hlc.node)
    }
  }
  return hash.digest().subarray(0, requestFingerprintBytes)
}

export interface WriteOutcome {
  key: string
  context: string
  timestamp: string
  acks: number
  w: number
  coordinator: string
  hinted: string[]
  deduplicated?: true
}

export function formatHlc(hlc: HlcStamp): string {
  return `${hlc.wallMs}.${hlc.logical}.${hlc.node}`
}

export class Coordinator {
  constructor(
    private readonly ctx: LeaderlessContext,
    private readonly replica: LocalReplica,
    private readonly peers: PeerHealth,
  ) {}

  resolveW(text: string | undefined): number {
    return this.resolveCount(text ?? this.ctx.config.defaultW, 'w')
  }

  resolveR(text: string | undefined): number {
    return this.resolveCount(text ?? this.ctx.config.defaultR, 'r')
  }

  private resolveCount(text: string, name: string): number {
    try {
      return resolveQuorum(text, this.ctx.n, name)
    } catch (err) {
      throw new KvError('KV_ERR_INVALID_ARGUMENT', (err as Error).message)
    }
  }

  /**
   * Coordinates a write (value null: a delete). Outside the key's preference list it forwards
   * the write to the first reachable member of the list, which mints the dot.
   */
  async coordinateWrite(key: string, request: LeaderlessWrite): Promise<WriteOutcome> {
    const { value, context, sloppy, requestId } = request
    const wanted = request.w ?? this.resolveW(undefined)
    // The ring now: the owners reads use (W is counted among them), the owners on the other
    // side of a change in flight (they get the write too), and the stand-ins past the list.
    let placement = this.ctx.placement
    const { countSet: prefs, extra } = placement.writePlacement(key)
    const spares = [...placement.read.walk(key)].slice(this.ctx.n)
    if (!prefs.includes(this.ctx.self)) {
      if (request.mayForward === false)
        throw new KvError('KV_ERR_BAD_FRAME', `${this.ctx.self} is not a replica of this key`)
      try {
        return await this.forwardWrite(key, { ...request, w: wanted }, prefs)
      } catch (err) {
        // The replica held a newer ring and refused; this member has learned it meanwhile
        // (peer-health.ts): place the write again with it.
        if (
          err instanceof KvError &&
          err.code === 'KV_ERR_STALE_RING' &&
          this.ctx.placement.version > placement.version &&
          (request.ringRetries ?? 0) < 2
        )
          return this.coordinateWrite(key, {
            ...request,
            ringRetries: (request.ringRetries ?? 0) + 1,
          })
        throw err
      }
    }
    if (context !== null) this.checkContext(context)
    const rid =
      requestId === null
        ? undefined
        : { id: requestKeyOf(requestId), fingerprint: writeFingerprint(key, value, context) }
    // Refuse before writing anything when too few targets are reachable to ever reach W (a
    // retry of a write applied here before is answered below instead).
    const reachable = this.reachableTargets(prefs, spares, sloppy)
    const pendingUp = extra.filter((m) => this.peers.isUp(m)).length
    if (
      !changeReachable(reachable, pendingUp, wanted, extra.length) &&
      !this.appliedBefore(requestId, rid)
    ) {
      this.ctx.stats.quorumFailures.write++
      throw new KvError(
        'KV_ERR_QUORUM_UNAVAILABLE',
        extra.length === 0
          ? `only ${reachable} of the ${wanted} replicas needed for ${JSON.stringify(key)} are reachable (${prefs.join(', ')}${sloppy ? ', with stand-ins' : ''}); nothing was written`
          : `a ring change is moving ${JSON.stringify(key)} to ${extra.join(', ')}: the write needs ${wanted} of ${prefs.join(', ')} and ${wanted + extra.length} in all, and only ${reachable} and ${reachable + pendingUp} are reachable; nothing was written`,
        { required: wanted, acks: 0, replicas: prefs.join(','), written: false },
      )
    }
    // A delete without a context deletes what a read quorum holds now.
    let given = context
    if (given === null && value === null) {
      const read = await this.coordinateRead(key, this.resolveR(undefined), false)
      given =
        read.state === null
          ? null
          : { vector: { ...read.state.vector }, hlc: newestStamp(read.state) }
    }
    const contextVector = given?.vector ?? {}
    // The write is stamped after everything its client saw.
    if (given?.hlc) this.replica.observeStamp(given.hlc)
    const { state, hlc, deduplicated } = await this.replica.locked(key, async () => {
      const current = (await this.replica.loadState(key)) ?? { vector: {}, siblings: [] }
      if (this.appliedBefore(requestId, rid)) {
        // Applied here before (the answer was lost, or W was not reached): send what the key
        // holds now, which includes that write unless a later one replaced it.
        return {
          state: current,
          hlc: newestStamp(current) ?? this.replica.clock.now(this.ctx.now()),
          deduplicated: true,
        }
      }
      const survivors = siblingsRefusal(
        current,
        contextVector,
        value === null,
        this.replica.mergePolicy,
      )
      if (survivors !== null) {
        throw new KvError(
          'KV_ERR_TOO_MANY_SIBLINGS',
          `key ${JSON.stringify(key)} already holds ${survivors} siblings the context does not resolve; the cap is ${this.ctx.config.siblingsMax}. Read it and write with its kv-context.`,
          {
            siblings: survivors,
            siblingsMax: this.ctx.config.siblingsMax,
            context: encodeContext(current),
          },
        )
      }
      const counter = await this.replica.nextCounter()
      // A dot is new: this replica's copy never holds more of its own actor than it minted
      // (peers' records and clients' contexts claiming more are refused before this).
      invariant(
        counter > (current.vector[this.replica.actor] ?? 0),
        () =>
          `dot ${counter} of ${this.replica.actor} is not new: ${JSON.stringify(key)} has seen ${current.vector[this.replica.actor]}`,
      )
      const hlc = this.replica.clock.now(this.ctx.now())
      const { state: next, dropped } = mintWrite(
        current,
        this.replica.actor,
        counter,
        contextVector,
        {
          value,
          hlc,
          ...(request.ttlMs !== undefined && value !== null
            ? { expiresAtMs: hlc.wallMs + request.ttlMs }
            : {}),
        },
        this.replica.mergePolicy,
      )
      await this.replica.persist(key, next, rid)
      this.replica.noteSiblings(key, next, dropped)
      return { state: next, hlc, deduplicated: false }
    })
    // A replica refusing the write because this member's ring was older makes it learn the
    // newer ring (peer-health.ts); the same state then goes to the owners that ring names.
    let acks: { acks: number; hinted: string[] }
    for (let attempt = 0; ; attempt++) {
      const where = placement.writePlacement(key)
      const own = where.countSet.includes(this.ctx.self)
        ? 'counted'
        : where.extra.includes(this.ctx.self)
          ? 'pending'
          : 'none'
      try {
        acks = await this.fanOut(key, state, where.countSet, where.extra, own, wanted, sloppy)
        break
      } catch (err) {
        const now = this.ctx.placement
        if (attempt >= 2 || now.version === placement.version) throw err
        placement = now
      }
    }
    invariant(acks.acks >= wanted, () => `a write answered with ${acks.acks} of ${wanted} acks`)
    return {
      key,
      context: encodeContext(state),
      timestamp: formatHlc(hlc),
      acks: acks.acks,
      w: wanted,
      coordinator: this.ctx.self,
      hinted: acks.hinted,
      ...(deduplicated ? { deduplicated: true } : {}),
    }
  }

  /**
   * Whether this member applied the request before (a retry), found by its request id whatever
   * the key. Throws KV_ERR_REQUEST_ID_REUSED when the id was applied for another request.
   */
  private appliedBefore(
    requestId: string | null,
    rid: { id: string; fingerprint: Buffer } | undefined,
  ): boolean {
    if (requestId === null || rid === undefined) return false
    const applied = this.ctx.store.getRequest(rid.id)
    if (applied === null) return false
    if (!sameRequest(applied.fingerprint, rid.fingerprint)) {
      // Not naming the other request's key: the id is all the two have in common.
      throw new KvError(
        'KV_ERR_REQUEST_ID_REUSED',
        `kv-request-id ${JSON.stringify(requestId)} was already used for another request; nothing was written. Use a fresh id per request.`,
        { requestId },
      )
    }
    return true
  }

  /**
   * Refuses a context this cluster cannot have produced: more of this member's actor than it
   * ever minted (which would hide its later writes on every replica), or more actors than a
   * record may hold.
   */
  private checkContext(context: CausalContext): void {
    const own = ownCounterProblem(context.vector, {
      actor: this.replica.actor,
      minted: this.replica.counter,
    })
    if (own !== null) {
      throw new KvError(
        'KV_ERR_INVALID_CONTEXT',
        `the context ${own}; it was not returned by this cluster`,
      )
    }
    if (Object.keys(context.vector).length >= leaderlessLimits.vectorEntriesMax) {
      throw new KvError(
        'KV_ERR_INVALID_CONTEXT',
        `the context names ${Object.keys(context.vector).length} actors; a key holds at most ${leaderlessLimits.vectorEntriesMax - 1} besides its coordinator`,
      )
    }
  }

  /** Replicas of the key reachable now, plus (sloppy) the stand-ins that could take hints. */
  private reachableTargets(prefs: string[], spares: string[], sloppy: boolean): number {
    return reachableTargets(prefs, spares, sloppy, (m) => this.peers.isUp(m))
  }

  private async forwardWrite(
    key: string,
    request: LeaderlessWrite & { w: number },
    prefs: string[],
  ): Promise<WriteOutcome> {
    const { value, context, w, sloppy } = request
    const order = [
      ...prefs.filter((m) => this.peers.isUp(m)),
      ...prefs.filter((m) => !this.peers.isUp(m)),
    ]
    let lastError: unknown = null
    for (const member of order) {
      try {
        const reply = await this.peers.call(
          member,
          {
            kind: 'coordinate',
            key: Buffer.from(key, 'utf8'),
            value,
            context,
            w,
            sloppy,
            requestId: request.requestId ?? '',
            ...(request.ttlMs !== undefined ? { ttlMs: request.ttlMs } : {}),
          },
          this.ctx.config.quorumTimeoutMs * 3,
        )
        if (reply.kind !== 'coordinateReply')
          throw new KvError('KV_ERR_BAD_FRAME', `${member} answered a write with ${reply.kind}`)
        this.ctx.stats.forwardedWrites++
        const body = JSON.parse(reply.bodyJson) as
          | WriteOutcome
          | {
              error: { code: string; message: string } & Record<
                string,
                string | number | boolean | null
              >
            }
        if ('error' in body) {
          const { code, message, ...details } = body.error
          throw new KvError(knownCode(code), message, details)
        }
        return body
      } catch (err) {
        if (err instanceof PeerUnreachable) {
          // Sent and unanswered: it may be applied there; another coordinator would add a
          // second version. Only a peer that never got it is passed over.
          if (err.unknownOutcome) {
            throw new KvError(
              'KV_ERR_QUORUM_UNAVAILABLE',
              `${member} took the write of ${JSON.stringify(key)} to coordinate and did not answer: ${err.message}. It may have been applied; retry with the same kv-request-id.`,
              { required: w, acks: 0, replicas: prefs.join(',') },
            )
          }
          lastError = err
          continue
        }
        throw err
      }
    }
    this.ctx.stats.quorumFailures.write++
    throw new KvError(
      'KV_ERR_QUORUM_UNAVAILABLE',
      `no replica of ${JSON.stringify(key)} (${prefs.join(', ')}) could coordinate the write: ${(lastError as Error | null)?.message ?? 'none reachable'}`,
      { required: w, acks: 0, replicas: prefs.join(',') },
    )
  }

  /**
   * Sends the coordinator's new state to the rest of the preference list (or to stand-ins
   * with hints for the down ones), and resolves once `w` replicas hold it. The sends go on
   * after that, in the background.
   */
  private fanOut(
    key: string,
    state: State,
    prefs: string[],
    extra: string[],
    own: 'counted' | 'pending' | 'none',
    w: number,
    sloppy: boolean,
  ): Promise<{ acks: number; hinted: string[] }> {
    const keyBytes = Buffer.from(key, 'utf8')
    const spares = [...this.ctx.ring.walk(key)]
      .slice(this.ctx.n)
      .filter((m) => m !== this.ctx.self && !extra.includes(m))
    const usedSpares = new Set<string>()
    const quorum = new WriteQuorum({ w, sloppy, extra: extra.length, ownAck: own })
    let settled = false
    return new Promise((resolve, reject) => {
      const refuse = (within: string) => {
        this.ctx.stats.quorumFailures.write++
        reject(
          new KvError(
            'KV_ERR_QUORUM_UNAVAILABLE',
            `only ${quorum.acks} of the ${w} replicas needed acknowledged the write of ${JSON.stringify(key)}${within}; it is durable on ${quorum.acks} and will spread from there`,
            {
              required: w,
              acks: quorum.acks,
              replicas: prefs.join(','),
              hinted: quorum.hinted.join(','),
            },
          ),
        )
      }
      const check = () => {
        if (settled || quorum.status === 'waiting') return
        settled = true
        clearTimeout(timer)
        if (quorum.status === 'met') resolve({ acks: quorum.acks, hinted: [...quorum.hinted] })
        else refuse('')
      }
      const timer = setTimeout(() => {
        if (settled) return
        settled = true
        refuse(` within ${this.ctx.config.quorumTimeoutMs} ms`)
      }, this.ctx.config.quorumTimeoutMs)
      timer.unref()
      const viaHint = (target: string): void => {
        const h = this.peers.health.get(target)
        if (
          h &&
          !h.up &&
          !mayHintFor(h.downSinceMs, this.ctx.now(), this.ctx.config.hintWindowMs)
        ) {
          this.ctx.stats.hintsDropped.window++
          return
        }
        const standIn = pickStandIn(spares, usedSpares, (m) => this.peers.isUp(m))
        if (standIn === undefined) return
        usedSpares.add(standIn)
        quorum.sent()
        this.peers
          .call(standIn, { kind: 'store', key: keyBytes, record: state, hintFor: target })
          .then(
            () => {
              quorum.hintAcked(target, standIn)
              check()
            },
            () => {
              quorum.failed()
              // Try the next stand-in.
              viaHint(target)
              check()
            },
          )
      }
      for (const member of prefs) {
        if (member === this.ctx.self) continue
        if (!this.peers.isUp(member)) {
          viaHint(member)
          continue
        }
        quorum.sent()
        this.peers.call(member, { kind: 'store', key: keyBytes, record: state, hintFor: '' }).then(
          () => {
            quorum.replicaAcked()
            check()
          },
          (err: unknown) => {
            quorum.failed()
            // A replica that refused because this member's ring is older gets no hint: the
            // write goes again to the owners of the newer ring (coordinateWrite).
            if (!(err instanceof KvError && err.code === 'KV_ERR_STALE_RING')) viaHint(member)
            check()
          },
        )
      }
      // Pending owners (a ring change in flight) get the write too; no hint stands in for them.
      for (const member of extra) {
        if (member === this.ctx.self || !this.peers.isUp(member)) continue
        quorum.sent()
        this.peers.call(member, { kind: 'store', key: keyBytes, record: state, hintFor: '' }).then(
          () => {
            quorum.pendingOwnerAcked()
            check()
          },
          () => {
            quorum.failed()
            check()
          },
        )
      }
      check()
    })
  }

  /**
   * Reads from the preference list and answers with the merge of the first `r` replies.
   * A digest read, as Cassandra's: the data comes from one replica (this member when it is
   * one, a local read), and every other replica is asked for its versions only; values are
   * fetched from a replica only when its versions show one the data lacks (`ReadQuorum`).
   * Every replica is asked, so read repair still reaches all of them. Replicas that answered
   * something older are repaired: in the background (after every reply is in or the timeout),
   * or before answering when `blocking`.
   */
  async coordinateRead(key: string, r: number, blocking: boolean): Promise<ReadResult> {
    for (let attempt = 0; ; attempt++) {
      const placement = this.ctx.placement
      try {
        return await this.readOnce(placement, key, r, blocking)
      } catch (err) {
        // A replica refused because this member's ring was older: it has learned the newer
        // one meanwhile (peer-health.ts); read again from the owners it names.
        if (attempt >= 2 || this.ctx.placement.version === placement.version) throw err
      }
    }
  }

  private async readOnce(
    placement: RingPlacement,
    key: string,
    r: number,
    blocking: boolean,
  ): Promise<ReadResult> {
    const prefs = placement.readList(key)
    const read = new ReadQuorum<Uint8Array>(prefs, r, this.replica.mergePolicy)
    const keyBytes = Buffer.from(key, 'utf8')
    const self = this.ctx.self
    const dataFrom =
      prefs.includes(self) && !this.replica.isRefilling
        ? self
        : (prefs.find((m) => m !== self && this.peers.isUp(m)) ?? prefs.find((m) => m !== self))
    let dataSettled = false
    let notify: () => void = () => {}
    const all = Promise.allSettled(
      prefs.map((member) =>
        this.fetchOne(key, keyBytes, member, member !== dataFrom).then(
          (answer) => {
            if (answer.versionsOnly) read.addVersions(member, answer.state)
            else read.addReply(member, answer.state)
            if (member === dataFrom) dataSettled = true
            notify()
          },
          () => {
            read.addFailure(member)
            if (member === dataFrom) dataSettled = true
            notify()
          },
        ),
      ),
    )
    const deadline = this.ctx.now() + this.ctx.config.quorumTimeoutMs
    // Until the quorum is met or cannot be (every replica, when blocking), and, while the data
    // is still on its way, until the versions in need no values from it.
    const ready = () => read.enough(blocking) && (dataSettled || read.missingValues().length === 0)
    for (;;) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(0, deadline - this.ctx.now()))
        timer.unref()
        notify = () => {
          if (ready()) {
            clearTimeout(timer)
            resolve()
          }
        }
        notify()
      })
      notify = () => {}
      if (!(await this.fetchMissingValues(key, keyBytes, read))) break
      // A value fetch failed: that answer no longer counts, so wait again (until the deadline).
      if (read.enough(blocking) || this.ctx.now() >= deadline) break
    }
    const response = read.missingValues().length === 0 ? read.response() : null
    if (response === null) {
      this.ctx.stats.quorumFailures.read++
      throw new KvError(
        'KV_ERR_QUORUM_UNAVAILABLE',
        `only ${read.replies.size} of the ${r} replicas needed answered the read of ${JSON.stringify(key)}`,
        { required: r, acks: read.replies.size, replicas: prefs.join(',') },
      )
    }
    if (blocking) {
      await this.repair(key, keyBytes, read)
    } else {
      // The rest of the replies, then repair, off the client's path.
      this.ctx.runInBackground(
        new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, this.ctx.config.quorumTimeoutMs)
          timer.unref()
          void all.then(() => {
            clearTimeout(timer)
            resolve()
          })
        }).then(() => this.repair(key, keyBytes, read)),
      )
    }
    return { state: response.state, replicas: prefs, answered: read.replies.size }
  }

  /** One replica's answer to a read: its state, or (`versionsOnly`) its versions only. */
  private async fetchOne(
    key: string,
    keyBytes: Buffer,
    member: string,
    versionsOnly: boolean,
  ): Promise<
    | { state: State | null; versionsOnly: false }
    | { state: VersionsOnly | null; versionsOnly: true }
  > {
    if (member === this.ctx.self) {
      this.replica.refuseWhileRefilling()
      return { state: await this.replica.loadState(key), versionsOnly: false }
    }
    const reply = await this.peers.call(member, {
      kind: 'fetch',
      key: keyBytes,
      ...(versionsOnly ? { versionsOnly: true } : {}),
    })
    if (reply.kind !== 'fetchReply')
      throw new KvError('KV_ERR_BAD_FRAME', `${member} answered a fetch with ${reply.kind}`)
    const state = reply.record === null ? null : toState(reply.record)
    if (state) this.replica.admit(state, member, key)
    if (reply.versionsOnly !== true) return { state, versionsOnly: false }
    if (!versionsOnly)
      throw new KvError('KV_ERR_BAD_FRAME', `${member} left the values out of a full read`)
    return { state: state === null ? null : versionsOf(state), versionsOnly: true }
  }

  /**
   * Fetches the values the read's merge needs from the replicas that sent only their versions
   * (a second round trip, counted in digestMismatches). False when every fetch succeeded, true
   * when one failed (its answer then no longer counts).
   */
  private async fetchMissingValues(
    key: string,
    keyBytes: Buffer,
    read: ReadQuorum<Uint8Array>,
  ): Promise<boolean> {
    let failed = false
    // Each pass settles at least one replica (fetched or dropped), so this ends.
    for (let missing = read.missingValues(); missing.length > 0; missing = read.missingValues()) {
      this.ctx.stats.digestMismatches += missing.length
      await Promise.all(
        missing.map((member) =>
          this.fetchOne(key, keyBytes, member, false).then(
            (answer) => read.upgrade(member, answer.state as State | null),
            () => {
              read.upgradeFailed(member)
              failed = true
            },
          ),
        ),
      )
    }
    return failed
  }

  /**
   * Read repair: sends the merge of every reply so far to every replier whose state differs
   * (fetching first any value a late versions-only answer showed and no full answer holds).
   */
  private async repair(key: string, keyBytes: Buffer, read: ReadQuorum<Uint8Array>): Promise<void> {
    await this.fetchMissingValues(key, keyBytes, read)
    const { merged, stale } = read.repairs()
    if (merged === null || stale.length === 0) return
    await Promise.allSettled(
      stale.map(async (member) => {
        if (member === this.ctx.self) await this.replica.mergeLocal(key, merged, this.ctx.self)
        else
          await this.peers.call(member, {
            kind: 'store',
            key: keyBytes,
            record: merged,
            hintFor: '',
          })
        this.ctx.stats.readRepairs++
      }),
    )
  }
}
