/**
 * Anti-entropy: every `antiEntropyIntervalMs`, this member compares the Merkle tree of every
 * replica set it shares with each peer (roots, then leaves of the sets whose roots differ)
 * and both sides exchange only the keys of the differing leaves, in messages of bounded size.
 * A member with a fresh data directory is refilled this way before its reads count. The trees
 * and the leaf diff are the core's (AntiEntropyIndex, differingLeaves).
 */
import { differingLeaves, ringReplicaSets, sharedSets, stateDigest } from '@kvstore/core'
import { KvError, type KeyRecord, type PeerReply } from '@kvstore/protocol'
import { toState, type LeaderlessContext, type State } from './context.js'
import {
  aeBytesPerMessageMax,
  aeCallTimeoutMs,
  aeLeavesPerMessageMax,
  aeRecordsPerMessageMax,
  treeDepth,
} from '../limits.js'
import { aeMessageFits, recordBytes } from './message-size.js'
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
    return { kind: 'keysReply', records }
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
    if (this.aeRunning) return
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
      // Stream the differing leaves in messages of bounded size.
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
        if (reply.kind !== 'keysReply')
          throw new KvError('KV_ERR_BAD_FRAME', `${peer} answered keys with ${reply.kind}`)
        repaired += await this.replica.mergeMany(
          reply.records.map(
            (r) => [this.replica.keyOf(r.key), toState(r.record)] as [string, State],
          ),
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
    }
    this.ctx.stats.antiEntropyExchanges++
    this.noteExchange(peer, repaired)
    if (repaired > 0) this.ctx.log.info({ peer, repaired }, 'anti-entropy repaired keys')
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
