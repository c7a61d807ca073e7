/**
 * What the membership routes (routes/members.ts) ask of a cluster mode. Single-leader mode
 * changes its configuration through the log (cluster/membership.ts); leaderless mode changes
 * its ring with range handoffs (leaderless/ring-changes.ts). Both answer the same calls, so
 * the routes, the SDK and the CLI are the same for both.
 */
import type { AddMemberRequest, Membership, MembershipChangeResponse } from '@kvstore/protocol'

export interface MembershipService {
  /** The configuration as this node knows it. */
  view(): Membership
  /** Adds a member: a learner in single-leader mode, a joining owner in leaderless mode. */
  add(member: AddMemberRequest): Promise<MembershipChangeResponse>
  /** Single-leader: makes a caught-up learner a voter. */
  promote(id: string): Promise<MembershipChangeResponse>
  /** Removes a member (a leaving member streams its ranges first in leaderless mode). */
  remove(id: string): Promise<MembershipChangeResponse>
  /** Replaces member `id`, dead or alive, by a new member with a new identity. */
  replace(id: string, next: AddMemberRequest): Promise<MembershipChangeResponse>
}
