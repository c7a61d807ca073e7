/**
 * Follower side of a snapshot transfer (etcd's rafthttp `snapshotHandler`): takes the chunks a
 * leader streams, one at a time and in arrival order, into the store's snapshot install, and
 * checks the digest of the result before the core is told the state was replaced.
 *
 * The first chunk is taken only from a member this node takes as its leader (the core decides,
 * as for an append), never from a later epoch than it was sent at, and never below what this
 * node has committed. Anything else, and any chunk out of order, is a bad frame: the stream is
 * closed and the partial state is abandoned (the core keeps refusing appends and asks for a new
 * snapshot; the store's marker discards the partial state on a restart).
 */
import type { Logger } from 'pino'
import type { MembershipAt, NodeId } from '@kvstore/core'
import { KvError, type Frame } from '@kvstore/protocol'
import type { Store } from '@kvstore/storage'
import type { PeerSecurity } from './peer-server.js'

type SnapshotChunk = Extract<Frame['body'], { kind: 'snapshotChunk' }>

/** What the receiver asks of and tells the core. */
export interface SnapshotCore {
  readonly leaderId: NodeId | null
  readonly epoch: number
  snapshotOffered(from: NodeId, epoch: number, snapshot?: { lsn: number; epoch: number }): boolean
  awaitSnapshot(): void
  snapshotInstalled(lsn: number, epoch: number, membership: MembershipAt | null): void
}

/** What the receiver does to the peer stream a snapshot arrives on. */
export interface SnapshotLink {
  /** Stops (false) or resumes reading frames from `peer`, while a chunk is written. */
  setReading(peer: string, reading: boolean): void
  /** Closes the streams with `peer`. */
  reset(peer: string, reason: string): void
}

export interface SnapshotReceiverOptions {
  store: Pick<
    Store,
    | 'commitLsn'
    | 'beginSnapshotInstall'
    | 'addSnapshotRecords'
    | 'addSnapshotRequests'
    | 'finishSnapshotInstall'
  >
  core: SnapshotCore
  link: SnapshotLink
  security: Pick<PeerSecurity, 'onRefused'>
  logger: Logger
  /** The core may have something to do (a new epoch to persist, an acknowledgement to send). */
  onChange: () => void
  /** A chunk was refused as a bad frame. */
  onBadFrame: () => void
  /** True once the node is stopping: chunks still queued are dropped. */
  stopped: () => boolean
  /** After an install: the configuration the new state holds (null when it holds none). */
  installedMembership: () => MembershipAt | null
}

export class SnapshotReceiver {
  /** Snapshots installed whole, their digest checked. */
  installed = 0
  /** The install in progress; `next` -1 once abandoned (only a new first chunk restarts it). */
  private installing: { from: string; lsn: number; epoch: number; next: number } | null = null
  /** Chunks being handled, in order. */
  private chunks: Promise<void> = Promise.resolve()

  constructor(private readonly options: SnapshotReceiverOptions) {}

  /** The peer an install in progress comes from, or null. */
  get installingFrom(): string | null {
    return this.installing?.from ?? null
  }

  /** Queues a snapshot chunk from `peer`: chunks are handled one at a time, in arrival order. */
  receive(peer: string, frame: Frame): void {
    this.chunks = this.chunks.then(() => this.onChunk(peer, frame))
  }

  /** Resolves once every chunk received so far has been handled. */
  idle(): Promise<void> {
    return this.chunks
  }

  /** The stream from `peer` broke: an install from it cannot complete. */
  peerGone(peer: string): void {
    if (this.installing?.from === peer) this.abandon('the stream broke')
  }

  /** Installs a chunk, reading no more frames from `peer` until it is written. */
  private async onChunk(peer: string, frame: Frame): Promise<void> {
    const body = frame.body
    const { store, core, link, logger } = this.options
    if (body.kind !== 'snapshotChunk' || this.options.stopped()) return
    link.setReading(peer, false)
    try {
      if (body.sequence === 0) await this.begin(peer, frame.epoch, body)
      const installing = this.installing
      if (
        installing === null ||
        installing.from !== peer ||
        body.sequence !== installing.next ||
        body.snapshotLsn !== installing.lsn
      ) {
        throw new KvError('KV_ERR_BAD_FRAME', `snapshot chunk ${body.sequence} is out of order`)
      }
      installing.next++
      await store.addSnapshotRecords(body.records)
      if (body.requests.length > 0) await store.addSnapshotRequests(body.requests)
      if (!body.last) return
      const digest = await store.finishSnapshotInstall()
      this.installing = null
      if (digest.digest !== body.digest) {
        // The copy does not match what the leader sent: clear it and ask again rather than
        // serve it.
        logger.error(
          { expected: body.digest, got: digest.digest },
          'snapshot digest mismatch; installing again',
        )
        await store.beginSnapshotInstall(body.snapshotLsn, body.snapshotEpoch)
        this.installing = { from: peer, lsn: body.snapshotLsn, epoch: body.snapshotEpoch, next: -1 }
        link.reset(peer, 'snapshot digest mismatch')
        return
      }
      this.installed++
      core.snapshotInstalled(
        body.snapshotLsn,
        body.snapshotEpoch,
        this.options.installedMembership(),
      )
      logger.info({ snapshotLsn: body.snapshotLsn, keys: digest.keys }, 'snapshot installed')
      this.options.onChange()
    } catch (err) {
      this.options.onBadFrame()
      logger.warn(
        { peer, err: (err as Error).message },
        'snapshot install failed; closing the stream',
      )
      this.abandon('install failed')
      link.reset(peer, 'snapshot failed')
    } finally {
      link.setReading(peer, true)
    }
  }

  /** A first chunk: checks that `peer` may replace the state now, then starts the install. */
  private async begin(peer: string, epoch: number, body: SnapshotChunk): Promise<void> {
    const { store, core, logger } = this.options
    const leaderBefore = core.leaderId
    const epochBefore = core.epoch
    if (
      body.snapshotEpoch > epoch ||
      body.snapshotLsn < store.commitLsn ||
      !core.snapshotOffered(peer, epoch, { lsn: body.snapshotLsn, epoch: body.snapshotEpoch })
    ) {
      this.options.security.onRefused('bad_frame', {
        peer,
        reason: `a snapshot at LSN ${body.snapshotLsn} (epoch ${body.snapshotEpoch}) from ${peer} at epoch ${epoch}, while this node follows ${String(leaderBefore)} at epoch ${epochBefore} and has committed ${store.commitLsn}`,
      })
      throw new KvError('KV_ERR_BAD_FRAME', `${peer} may not send a snapshot now`)
    }
    // The core may have moved to the sender's epoch: that is persisted like any other.
    this.options.onChange()
    if (this.installing !== null) this.abandon('a new snapshot started')
    // From here until the install completes, appends are refused: none may land in a
    // half-replaced state.
    core.awaitSnapshot()
    this.installing = { from: peer, lsn: body.snapshotLsn, epoch: body.snapshotEpoch, next: 0 }
    logger.info({ snapshotLsn: body.snapshotLsn, leader: peer }, 'installing a snapshot')
    await store.beginSnapshotInstall(body.snapshotLsn, body.snapshotEpoch)
  }

  /**
   * Gives up the install in progress. The state is partial: the core keeps refusing appends and
   * asks the leader for a new snapshot, which begins afresh; the store keeps its marker, so a
   * restart discards the partial state too.
   */
  private abandon(reason: string): void {
    if (this.installing === null) return
    this.options.logger.warn(
      { reason, snapshotLsn: this.installing.lsn },
      'abandoning a snapshot install',
    )
    this.installing = { ...this.installing, next: -1 }
  }
}
