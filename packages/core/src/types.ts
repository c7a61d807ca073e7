import type { CoreMembership } from './membership.js'

/** Node ids are the names members have in the cluster configuration. */
export type NodeId = string

/** A log entry as the core sees it: its position and epoch, and opaque encoded bytes. */
export interface CoreEntry {
  lsn: number
  epoch: number
  /** The encoded LogEntry, shipped to followers byte for byte. */
  data: Uint8Array
  /**
   * Set on a configuration change (a MEMBERSHIP entry): the configuration it makes, which
   * takes effect as soon as the entry is in this node's log. The node decodes it; the core
   * never reads `data`.
   */
  membership?: CoreMembership
}

/** Leader to follower: entries to append after (prevLsn, prevEpoch). Empty entries probe. */
export interface AppendMessage {
  type: 'append'
  from: NodeId
  to: NodeId
  epoch: number
  prevLsn: number
  prevEpoch: number
  entries: CoreEntry[]
  commitLsn: number
  leaderLastLsn: number
}

/** Follower to leader: how far the follower's durable log matches, or where to retry. */
export interface AppendAckMessage {
  type: 'appendAck'
  from: NodeId
  to: NodeId
  epoch: number
  matchLsn: number
  reject: boolean
  hintLsn: number
}

/** Leader to follower: still alive; the commit LSN and the leader's last LSN. */
export interface HeartbeatMessage {
  type: 'heartbeat'
  from: NodeId
  to: NodeId
  epoch: number
  commitLsn: number
  leaderLastLsn: number
}

export interface HeartbeatAckMessage {
  type: 'heartbeatAck'
  from: NodeId
  to: NodeId
  epoch: number
  matchLsn: number
}

/**
 * Candidate to voter: a vote request for `epoch`, with the candidate's last LSN and epoch so
 * that the voter can refuse a candidate whose log is behind its own. A pre-vote asks whether
 * the voter *would* vote at `epoch` (the candidate's epoch plus one) without anyone changing
 * state, so a node that cannot win never raises the epoch. `transfer` is set when the leader
 * handed over leadership: voters then vote even though they heard from a leader recently.
 */
export interface VoteMessage {
  type: 'vote'
  from: NodeId
  to: NodeId
  epoch: number
  lastLsn: number
  lastEpoch: number
  preVote: boolean
  transfer: boolean
}

/** Voter to candidate. A refusal carries the voter's epoch; a grant the epoch asked for. */
export interface VoteAckMessage {
  type: 'voteAck'
  from: NodeId
  to: NodeId
  epoch: number
  granted: boolean
  preVote: boolean
}

/** Leader to the member it hands leadership to: start an election now. */
export interface TimeoutNowMessage {
  type: 'timeoutNow'
  from: NodeId
  to: NodeId
  epoch: number
}

export type Message =
  | AppendMessage
  | AppendAckMessage
  | HeartbeatMessage
  | HeartbeatAckMessage
  | VoteMessage
  | VoteAckMessage
  | TimeoutNowMessage

/** State that must be durable before any message that depends on it is sent. */
export interface HardState {
  epoch: number
  vote: NodeId | ''
  commitLsn: number
}

/** The leader needs entries it no longer caches, to ship to `to`. */
export interface LoadRequest {
  to: NodeId
  fromLsn: number
}

/**
 * What the node must do after feeding the core events: persist, then send. Messages in
 * `sendNow` depend on nothing unpersisted; `sendAfterPersist` go out only once the hard
 * state, truncation and entries of the same Ready are durable (persist before send).
 */
export interface Ready {
  hardState: HardState | null
  /** Remove local entries after this LSN before appending (never below the commit LSN). */
  truncateAfter: number | null
  /** Entries received from the leader, to append durably in order. */
  entries: CoreEntry[]
  sendNow: Message[]
  sendAfterPersist: Message[]
  loads: LoadRequest[]
  /** Followers whose next entry was compacted away: they need a state snapshot. */
  snapshots: NodeId[]
  /** The commit LSN after these events. */
  commitLsn: number
}
