/**
 * This member's own copy of the data (the local replica): the actor id and dot counter, a
 * lock per key, reading, merging and persisting states through the node's log, the checks on
 * records from peers, and the anti-entropy index kept in step with every change.
 */
import { randomBytes } from 'node:crypto'
import {
  AntiEntropyIndex,
  HybridClock,
  invariant,
  mergeIncoming,
  replicaSetOf,
  type MergePolicy,
} from '@kvstore/core'
import {
  KvError,
  counterMax,
  decodeVersionedRecord,
  encodeVersionedRecord,
  keyToBytes,
  leaderlessLimits,
  type HlcStamp,
} from '@kvstore/protocol'
import type { WriteOp } from '@kvstore/storage'
import { dataPrefix, metaPrefix, toState, type LeaderlessContext, type State } from './context.js'
import {
  aeMergeConcurrency,
  clockSkewMaxMs,
  counterReservation,
  loadPageEntries,
  treeDepth,
} from '../limits.js'
import { peerRecordProblem } from './peer-records.js'

const utf8 = new TextDecoder('utf-8', { fatal: true })

export class LocalReplica {
  /** This data directory's actor id (a wiped member is a new actor). */
  actor = ''
  /** Dots this actor has minted. */
  counter = 0
  private counterReserved = 0
  private reserving: Promise<void> | null = null
  private readonly locks = new Map<string, Promise<void>>()
  /** Changes of keys under way (see `drain`). */
  private readonly inFlight = new Set<Promise<unknown>>()
  /**
   * Per replica set ("n1,n2,n4") this member belongs to: the Merkle tree and the keys of each
   * leaf; per key, its digest; and the keys holding only tombstones.
   */
  readonly index = new AntiEntropyIndex(treeDepth)
  readonly clock: HybridClock
  /**
   * True from the start of a member with a fresh data directory (new, or wiped) until it has
   * completed an anti-entropy exchange with every member it could reach. Meanwhile its empty
   * answers do not count toward R: a read must not take "nothing here" from a member that may
   * simply not have been refilled yet.
   */
  refilling = false
  private lastSiblingWarnMs = 0
  private lastRefusalLogMs = 0
  private refusedSinceLog = 0

  constructor(private readonly ctx: LeaderlessContext) {
    this.clock = new HybridClock(ctx.self, clockSkewMaxMs)
  }

  private metaKey(name: string): Buffer {
    return Buffer.concat([Buffer.from([metaPrefix]), Buffer.from(name, 'utf8')])
  }

  private async readMeta(name: string): Promise<string | null> {
    const record = await this.ctx.store.get(this.metaKey(name))
    return record === null || record.tombstone ? null : record.value.toString('utf8')
  }

  private async writeMeta(name: string, value: string): Promise<void> {
    await this.ctx.sequencer.write({
      kind: 'put',
      ops: [{ type: 'put', key: this.metaKey(name), value: Buffer.from(value, 'utf8') }],
    })
  }

  async loadMeta(): Promise<void> {
    let actor = await this.readMeta('actor')
    if (actor === null) {
      // A fresh data directory is a new actor: a wiped member never reuses its old dots.
      actor = `${this.ctx.self}.${randomBytes(4).toString('hex')}`
      await this.writeMeta('actor', actor)
      this.ctx.log.info({ actor }, 'new leaderless actor id for this data directory')
      this.refilling = true
    }
    this.actor = actor
    const text = (await this.readMeta('counter')) ?? '0'
    const reserved = Number(text)
    // Read back, checked: every check of a peer's counters rests on this one.
    if (!/^\d+$/.test(text) || !Number.isSafeInteger(reserved) || reserved > counterMax) {
      throw new KvError(
        'KV_ERR_STORAGE',
        `the stored dot counter ${JSON.stringify(text)} is corrupt (an integer up to ${counterMax} expected)`,
      )
    }
    this.counter = reserved
    this.counterReserved = reserved
  }

  /** A dot counter never used before by this actor, on any key. */
  async nextCounter(): Promise<number> {
    while (this.counter + 1 > this.counterReserved) {
      this.reserving ??= (async () => {
        const target = Math.min(this.counter + counterReservation, counterMax)
        if (target <= this.counter) {
          throw new KvError('KV_ERR_INTERNAL', `${this.actor} has minted every dot (${counterMax})`)
        }
        await this.writeMeta('counter', String(target))
        this.counterReserved = target
      })().finally(() => {
        this.reserving = null
      })
      await this.reserving
    }
    this.counter++
    // Persist before use: every dot handed out is covered by the durable reservation, so a
    // restart never mints one again.
    invariant(
      this.counter <= this.counterReserved,
      () => `dot ${this.counter} minted past the durable reservation ${this.counterReserved}`,
    )
    return this.counter
  }

  private dataKey(key: string): Buffer {
    return Buffer.concat([Buffer.from([dataPrefix]), Buffer.from(key, 'utf8')])
  }

  /** Runs `fn` with the key locked (one local read-merge-write at a time per key). */
  locked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const run = this.lockedRun(id, fn)
    this.inFlight.add(run)
    void run.then(
      () => this.inFlight.delete(run),
      () => this.inFlight.delete(run),
    )
    return run
  }

  /**
   * Waits for every change of a key under way now (not those started later): a handoff source
   * calls it after it learned a new ring, so the writes it took under the older ring are in
   * what it streams.
   */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.inFlight])
  }

  private async lockedRun<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(id) ?? Promise.resolve()
    let release!: () => void
    const mine = new Promise<void>((resolve) => (release = resolve))
    const chained = previous.then(() => mine)
    this.locks.set(id, chained)
    await previous
    try {
      return await fn()
    } finally {
      release()
      if (this.locks.get(id) === chained) this.locks.delete(id)
    }
  }

  async loadState(key: string): Promise<State | null> {
    // Every key this member holds is in the digest index (loaded at start, kept by persist):
    // a key that is not there needs no LevelDB read, which spares one on every new key.
    if (!this.index.holds(key)) return null
    const record = await this.ctx.store.get(this.dataKey(key))
    if (record === null || record.tombstone) return null
    return this.decodeFromDisk(record.value, key)
  }

  private decodeFromDisk(bytes: Uint8Array, key: string): State {
    try {
      return toState(decodeVersionedRecord(bytes))
    } catch (err) {
      throw new KvError(
        'KV_ERR_STORAGE',
        `stored record of ${JSON.stringify(key)} is corrupt: ${(err as Error).message}`,
      )
    }
  }

  /** The replica set (sorted preference list) a key belongs to. */
  setOf(key: string): string {
    // Before this member knows a ring (--join), a key it holds is filed under no set.
    const placement = this.ctx.placementOrNull
    return placement === null ? '' : replicaSetOf(placement.read, key, this.ctx.n)
  }

  preferenceList(key: string): string[] {
    return this.ctx.ring.preferenceList(key, this.ctx.n)
  }

  /** Keeps the anti-entropy index (trees, leaf keys, tombstones) in step with a key's state. */
  private indexKey(key: string, state: State | null): void {
    this.index.update(this.setOf(key), key, state)
  }

  /** Loads every key this member holds into the index (at start); returns how many. */
  async loadLocalState(): Promise<number> {
    let after: Buffer | undefined
    let keys = 0
    for (;;) {
      const page = await this.ctx.store.list({
        prefix: Buffer.from([dataPrefix]),
        ...(after ? { after } : {}),
        limit: loadPageEntries,
      })
      for (const item of page.items) {
        const key = item.key.subarray(1).toString('utf8')
        const state = this.decodeFromDisk(item.record.value, key)
        for (const s of state.siblings)
          this.clock.observe(s.value.hlc, Math.max(this.ctx.now(), s.value.hlc.wallMs))
        this.indexKey(key, state)
        keys++
      }
      if (!page.more || page.items.length === 0) break
      after = page.items[page.items.length - 1]?.key
    }
    return keys
  }

  /**
   * Checks a state a peer sent before anything of it is merged (`peerRecordProblem`: counters
   * this member never minted, or above counterMax; timestamps too far ahead), then advances the
   * clock past its timestamps. A refused state is counted, logged and thrown as
   * KV_ERR_BAD_FRAME: a 'store' answers with that refusal, anti-entropy skips the record, and a
   * read does not count the reply.
   */
  admit(state: State, from: string, key: string): void {
    const problem = peerRecordProblem(state, {
      actor: this.actor,
      minted: this.counter,
      nowMs: this.ctx.now(),
      clockSkewMaxMs,
    })
    if (problem !== null) {
      this.ctx.stats.peerRecordsRefused++
      this.refusedSinceLog++
      const now = this.ctx.now()
      if (now - this.lastRefusalLogMs >= 1000) {
        this.lastRefusalLogMs = now
        this.ctx.log.warn(
          { from, key, problem, refused: this.refusedSinceLog },
          'refused a record from a peer; it was not merged',
        )
        this.refusedSinceLog = 0
      }
      throw new KvError(
        'KV_ERR_BAD_FRAME',
        `${this.ctx.self} refused the record of ${JSON.stringify(key)} from ${from}: ${problem}`,
      )
    }
    for (const s of state.siblings) this.clock.observe(s.value.hlc, this.ctx.now())
  }

  private checkStamp(hlc: HlcStamp): void {
    const now = this.ctx.now()
    if (hlc.wallMs > now + clockSkewMaxMs) {
      throw new KvError(
        'KV_ERR_BAD_FRAME',
        `a timestamp from ${hlc.node} is ${hlc.wallMs - now} ms ahead of this clock (at most ${clockSkewMaxMs})`,
      )
    }
  }

  observeStamp(hlc: HlcStamp): void {
    this.checkStamp(hlc)
    this.clock.observe(hlc, this.ctx.now())
  }

  noteSiblings(key: string, state: State, dropped: number): void {
    if (dropped > 0) {
      if (this.ctx.config.conflicts === 'lww') this.ctx.stats.lwwDiscarded += dropped
      else {
        this.ctx.stats.siblingsPruned += dropped
        this.ctx.log.warn(
          { key, dropped, siblingsMax: this.ctx.config.siblingsMax },
          'replicas merged past the sibling cap: the oldest siblings were dropped',
        )
      }
    }
    const live = state.siblings.length
    if (this.ctx.config.conflicts === 'siblings' && live >= this.ctx.config.siblingsWarn) {
      this.ctx.stats.siblingWarnings++
      const now = this.ctx.now()
      if (now - this.lastSiblingWarnMs > 1000) {
        this.lastSiblingWarnMs = now
        this.ctx.log.warn(
          {
            key,
            siblings: live,
            siblingsWarn: this.ctx.config.siblingsWarn,
            siblingsMax: this.ctx.config.siblingsMax,
          },
          'a key holds many siblings: read it and write with its context to resolve them',
        )
      }
    }
  }

  async persist(
    key: string,
    state: State | null,
    request?: { id: string; fingerprint: Buffer },
  ): Promise<void> {
    // Never write a record that could not be read back.
    if (
      state !== null &&
      (Object.keys(state.vector).length > leaderlessLimits.vectorEntriesMax ||
        state.siblings.length > leaderlessLimits.siblingsMax)
    ) {
      throw new KvError(
        'KV_ERR_INVALID_CONTEXT',
        `the state of ${JSON.stringify(key)} would name ${Object.keys(state.vector).length} actors and hold ${state.siblings.length} siblings; a record holds at most ${leaderlessLimits.vectorEntriesMax} and ${leaderlessLimits.siblingsMax}`,
      )
    }
    // Every state persisted here went through the cap (mergeIncoming, mintWrite).
    invariant(
      state === null ||
        state.siblings.length <=
          (this.ctx.config.conflicts === 'lww' ? 1 : this.ctx.config.siblingsMax),
      () =>
        `the state of ${JSON.stringify(key)} holds ${state?.siblings.length} siblings, past the cap`,
    )
    const op: WriteOp =
      state === null
        ? { type: 'delete', key: this.dataKey(key) }
        : { type: 'put', key: this.dataKey(key), value: Buffer.from(encodeVersionedRecord(state)) }
    await this.ctx.sequencer.write({
      kind: state === null ? 'delete' : 'put',
      ops: [op],
      // The logged op is the merged state; the id is bound to the client's request.
      ...(request !== undefined ? { requestId: request.id, fingerprint: request.fingerprint } : {}),
    })
    this.indexKey(key, state)
  }

  /** Merges a state from `from` into this member's copy; true when the copy changed. */
  mergeLocal(
    key: string,
    incoming: State,
    from: string,
  ): Promise<{ changed: boolean; state: State }> {
    this.admit(incoming, from, key)
    return this.locked(key, async () => {
      const current = await this.loadState(key)
      const { changed, state, dropped } = mergeIncoming(current, incoming, this.ctx.now(), {
        mode: this.ctx.config.conflicts,
        siblingsMax: this.ctx.config.siblingsMax,
        tombstoneGcMs: this.ctx.config.tombstoneGcMs,
      })
      if (!changed) return { changed, state }
      await this.persist(key, state)
      this.noteSiblings(key, state, dropped)
      return { changed, state }
    })
  }

  keyOf(bytes: Uint8Array): string {
    let key: string
    try {
      key = utf8.decode(bytes)
    } catch {
      throw new KvError('KV_ERR_BAD_FRAME', 'a key is not valid UTF-8')
    }
    keyToBytes(key, this.ctx.config.keyBytesMax)
    return key
  }

  /**
   * Merges many states (an anti-entropy batch) several at a time, so their writes share
   * LevelDB batches; a record that is refused (see `admit`: a counter never minted, a clock too
   * far ahead) is skipped, never merged, and not allowed to fail the batch: the rest of the
   * batch still converges. Returns how many keys changed here.
   */
  async mergeMany(
    states: [string, State][],
    from: string,
    concurrency: number = aeMergeConcurrency,
  ): Promise<number> {
    let changed = 0
    let next = 0
    await Promise.all(
      Array.from({ length: Math.min(concurrency, states.length) }, async () => {
        for (let i = next++; i < states.length; i = next++) {
          const [key, state] = states[i] as [string, State]
          try {
            if ((await this.mergeLocal(key, state, from)).changed) changed++
          } catch (err) {
            if (!(err instanceof KvError) || err.code === 'KV_ERR_STORAGE') throw err
            // admit() counted and logged a refused record already.
            if (err.code !== 'KV_ERR_BAD_FRAME')
              this.ctx.log.warn({ err, key, from }, 'skipped a record from anti-entropy')
          }
        }
      }),
    )
    return changed
  }

  /** A fresh member still being refilled (GET /ready answers 503 meanwhile). */
  get isRefilling(): boolean {
    return this.refilling
  }

  refuseWhileRefilling(): void {
    if (this.refilling) {
      throw new KvError(
        'KV_ERR_NOT_READY',
        `${this.ctx.self} started with an empty data directory and is still being refilled by anti-entropy; its reads do not count yet`,
      )
    }
  }

  /** This member's own copy of a key (for inspection). */
  localState(key: string): Promise<State | null> {
    return this.loadState(key)
  }

  get mergePolicy(): MergePolicy {
    return { mode: this.ctx.config.conflicts, siblingsMax: this.ctx.config.siblingsMax }
  }
}
