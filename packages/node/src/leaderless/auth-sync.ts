/**
 * The auth store in leaderless mode. There is no leader to order changes, so every member
 * keeps every record (users, roles, settings; a handful of kilobytes each), and a record's
 * versions are ordered by their stamp: a hybrid logical clock, then the member id (last
 * writer wins, the rule of Cassandra's system_auth and of DynamoDB global tables). Deleted
 * users and roles stay as deleted records, so an old copy can never bring them back.
 *
 * - A change is written to this member's own state, then pushed to every member at once; it
 *   is answered once a majority of the members hold it (otherwise KV_ERR_QUORUM_UNAVAILABLE,
 *   and it still spreads from those that took it).
 * - Every `intervalMs` each member compares a digest of its records with every other member
 *   and pulls their records when they differ, so a member that was down or cut off catches up
 *   within one interval of being reachable again; and a member starting on an empty data
 *   directory pulls before it serves.
 *
 * Records from peers are decoded and checked like anything from the network; a malformed one
 * refuses the whole message (KV_ERR_BAD_FRAME).
 */
import type { Logger } from 'pino'
import { HybridClock } from '@kvstore/core'
import {
  DecodeError,
  KvError,
  authRecordKey,
  decodeAuthRecord,
  encodeAuthRecord,
  type AuthRecord,
  type AuthStamp,
  type PeerReply,
  type PeerRequestBody,
} from '@kvstore/protocol'
import type { Sequencer, WriteOp } from '@kvstore/storage'
import type { AuthStore } from '../security/auth-store.js'
import type { AuthWrite, AuthWriter } from '../security/auth-admin.js'
import { knownCode } from './context.js'

export interface AuthSyncOptions {
  auth: AuthStore
  sequencer: Sequencer
  self: string
  members: readonly string[]
  /** Sends one request to a peer (the leaderless RPC). */
  call(peer: string, body: PeerRequestBody, timeoutMs: number): Promise<PeerReply>
  timeoutMs: number
  intervalMs: number
  log: Logger
  now?: () => number
}

export class AuthSync {
  private readonly clock: HybridClock
  private readonly now: () => number
  private timer: NodeJS.Timeout | null = null
  private running: Promise<void> | null = null
  /** Local writes are serialized: each compares against what the previous one left. */
  private writing: Promise<unknown> = Promise.resolve()

  constructor(private readonly options: AuthSyncOptions) {
    this.now = options.now ?? Date.now
    this.clock = new HybridClock(options.self)
    this.members = options.members
  }

  private members: readonly string[]

  private get peers(): string[] {
    return this.members.filter((m) => m !== this.options.self)
  }

  /** The ring changed: these are the members now. */
  setMembers(members: readonly string[]): void {
    this.members = [...members]
  }

  /** A stamp for a change made here now, after every stamp this member has seen. */
  stamp(): AuthStamp {
    for (const record of this.options.auth.allRecords()) {
      if (record.stamp.node !== '' && record.stamp.wallMs <= this.now() + 60_000)
        this.clock.observe(
          { wallMs: record.stamp.wallMs, logical: record.stamp.logical, node: record.stamp.node },
          this.now(),
        )
    }
    const t = this.clock.now(this.now())
    return { wallMs: t.wallMs, logical: t.logical, node: t.node }
  }

  /**
   * Writes the records that are newer than what this member holds, in one local batch.
   * Returns how many it kept.
   */
  mergeLocal(records: AuthRecord[]): Promise<number> {
    const run = async (): Promise<number> => {
      const newer = records.filter((r) => this.options.auth.newer(r))
      if (newer.length === 0) return 0
      const ops: WriteOp[] = newer.map((record) => {
        const kind = record.body.kind
        const current =
          kind === 'settings'
            ? this.options.auth.settingsEntryStored
            : this.options.auth.entry(
                kind,
                kind === 'user'
                  ? (record.body as { user: { name: string } }).user.name
                  : (record.body as { role: { name: string } }).role.name,
              )
        return {
          type: 'put',
          key: authRecordKey(record),
          value: encodeAuthRecord(record),
          ...(current === null ? { ifAbsent: true } : { ifVersion: current.version }),
        }
      })
      await this.options.sequencer.write({ kind: 'batch', ops })
      return newer.length
    }
    const next = this.writing.then(run, run)
    this.writing = next.catch(() => {})
    return next
  }

  private decode(records: Uint8Array[]): AuthRecord[] {
    try {
      return records.map((bytes) => decodeAuthRecord(bytes))
    } catch (err) {
      if (err instanceof DecodeError) throw new KvError('KV_ERR_BAD_FRAME', err.message)
      throw err
    }
  }

  /** A peer's AuthSync: merge what it sent, answer with everything when we still differ. */
  async serve(body: { digest: string; records: Uint8Array[] }): Promise<PeerReply> {
    const incoming = this.decode(body.records)
    for (const record of incoming) {
      if (record.stamp.wallMs > this.now() + 60_000)
        throw new KvError('KV_ERR_BAD_FRAME', 'an auth record is stamped more than a minute ahead')
    }
    await this.mergeLocal(incoming)
    const digest = this.options.auth.digest()
    return {
      kind: 'authState',
      digest,
      records: digest === body.digest ? [] : this.options.auth.allRecords().map(encodeAuthRecord),
    }
  }

  /** Pushes records to every peer; resolves with how many members (this one included) hold them. */
  async push(records: AuthRecord[]): Promise<{ holders: number; members: number }> {
    const encoded = records.map(encodeAuthRecord)
    const results = await Promise.all(
      this.peers.map((peer) =>
        this.exchange(peer, encoded).then(
          () => true,
          () => false,
        ),
      ),
    )
    return { holders: 1 + results.filter(Boolean).length, members: this.members.length }
  }

  /** One exchange with a peer: our digest (and records), their records when we differ. */
  private async exchange(peer: string, records: Uint8Array[]): Promise<void> {
    const reply = await this.options.call(
      peer,
      { kind: 'authSync', digest: this.options.auth.digest(), records },
      this.options.timeoutMs,
    )
    // A refusal keeps the peer's code; another kind of answer is the peer's bug, not ours.
    if (reply.kind === 'refusal')
      throw new KvError(knownCode(reply.code), `${peer} refused: ${reply.message}`)
    if (reply.kind !== 'authState')
      throw new KvError('KV_ERR_BAD_FRAME', `${peer} answered an auth sync with ${reply.kind}`)
    if (reply.records.length > 0) await this.mergeLocal(this.decode(reply.records))
  }

  /** Compares with every peer once; resolves with how many answered. */
  async syncAll(): Promise<number> {
    const results = await Promise.all(
      this.peers.map((peer) =>
        this.exchange(peer, []).then(
          () => true,
          (err: unknown) => {
            this.options.log.debug({ peer, err: (err as Error).message }, 'auth sync failed')
            return false
          },
        ),
      ),
    )
    return results.filter(Boolean).length
  }

  start(): void {
    this.timer = setInterval(() => {
      this.running ??= this.syncAll()
        .then(() => {})
        .finally(() => {
          this.running = null
        })
    }, this.options.intervalMs)
    this.timer.unref()
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer)
    await this.running
  }

  /** The auth writer of leaderless mode: local first, then every member, a majority needed. */
  writer(): AuthWriter {
    return {
      stamp: () => this.stamp(),
      write: async (writes: AuthWrite[]) => {
        // Compare-and-set against this member's own copy, as in the other modes.
        for (const w of writes) {
          const kind = w.record.body.kind
          const current =
            kind === 'settings'
              ? this.options.auth.settingsEntryStored
              : this.options.auth.entry(
                  kind,
                  kind === 'user'
                    ? (w.record.body as { user: { name: string } }).user.name
                    : (w.record.body as { role: { name: string } }).role.name,
                )
          if ((current?.version ?? 0) !== w.expectVersion)
            throw new KvError('KV_ERR_PRECONDITION_FAILED', 'the auth store changed; retrying')
        }
        const records = writes.map((w) => w.record)
        await this.mergeLocal(records)
        const { holders, members } = await this.push(records)
        const needed = Math.floor(members / 2) + 1
        if (holders < needed) {
          throw new KvError(
            'KV_ERR_QUORUM_UNAVAILABLE',
            `the auth change reached ${holders} of ${members} members, fewer than a majority (${needed}); it stays where it reached and spreads as members come back`,
            { required: needed, acks: holders },
          )
        }
      },
    }
  }
}
