/**
 * Leader side of a snapshot transfer (etcd's rafthttp `snapshotSender`): streams a consistent
 * copy of the applied state, and the request ids the leader deduplicates with, to a follower
 * whose next entry was compacted away. Chunks go out on the peer stream at most
 * `chunkBytesMax` of records at a time, each sent once the stream has drained the last one;
 * the last chunk carries the state digest, which the follower checks before it serves the copy.
 */
import type { Logger } from 'pino'
import { decodeStoredRecord, type Frame } from '@kvstore/protocol'
import { DigestHasher, type StateSnapshot } from '@kvstore/storage'

export interface SnapshotSenderOptions {
  /**
   * Opens a consistent view of the state cut at the commit LSN (the store's
   * `openSnapshot({ committed: true })`): the follower takes the whole snapshot as committed,
   * and the leader applies entries as it appends them, so its state at the log end may hold
   * writes a new leader would truncate (the simulator's `--snapshot-at logEnd` shows the
   * failure). The entries above the cut follow as usual once the snapshot is in.
   */
  openSnapshot: () => Promise<StateSnapshot>
  /** This node's id, the chunks' sender. */
  self: string
  /** The epoch chunks are sent at (the leader's, read at each chunk). */
  epoch: () => number
  /** Bytes of records and request ids after which a chunk is sent. */
  chunkBytesMax: number
  /** Sends a frame to a peer; false when its stream is gone. */
  send: (to: string, frame: Frame) => boolean
  /** Resolves once the stream to the peer has taken what was written. */
  drained: (to: string) => Promise<void>
  /**
   * The transfer to `to` failed, or was asked for again while it ran: the core is to be told
   * (`snapshotFailed`), so that it probes and asks again.
   */
  onFailed: (to: string) => void
  /** The snapshot at `lsn` was streamed to `to` whole: the core probes from just past it. */
  onSent?: (to: string, lsn: number) => void
  logger: Logger
}

export class SnapshotSender {
  /** Snapshots sent whole. */
  sent = 0
  private readonly sending = new Set<string>()
  /** Followers the core asked a snapshot for again while one was still being sent to them. */
  private readonly again = new Set<string>()

  constructor(private readonly options: SnapshotSenderOptions) {}

  /** Whether a transfer to `to` is running. */
  isSending(to: string): boolean {
    return this.sending.has(to)
  }

  /**
   * Streams a snapshot to `to`. Never throws: a failure is logged and reported with `onFailed`.
   * Asked again while a transfer to `to` still winds down (the follower reconnected, or refused
   * the last one), it starts afresh once that one ends: the core now waits for a snapshot that
   * nothing else would send.
   */
  async send(to: string): Promise<void> {
    if (this.sending.has(to)) {
      this.again.add(to)
      return
    }
    this.sending.add(to)
    const { options } = this
    let snapshot: StateSnapshot | null = null
    try {
      snapshot = await options.openSnapshot()
      const { appliedLsn: snapshotLsn, lastEpoch: snapshotEpoch } = snapshot
      const hash = new DigestHasher()
      let sequence = 0
      let records: { key: Uint8Array; record: Uint8Array }[] = []
      let requests: { id: string; record: Uint8Array }[] = []
      let bytes = 0
      const flush = async (last: boolean) => {
        const sent = options.send(to, {
          from: options.self,
          epoch: options.epoch(),
          body: {
            kind: 'snapshotChunk',
            snapshotLsn,
            snapshotEpoch,
            sequence: sequence++,
            records,
            requests,
            last,
            digest: last ? hash.hex() : '',
          },
        })
        if (!sent) throw new Error(`the stream to ${to} is gone`)
        records = []
        requests = []
        bytes = 0
        await options.drained(to)
      }
      options.logger.info({ peer: to, snapshotLsn }, 'sending a snapshot')
      for await (const chunk of snapshot.rawChunks(1000)) {
        for (const { key, record } of chunk) {
          hash.add(key, decodeStoredRecord(record))
          records.push({ key, record })
          bytes += key.length + record.length
          if (bytes >= options.chunkBytesMax) await flush(false)
        }
      }
      // The request ids go along, so that the follower deduplicates retries as the leader does.
      for await (const chunk of snapshot.requestChunks(1000)) {
        for (const request of chunk) {
          requests.push(request)
          bytes += request.id.length + request.record.length
          if (bytes >= options.chunkBytesMax) await flush(false)
        }
      }
      await flush(true)
      this.sent++
      options.onSent?.(to, snapshotLsn)
    } catch (err) {
      options.logger.warn({ peer: to, err: (err as Error).message }, 'snapshot to follower failed')
      options.onFailed(to)
    } finally {
      await snapshot?.close()
      this.sending.delete(to)
      if (this.again.delete(to)) options.onFailed(to)
    }
  }
}
