/**
 * Hinted handoff: a stand-in keeps a write meant for a replica the coordinator could not
 * reach as a durable hint ('h' + target + 0x00 + key), and replays it once the replica is
 * back; a hint older than `hintWindowMs` is dropped (anti-entropy repairs what it carried).
 * When to hint, expire and pick a stand-in is decided in the core (leaderless/hints.ts).
 */
import { hintExpired, invariant, mergeStates } from '@kvstore/core'
import { KvError, decodeHint, encodeHint } from '@kvstore/protocol'
import type { ListItem } from '@kvstore/storage'
import { hintPrefix, type LeaderlessContext, type State } from './context.js'
import {
  hintReplayBatch,
  hintReplayBudgetMs,
  hintReplayConcurrency,
  loadPageEntries,
} from '../limits.js'
import type { LocalReplica } from './local-replica.js'
import type { PeerHealth } from './peer-health.js'

/** The target member named in a hint's key. */
function hintTarget(key: Buffer): string {
  const zero = key.indexOf(0, 1)
  invariant(zero > 0, 'a stored hint key names no target')
  return key.subarray(1, zero).toString('utf8')
}

export class HintedHandoff {
  /** Hints held per target member. */
  private readonly hintCounts = new Map<string, number>()
  private hintTotal = 0
  private replayRunning = false

  constructor(
    private readonly ctx: LeaderlessContext,
    private readonly replica: LocalReplica,
    private readonly peers: PeerHealth,
  ) {}

  /** Hints held for `member`. */
  backlogOf(member: string): number {
    return this.hintCounts.get(member) ?? 0
  }

  private hintKey(target: string, key: string): Buffer {
    return Buffer.concat([
      Buffer.from([hintPrefix]),
      Buffer.from(target, 'utf8'),
      Buffer.from([0]),
      Buffer.from(key, 'utf8'),
    ])
  }

  async countHints(): Promise<void> {
    this.hintCounts.clear()
    this.hintTotal = 0
    let after: Buffer | undefined
    for (;;) {
      const page = await this.ctx.store.list({
        prefix: Buffer.from([hintPrefix]),
        ...(after ? { after } : {}),
        limit: loadPageEntries,
      })
      for (const item of page.items) {
        const target = hintTarget(item.key)
        this.hintCounts.set(target, (this.hintCounts.get(target) ?? 0) + 1)
        this.hintTotal++
      }
      if (!page.more || page.items.length === 0) break
      after = page.items[page.items.length - 1]?.key
    }
  }

  async storeHint(target: string, key: string, incoming: State, from: string): Promise<void> {
    this.replica.admit(incoming, from, key)
    const hk = this.hintKey(target, key)
    await this.replica.locked(`h\u0000${target}\u0000${key}`, async () => {
      const existing = await this.ctx.store.get(hk)
      let state = incoming
      const isNew = existing === null || existing.tombstone
      if (!isNew) {
        state = mergeStates(
          decodeHint(existing.value).record as State,
          incoming,
          this.ctx.config.conflicts,
          this.ctx.config.siblingsMax,
        ).state
      } else if (this.hintTotal >= this.ctx.config.hintsMax) {
        this.ctx.stats.hintsDropped.full++
        throw new KvError(
          'KV_ERR_OVERLOADED',
          `this member already holds ${this.hintTotal} hints (hintsMax)`,
        )
      }
      await this.ctx.sequencer.write({
        kind: 'put',
        ops: [
          {
            type: 'put',
            key: hk,
            value: Buffer.from(encodeHint({ storedAtMs: this.ctx.now(), record: state })),
          },
        ],
      })
      if (isNew) {
        this.hintCounts.set(target, (this.hintCounts.get(target) ?? 0) + 1)
        this.hintTotal++
      }
      this.ctx.stats.hintsStored++
    })
  }

  async replayHints(): Promise<void> {
    if (this.replayRunning || this.hintTotal === 0) return
    this.replayRunning = true
    try {
      for (const [target, count] of this.hintCounts) {
        if (count === 0 || this.ctx.stopped) continue
        // For a member that is down, only drop what expired (it frees room for other hints).
        await this.replayTo(target, !this.peers.isUp(target))
      }
    } finally {
      this.replayRunning = false
    }
  }

  /**
   * Replays the hints held for `target`, `hintReplayConcurrency` at a time, page after page,
   * for at most `hintReplayBudgetMs` per pass (the next pass goes on). Stops at the first
   * failure: the target went away again.
   */
  private async replayTo(target: string, expireOnly = false): Promise<void> {
    const prefix = Buffer.concat([
      Buffer.from([hintPrefix]),
      Buffer.from(target, 'utf8'),
      Buffer.from([0]),
    ])
    const started = this.ctx.now()
    let replayed = 0
    let after: Buffer | undefined
    while (!this.ctx.stopped && this.ctx.now() - started < hintReplayBudgetMs) {
      const page = await this.ctx.store.list({
        prefix,
        ...(after ? { after } : {}),
        limit: hintReplayBatch,
      })
      if (page.items.length === 0) break
      after = page.items[page.items.length - 1]?.key
      let failed = false
      let next = 0
      await Promise.all(
        Array.from({ length: hintReplayConcurrency }, async () => {
          for (let i = next++; i < page.items.length && !failed && !this.ctx.stopped; i = next++) {
            if (await this.replayOne(target, prefix, page.items[i] as ListItem, expireOnly)) {
              // A pass for a member that is down only drops expired hints: nothing is replayed.
              if (!expireOnly) replayed++
            } else failed = true
          }
        }),
      )
      if (failed || !page.more) break
    }
    if (replayed > 0) {
      this.ctx.log.info(
        { target, hints: replayed, backlog: this.hintCounts.get(target) },
        'replayed hints',
      )
    }
  }

  /** Delivers one hint and deletes it; false when the target did not take it. */
  private async replayOne(
    target: string,
    prefix: Buffer,
    item: ListItem,
    expireOnly: boolean,
  ): Promise<boolean> {
    const key = item.key.subarray(prefix.length).toString('utf8')
    const hint = decodeHint(item.record.value)
    const expired = hintExpired(hint.storedAtMs, this.ctx.now(), this.ctx.config.hintWindowMs)
    if (expireOnly && !expired) return true
    if (!expired) {
      try {
        await this.peers.call(target, {
          kind: 'store',
          key: Buffer.from(key, 'utf8'),
          record: hint.record,
          hintFor: '',
        })
      } catch {
        return false
      }
    }
    // Delete the hint unless a newer write merged into it meanwhile (the next pass sends that).
    const removed = await this.replica.locked(`h\u0000${target}\u0000${key}`, async () => {
      const now = await this.ctx.store.get(item.key)
      if (now === null || now.tombstone || now.version !== item.record.version) return false
      await this.ctx.sequencer.write({ kind: 'delete', ops: [{ type: 'delete', key: item.key }] })
      return true
    })
    if (removed) {
      const held = this.hintCounts.get(target) ?? 0
      invariant(held > 0 && this.hintTotal > 0, () => `removed a hint for ${target} never counted`)
      this.hintCounts.set(target, held - 1)
      this.hintTotal--
      if (expired) this.ctx.stats.hintsDropped.expired++
      else this.ctx.stats.hintsReplayed++
    }
    return true
  }

  hintBacklog(): Record<string, number> {
    return Object.fromEntries([...this.hintCounts].filter(([, n]) => n > 0))
  }

  get hintsHeld(): number {
    return this.hintTotal
  }
}
