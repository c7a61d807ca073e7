/**
 * Leadership as the node sees it. Handing it over (an operator's request): which member to hand
 * it to, and the wait until it has taken over; the core does the handover itself (it stops
 * taking writes, lets the target catch up, then tells it to campaign at once). And the watch
 * that notices elections won and leadership lost.
 */
import type { Logger } from 'pino'
import type { NodeId, RoleName } from '@kvstore/core'
import { KvError } from '@kvstore/protocol'
import type { MemberConfig } from '../config.js'

/**
 * The member to hand leadership to: `to`, or (when null) the connected follower with the
 * highest match. KV_ERR_INVALID_ARGUMENT for a non-member or this node itself;
 * KV_ERR_NOT_READY when no follower is connected to pick.
 */
export function transferTarget(
  members: readonly MemberConfig[],
  self: NodeId,
  to: NodeId | null,
  isConnected: (id: NodeId) => boolean,
  matchOf: (id: NodeId) => number,
): MemberConfig {
  let target = to
  if (target === null) {
    const best = members
      .filter((m) => m.id !== self && isConnected(m.id))
      .sort((a, b) => matchOf(b.id) - matchOf(a.id))[0]
    if (best === undefined) {
      throw new KvError('KV_ERR_NOT_READY', 'no follower is connected to hand leadership to')
    }
    target = best.id
  }
  const member = members.find((m) => m.id === target)
  if (member === undefined) {
    throw new KvError(
      'KV_ERR_INVALID_ARGUMENT',
      `${JSON.stringify(target)} is not a member; members are ${members.map((m) => m.id).join(', ')}`,
    )
  }
  if (member.id === self) {
    throw new KvError('KV_ERR_INVALID_ARGUMENT', `${member.id} already leads`)
  }
  return member
}

/** What the wait for a handover reads. */
export interface HandoverView {
  readonly isLeader: boolean
  readonly leaderId: NodeId | null
  readonly epoch: number
  readonly transferTarget: NodeId | null
  /** This node's commit LSN: as a follower, what the leader last told it was committed. */
  readonly commitLsn: number
  /** The epoch of the entry at `lsn` in this node's log; null if compacted or past its end. */
  epochAt(lsn: number): number | null
}

/**
 * Polls until `to` (or any other member) leads at an epoch above `epoch` and has committed its
 * first entry, and resolves with the new leader. A new leader takes no write until its first
 * entry commits (KV_ERR_NOT_READY), so a caller sent there at once (a leader removing itself
 * names its successor) would only be refused: this node, now its follower, sees that entry
 * committed when its commit LSN reaches the new epoch. It waits for that up to `readyMs` after
 * the new leader appears, then names it anyway (the handover did happen).
 * KV_ERR_NOT_READY once the core gave the handover up (this node leads on) or after
 * `timeoutMs` with no new leader; KV_ERR_SHUTTING_DOWN once the node stops.
 */
export async function awaitHandover(options: {
  view: HandoverView
  self: NodeId
  to: NodeId
  epoch: number
  pollMs: number
  timeoutMs: number
  readyMs: number
  now: () => number
  stopped: () => boolean
}): Promise<NodeId> {
  const { view, self, to, epoch } = options
  const deadline = options.now() + options.timeoutMs
  let readyDeadline: number | null = null
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, options.pollMs))
    if (options.stopped()) throw new KvError('KV_ERR_SHUTTING_DOWN', 'the node is stopping')
    const leader = view.leaderId
    if (view.epoch > epoch && leader !== null && leader !== self) {
      if (view.epochAt(view.commitLsn) === view.epoch) return leader
      readyDeadline ??= options.now() + options.readyMs
      if (options.now() > readyDeadline) return leader
      continue
    }
    if (view.isLeader && view.transferTarget === null && view.epoch === epoch) {
      throw new KvError(
        'KV_ERR_NOT_READY',
        `${to} did not take over within an election timeout; ${self} leads on`,
        { leaderId: self },
      )
    }
    if (options.now() > deadline) {
      throw new KvError(
        'KV_ERR_NOT_READY',
        `the handover to ${to} did not finish in ${options.timeoutMs} ms; GET /v1/cluster shows who leads`,
      )
    }
  }
}

/** What the role watch reads from the core. */
export interface RoleView {
  readonly roleName: RoleName
  readonly epoch: number
  readonly leaderId: NodeId | null
  /** The log end this node held when it last won an election. */
  readonly wonWithLsn: number
}

/**
 * Notices elections won and leadership lost, from the role and epoch the core shows after each
 * Ready, and logs them. A node that led and no longer does was deposed: a member is at a higher
 * epoch, or it lost contact with a majority (check-quorum).
 */
export class RoleWatch {
  /** The role and epoch last seen. */
  private last: { role: RoleName; epoch: number }
  /** The epoch this node leads at, until it steps down. */
  private ledAtEpoch: number | null = null

  constructor(
    epoch: number,
    private readonly log: Logger,
  ) {
    this.last = { role: 'follower', epoch }
  }

  /** 'won' when this node just became leader, 'deposed' when it just stopped leading. */
  notice(core: RoleView): 'won' | 'deposed' | null {
    const role = core.roleName
    const epoch = core.epoch
    const last = this.last
    if (role === last.role && epoch === last.epoch) return null
    this.last = { role, epoch }
    if (role === 'leader' && this.ledAtEpoch !== epoch) {
      this.ledAtEpoch = epoch
      this.log.warn({ epoch, lastLsn: core.wonWithLsn }, 'elected leader')
      return 'won'
    }
    if (role !== 'leader' && this.ledAtEpoch !== null) {
      const ledAt = this.ledAtEpoch
      this.ledAtEpoch = null
      this.log.error(
        { epoch: ledAt, newEpoch: epoch, leader: core.leaderId },
        epoch > ledAt
          ? 'this node no longer leads: a member is at a higher epoch'
          : 'this node no longer leads: it has not heard from a majority within an election timeout',
      )
      return 'deposed'
    }
    if (role === 'candidate' && last.role !== 'candidate') {
      this.log.info({ epoch }, 'no leader heard; campaigning')
    } else if (role === 'follower' && core.leaderId !== null && epoch > last.epoch) {
      this.log.info({ epoch, leader: core.leaderId }, 'following a new leader')
    }
    return null
  }
}
