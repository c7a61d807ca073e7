/**
 * Translation between the core's messages and the peer frames on the wire, both ways, with no
 * I/O and no state: what etcd's rafthttp does in its message encoders, apart from its streams.
 *
 * Outbound, a message becomes a frame; the figures the core does not know (the applied LSN,
 * the lag, the cluster view a heartbeat carries) come from a `FrameContext`. Inbound, a frame
 * becomes a message for the core, with what else it carried for the node (the members a
 * heartbeat describes, the applied LSN an acknowledgement reports). Entries of an append are
 * decoded and checked here, before the core sees any of them: a bad one is a KV_ERR_BAD_FRAME.
 */
import type { CoreEntry, Message } from '@kvstore/core'
import {
  KvError,
  decodeLogEntry,
  type Frame,
  type LogEntry,
  type MemberState,
} from '@kvstore/protocol'

/** What an outbound frame carries beyond the core's message. Read only when needed. */
export interface FrameContext {
  /** This node's id (the frame's sender). */
  self: string
  /** The local clock, for the leader's clock on appends and heartbeats. */
  nowMs(): number
  /** This replica's applied LSN, reported with every acknowledgement. */
  appliedLsn(): number
  /** This replica's lag behind the leader in milliseconds, reported with heartbeat answers. */
  lagMs(): number
  /** Every member as the leader sees it, sent with each heartbeat. */
  memberStates(): MemberState[]
  /** The last LSN in this member's log archive, reported with heartbeat answers; null: none. */
  archivedLsn(): number | null
}

/** The frame that carries `message` to `message.to`. */
export function frameOfMessage(message: Message, context: FrameContext): Frame {
  const from = context.self
  const epoch = message.epoch
  switch (message.type) {
    case 'append':
      return {
        from,
        epoch,
        body: {
          kind: 'append',
          prevLsn: message.prevLsn,
          prevEpoch: message.prevEpoch,
          entries: message.entries.map((e) => e.data),
          commitLsn: message.commitLsn,
          leaderLastLsn: message.leaderLastLsn,
          leaderClockMs: context.nowMs(),
        },
      }
    case 'heartbeat':
      return {
        from,
        epoch,
        body: {
          kind: 'heartbeat',
          commitLsn: message.commitLsn,
          leaderLastLsn: message.leaderLastLsn,
          leaderClockMs: context.nowMs(),
          members: context.memberStates(),
        },
      }
    case 'appendAck':
      return {
        from,
        epoch,
        body: {
          kind: 'appendAck',
          matchLsn: message.matchLsn,
          reject: message.reject,
          hintLsn: message.hintLsn,
          appliedLsn: context.appliedLsn(),
        },
      }
    case 'heartbeatAck': {
      const archivedLsn = context.archivedLsn()
      return {
        from,
        epoch,
        body: {
          kind: 'heartbeatAck',
          matchLsn: message.matchLsn,
          appliedLsn: context.appliedLsn(),
          lagMs: context.lagMs(),
          ...(archivedLsn !== null ? { archiving: true as const, archivedLsn } : {}),
        },
      }
    }
    case 'vote':
      return {
        from,
        epoch,
        body: {
          kind: 'vote',
          lastLsn: message.lastLsn,
          lastEpoch: message.lastEpoch,
          preVote: message.preVote,
          transfer: message.transfer,
        },
      }
    case 'voteAck':
      return {
        from,
        epoch,
        body: { kind: 'voteAck', granted: message.granted, preVote: message.preVote },
      }
    case 'timeoutNow':
      return { from, epoch, body: { kind: 'timeoutNow' } }
  }
}

/** What one inbound frame means for the node. */
export type Inbound =
  | {
      kind: 'message'
      /** For the core's `step`. */
      message: Message
      /** An append's entries, decoded (in the order of `message.entries`); empty otherwise. */
      decoded: LogEntry[]
      /** The leader's last LSN, for an append or a heartbeat; null otherwise. */
      leaderLastLsn: number | null
      /** The members as the leader sees them, for a heartbeat; null otherwise. */
      members: MemberState[] | null
      /** The sender's applied LSN, for an acknowledgement; null otherwise. */
      appliedLsn: number | null
      /**
       * A heartbeat answer's report of the sender's log archive (lsn null: it keeps none);
       * null for other messages, which say nothing of it.
       */
      archive: { lsn: number | null } | null
    }
  /** A snapshot chunk: it goes to the snapshot receiver, not the core. */
  | { kind: 'snapshotChunk' }
  /** Nothing for the node (a Hello or a refusal after the handshake). */
  | { kind: 'none' }

function inbound(
  message: Message,
  extra: Partial<Omit<Extract<Inbound, { kind: 'message' }>, 'kind' | 'message'>> = {},
): Inbound {
  return {
    kind: 'message',
    message,
    decoded: extra.decoded ?? [],
    leaderLastLsn: extra.leaderLastLsn ?? null,
    members: extra.members ?? null,
    appliedLsn: extra.appliedLsn ?? null,
    archive: extra.archive ?? null,
  }
}

/**
 * What a frame from `peer` to `self` means. Throws KV_ERR_BAD_FRAME for an append whose
 * entries do not fit it: LSNs must follow `prevLsn` one by one, and epochs never go down nor
 * pass the sender's. (Epoch ranges, the sender's identity and field limits were checked by the
 * decoder and the transport; the core checks the rest.)
 */
export function messageOfFrame(self: string, peer: string, frame: Frame): Inbound {
  const body = frame.body
  const base = { from: peer, to: self, epoch: frame.epoch }
  switch (body.kind) {
    case 'append': {
      let previousEpoch = body.prevEpoch
      const decoded: LogEntry[] = []
      const entries: CoreEntry[] = body.entries.map((data, i) => {
        const entry = decodeLogEntry(data)
        if (
          entry.lsn !== body.prevLsn + 1 + i ||
          entry.epoch > frame.epoch ||
          entry.epoch < previousEpoch
        ) {
          throw new KvError(
            'KV_ERR_BAD_FRAME',
            `entry ${entry.lsn} (epoch ${entry.epoch}) does not fit the append`,
          )
        }
        previousEpoch = entry.epoch
        decoded.push(entry)
        return { lsn: entry.lsn, epoch: entry.epoch, data }
      })
      return inbound(
        {
          type: 'append',
          ...base,
          prevLsn: body.prevLsn,
          prevEpoch: body.prevEpoch,
          entries,
          commitLsn: body.commitLsn,
          leaderLastLsn: body.leaderLastLsn,
        },
        { decoded, leaderLastLsn: body.leaderLastLsn },
      )
    }
    case 'heartbeat':
      return inbound(
        {
          type: 'heartbeat',
          ...base,
          commitLsn: body.commitLsn,
          leaderLastLsn: body.leaderLastLsn,
        },
        { leaderLastLsn: body.leaderLastLsn, members: body.members },
      )
    case 'appendAck':
      return inbound(
        {
          type: 'appendAck',
          ...base,
          matchLsn: body.matchLsn,
          reject: body.reject,
          hintLsn: body.hintLsn,
        },
        { appliedLsn: body.appliedLsn },
      )
    case 'heartbeatAck':
      return inbound(
        { type: 'heartbeatAck', ...base, matchLsn: body.matchLsn },
        {
          appliedLsn: body.appliedLsn,
          archive: { lsn: body.archiving === true ? (body.archivedLsn ?? 0) : null },
        },
      )
    case 'vote':
      return inbound({
        type: 'vote',
        ...base,
        lastLsn: body.lastLsn,
        lastEpoch: body.lastEpoch,
        preVote: body.preVote,
        transfer: body.transfer,
      })
    case 'voteAck':
      return inbound({ type: 'voteAck', ...base, granted: body.granted, preVote: body.preVote })
    case 'timeoutNow':
      return inbound({ type: 'timeoutNow', ...base })
    case 'snapshotChunk':
      return { kind: 'snapshotChunk' }
    case 'hello':
    case 'refusal':
      return { kind: 'none' }
  }
}
