/**
 * Anti-entropy: every `antiEntropyIntervalMs`, this member compares the Merkle tree of every
 * replica set it shares with each peer (roots, then leaves of the sets whose roots differ),
 * then the key digests of the differing leaves (from the in-memory index, read from no disk),
 * and both sides exchange only the records of the keys whose digests differ, in messages of
 * bounded size. Under writes, the leaves differ all the time by the writes in flight; a leaf
 * holds thousands of keys in a large store, and only those few differ. (A peer that does not
 * know RangeDigests, an older version, gets the records of every key of the differing leaves,
 * as before.)
 * A member with a fresh data directory is refilled this way before its reads count. The trees
 * and the leaf diff are the core's (AntiEntropyIndex, differingLeaves).
 */
import { differingLeaves, ringReplicaSets, sharedSets, stateDigest } from '@kvstore/core'
import { KvError, type KeyDigest, type KeyRecord, type PeerReply } from '@kvstore/protocol'
import { toState, type LeaderlessContext, type State } from './context.js'
import {
  aeBytesPerMessageMax,
  aeCallTimeoutMs,
  aeDigestsPerMessageMax,
  aeLeavesPerMessageMax,
  aeRecordsPerMessageMax,
  treeDepth,
} from '../limits.js'
import { aeMessageFits, digestBytes, recordBytes } from './message-size.js'
import type { LocalReplica } from './local-replica.js'
import type { PeerHealth } from './peer-health.js'
import { PeerUnreachable } from './rpc.js'

interface ExchangeStatus {
  atMs: number
  keysRepaired: number
}

export class AntiEntropy {
  private readonly exchanges = new Map<string, ExchangeStatus>()
  private aeRunning = false

  constructor(
    private readonly ctx: LeaderlessContext,
    private readonly replica: LocalReplica,
    private readonly peers: PeerHealth,
  ) {}

  /** The last exchange with `member`, if any. */
  exchangeOf(member: string): ExchangeStatus | undefined {
    return this.exchanges.get(member)
  }

  /** Serves a RangeRoots request: this member's root of each set. */
  serveRoots(sets: string[]): PeerReply {
    return { kind: 'rootsReply', roots: sets.map((set) => this.rootOf(set)) }
  }

  /** Serves a RangeLeaves request: every leaf digest of a set's tree. */
  serveLeaves(set: string): PeerReply {
    return { kind: 'leavesReply', leaves: this.replica.index.leafDigests(set) }
  }

  /**
   * Serves a RangeKeys request: merges the peer's records of the differing leaves, and answers
   * with this member's records of those leaves that the peer did not send as they are here.
   */
  async serveKeys(
    from: string,
    set: string,
    leaves: number[],
    sent: KeyRecord[],
  ): Promise<PeerReply> {
    const theirs = new Map<string, State>()
    for (const r of sent) theirs.set(this.replica.keyOf(r.key), toState(r.record))
    const repaired = await this.replica.mergeMany([...theirs], from)
    // The answer is bounded too; what does not fit goes in a later exchange (the leaves
    // still differ then).
    const records: KeyRecord[] = []
    let bytes = 0
    outer: for (const leaf of leaves) {
      for (const key of this.replica.index.keysIn(set, leaf)) {
        const mine = await this.replica.loadState(key)
        if (mine === null) continue
        const theirState = theirs.get(key)
        if (theirState !== undefined && stateDigest(theirState) === stateDigest(mine)) continue
        const size = recordBytes(key, mine)
        if (!aeMessageFits(records.length, bytes, size)) break outer
        records.push({ key: Buffer.from(key, 'utf8'), record: mine })
        bytes += size
      }
    }
    this.noteExchange(from, repaired)
    this.ctx.stats.antiEntropyRecordsSent += records.length
    return { kind: 'keysReply', records }
  }

  /**
   * Serves a RangeDigests request: answers with this member's records of those leaves whose
   * digest differs from the peer's or that the peer lacks (read from disk, bounded: what does
   * not fit goes in a later exchange), and the keys whose records it wants from the peer.
   */
  async serveDigests(
    from: string,
    set: string,
    leaves: number[],
    digests: KeyDigest[],
  ): Promise<PeerReply> {
    const theirs = new Map<string, number>()
    for (const d of digests) theirs.set(this.replica.keyOf(d.key), d.digest)
    const index = this.replica.index
    const records: KeyRecord[] = []
    const wanted: Uint8Array[] = []
    let bytes = 0
    let full = false
    for (const leaf of leaves) {
      for (const key of index.keysIn(set, leaf)) {
        const their = theirs.get(key)
        const mine = index.digestOf(key)
        if (their === mine) continue
        if (their !== undefined) wanted.push(Buffer.from(key, 'utf8'))
        if (full) continue
        const state = await this.replica.loadState(key)
        if (state === null) continue
        const size = recordBytes(key, state)
        if (!aeMessageFits(records.length, bytes, size)) {
          full = true
          continue
        }
        records.push({ key: Buffer.from(key, 'utf8'), record: state })
        bytes += size
      }
    }
    // Keys the peer holds in these leaves and this member does not.
    for (const key of theirs.keys()) if (!index.holds(key)) wanted.push(Buffer.from(key, 'utf8'))
    this.ctx.stats.antiEntropyRecordsSent += records.length
    return { kind: 'digestsReply', records, wanted }
  }

  /** This member's replica sets, with each one's root and key count (for inspection). */
  rangeRoots(): { replicas: string; root: number; keys: number }[] {
    return this.allSets()
      .filter((set) => set.split(',').includes(this.ctx.self))
      .map((set) => ({
        replicas: set,
        root: this.rootOf(set),
        keys: this.replica.index.keyCount(set),
      }))
  }

  /** The replica sets this member shares with `peer`. */
  private sharedSets(peer: string): string[] {
    return sharedSets(this.allSets(), this.ctx.self, peer)
  }

  /** The root of a replica set's tree here (0 when this member never held a key of it). */
  private rootOf(set: string): number {
    return this.replica.index.root(set)
  }

  private setsCache: string[] | null = null

  /** The ring changed: the sets and arcs are worked out again. */
  ringChanged(): void {
    this.setsCache = null
    this.arcsCache = null
  }

  /** Every replica set of the ring. */
  allSets(): string[] {
    this.setsCache ??= ringReplicaSets(this.ctx.ring, this.ctx.n)
    return this.setsCache
  }

  private arcsCache: { start: number; end: number; replicas: string[] }[] | null = null

  /** The ring's arcs with the preference list of the keys in each. */
  arcs(): { start: number; end: number; replicas: string[] }[] {
    if (this.arcsCache) return this.arcsCache
    this.arcsCache = this.ctx.ring.ranges().map((r) => ({
      start: r.start,
      end: r.end,
      replicas: this.ctx.ring.preferenceListAt(r.end, this.ctx.n),
    }))
    return this.arcsCache
  }

  async run(): Promise<void> {
    // A member not (or no longer) in its ring shares no replica set with anyone.
    if (this.aeRunning || this.ctx.placementOrNull === null) return
    try {
      void this.ctx.placement
    } catch {
      return
    }
    this.aeRunning = true
    try {
      for (const peer of this.peers.peers) {
        if (this.ctx.stopped) return
        if (!this.peers.isUp(peer)) continue
        try {
          await this.exchangeWith(peer)
        } catch (err) {
          if (!(err instanceof PeerUnreachable))
            this.ctx.log.warn({ err, peer }, 'anti-entropy exchange failed')
        }
      }
    } finally {
      this.aeRunning = false
    }
  }

  /** One anti-entropy exchange with `peer` over every replica set both belong to. */
  async exchangeWith(peer: string): Promise<number> {
    const sets = this.sharedSets(peer)
    const roots = await this.peers.call(peer, { kind: 'rangeRoots', sets }, aeCallTimeoutMs)
    if (roots.kind !== 'rootsReply' || roots.roots.length !== sets.length) {
      throw new KvError('KV_ERR_BAD_FRAME', `${peer} answered the roots request with ${roots.kind}`)
    }
    let repaired = 0
    for (let i = 0; i < sets.length; i++) {
      const set = sets[i] as string
      if (this.rootOf(set) === roots.roots[i]) continue
      const leavesReply = await this.peers.call(peer, { kind: 'rangeLeaves', set }, aeCallTimeoutMs)
      if (leavesReply.kind !== 'leavesReply' || leavesReply.leaves.length !== 2 ** treeDepth) {
        throw new KvError(
          'KV_ERR_BAD_FRAME',
          `${peer} answered the leaves request with ${leavesReply.kind}`,
        )
      }
      const differing = differingLeaves(this.replica.index.leafDigests(set), leavesReply.leaves)
      const byDigest = await this.exchangeDigests(peer, set, differing)
      repaired += byDigest.repaired
      repaired += await this.exchangeRecords(peer, set, byDigest.rest)
    }
    this.ctx.stats.antiEntropyExchanges++
    this.noteExchange(peer, repaired)
    if (repaired > 0) this.ctx.log.info({ peer, repaired }, 'anti-entropy repaired keys')
    return repaired
  }

  /**
   * Exchanges the differing leaves by key digest, in messages of bounded size (whole leaves
   * each): sends every key digest of the leaves, merges the peer's differing records, and sends
   * the records it asks for. Returns the keys repaired here, and the leaves left for the
   * records path: a leaf too large for one digest message, or every leaf when the peer does
   * not know RangeDigests (an older version).
   */
  private async exchangeDigests(
    peer: string,
    set: string,
    differing: number[],
  ): Promise<{ repaired: number; rest: number[] }> {
    const rest: number[] = []
    let repaired = 0
    let leaves: number[] = []
    let digests: KeyDigest[] = []
    let bytes = 0
    const flush = async (): Promise<boolean> => {
      if (leaves.length === 0) return true
      let reply: PeerReply
      try {
        reply = await this.peers.call(
          peer,
          { kind: 'rangeDigests', set, leaves, digests },
          aeCallTimeoutMs,
        )
      } catch (err) {
        // An older member knows no RangeDigests: its decoder finds no body it knows.
        if (err instanceof KvError && err.code === 'KV_ERR_BAD_FRAME') {
          this.ctx.log.info({ peer, err }, 'anti-entropy by key digest refused; by records')
          return false
        }
        throw err
      }
      if (reply.kind !== 'digestsReply')
        throw new KvError('KV_ERR_BAD_FRAME', `${peer} answered digests with ${reply.kind}`)
      repaired += await this.replica.mergeMany(
        reply.records.map((r) => [this.replica.keyOf(r.key), toState(r.record)] as [string, State]),
        peer,
      )
      await this.sendRecords(
        peer,
        set,
        reply.wanted.map((k) => this.replica.keyOf(k)),
      )
      leaves = []
      digests = []
      bytes = 0
      return true
    }
    const index = this.replica.index
    for (let i = 0; i < differing.length; i++) {
      const leaf = differing[i] as number
      const keys = index.keysIn(set, leaf)
      let leafBytes = 0
      for (const key of keys) leafBytes += digestBytes(key)
      if (keys.length > aeDigestsPerMessageMax || leafBytes > aeBytesPerMessageMax) {
        rest.push(leaf)
        continue
      }
      if (
        digests.length + keys.length > aeDigestsPerMessageMax ||
        bytes + leafBytes > aeBytesPerMessageMax ||
        leaves.length >= aeLeavesPerMessageMax
      ) {
        if (!(await flush())) return { repaired, rest: [...rest, ...leaves, ...differing.slice(i)] }
      }
      leaves.push(leaf)
      for (const key of keys) {
        const digest = index.digestOf(key)
        if (digest !== undefined) digests.push({ key: Buffer.from(key, 'utf8'), digest })
      }
      bytes += leafBytes
    }
    if (!(await flush())) return { repaired, rest: [...rest, ...leaves] }
    return { repaired, rest }
  }

  /** Sends this member's records of `keys` (a RangeKeys with no leaves: nothing comes back). */
  private async sendRecords(peer: string, set: string, keys: string[]): Promise<void> {
    let records: KeyRecord[] = []
    let bytes = 0
    const flush = async () => {
      if (records.length === 0) return
      const reply = await this.peers.call(
        peer,
        { kind: 'rangeKeys', set, leaves: [], records },
        aeCallTimeoutMs,
      )
      this.ctx.stats.antiEntropyRecordsSent += records.length
      if (reply.kind !== 'keysReply')
        throw new KvError('KV_ERR_BAD_FRAME', `${peer} answered keys with ${reply.kind}`)
      records = []
      bytes = 0
    }
    for (const key of keys) {
      const state = await this.replica.loadState(key)
      if (state === null) continue
      const size = recordBytes(key, state)
      if (!aeMessageFits(records.length, bytes, size)) await flush()
      records.push({ key: Buffer.from(key, 'utf8'), record: state })
      bytes += size
    }
    await flush()
  }

  /**
   * Exchanges `leaves` by records: sends this member's records of them, merges the peer's
   * records that differ; in messages of bounded size. Returns the keys repaired here.
   */
  private async exchangeRecords(peer: string, set: string, differing: number[]): Promise<number> {
    let repaired = 0
    let batch: number[] = []
    let records: KeyRecord[] = []
    let bytes = 0
    const flush = async () => {
      if (batch.length === 0 && records.length === 0) return
      const reply = await this.peers.call(
        peer,
        { kind: 'rangeKeys', set, leaves: batch, records },
        aeCallTimeoutMs,
      )
      this.ctx.stats.antiEntropyRecordsSent += records.length
      if (reply.kind !== 'keysReply')
        throw new KvError('KV_ERR_BAD_FRAME', `${peer} answered keys with ${reply.kind}`)
      repaired += await this.replica.mergeMany(
        reply.records.map((r) => [this.replica.keyOf(r.key), toState(r.record)] as [string, State]),
        peer,
      )
      batch = []
      records = []
      bytes = 0
    }
    for (const leaf of differing) {
      for (const key of this.replica.index.keysIn(set, leaf)) {
        const state = await this.replica.loadState(key)
        if (!state) continue
        const size = recordBytes(key, state)
        // A leaf's records may need several messages: the ones sent ahead of their leaf are
        // merged there all the same, and the leaf goes with the last of them.
        if (!aeMessageFits(records.length, bytes, size)) await flush()
        records.push({ key: Buffer.from(key, 'utf8'), record: state })
        bytes += size
      }
      batch.push(leaf)
      if (
        records.length >= aeRecordsPerMessageMax ||
        bytes >= aeBytesPerMessageMax ||
        batch.length >= aeLeavesPerMessageMax
      ) {
        await flush()
      }
    }
    await flush()
    return repaired
  }

  /**
   * After a fresh start: one anti-entropy exchange with every member, retried until each has
   * succeeded or the member is down (its copies cannot be had now; the others hold at least
   * the rest of every acknowledged write).
   */
  async refill(): Promise<void> {
    const started = this.ctx.now()
    const pending = new Set(this.peers.peers)
    let repaired = 0
    while (pending.size > 0 && !this.ctx.stopped) {
      for (const peer of [...pending]) {
        if (!this.peers.isUp(peer)) {
          pending.delete(peer)
          continue
        }
        try {
          repaired += await this.exchangeWith(peer)
          pending.delete(peer)
        } catch {
          // unreachable now (it will be marked down) or busy: the next round tries again
        }
      }
      if (pending.size > 0) await new Promise((resolve) => setTimeout(resolve, 200).unref())
    }
    this.replica.refilling = false
    this.ctx.log.info(
      { repaired, tookMs: this.ctx.now() - started },
      'refilled after a fresh start; reads here count again',
    )
  }

  private noteExchange(peer: string, repaired: number): void {
    const previous = this.exchanges.get(peer)
    this.exchanges.set(peer, {
      atMs: this.ctx.now(),
      keysRepaired: (previous?.keysRepaired ?? 0) + repaired,
    })
    this.ctx.stats.antiEntropyKeysRepaired += repaired
  }
}
