/**
 * Online ring changes in leaderless mode, as the membership routes ask for them
 * (membership/service.ts): join (POST /admin/v1/members), leave (DELETE /admin/v1/members/:id)
 * and replace (POST /admin/v1/members/:id/replace), in the spirit of Cassandra's bootstrap,
 * decommission and replace_address and Riak's join, leave and replace.
 *
 * The member that takes the call plans the change on its ring (the core's planJoin, planLeave,
 * planReplace: one change at a time, KV_ERR_MEMBERSHIP_CHANGE_IN_PROGRESS otherwise;
 * KV_ERR_NOT_A_MEMBER for an id the ring does not name; KV_ERR_WOULD_LOSE_QUORUM for a change
 * that would leave fewer owners than N, or take a dead member's data with no live replica),
 * has a majority of the ring's members agree on it (ring-agreement.ts), and answers once it is
 * committed. The change then runs on its own: the member it names streams the ranges
 * (handoff.ts) and moves the ring on; GET /admin/v1/members and GET /v1/cluster show how far.
 * Removing the member a join or replace adds, while it runs, aborts it.
 *
 * The new member of a join or replace must be started with --join (its own id, certificate
 * from the cluster's CA and data directory, --members naming some members and itself); it
 * learns the ring from them and owns nothing until the ring says so.
 */
import { planJoin, planLeave, planReplace, type RingPlan, type RingState } from '@kvstore/core'
import {
  KvError,
  type AddMemberRequest,
  type Membership,
  type MembershipChangeResponse,
} from '@kvstore/protocol'
import type { MembershipService } from '../membership/service.js'
import type { LeaderlessEngine } from './engine.js'

/** The ring a plan makes, or its refusal as the coded error the API answers. */
function ringOf(plan: RingPlan): RingState {
  if ('refusal' in plan) throw new KvError(plan.refusal.code, plan.refusal.message)
  return plan.ring
}

export class LeaderlessMembership implements MembershipService {
  constructor(private readonly engine: LeaderlessEngine) {}

  view(): Membership {
    const engine = this.engine
    const ring = engine.topology.ring
    const now = Date.now()
    return {
      mode: 'leaderless',
      self: engine.self,
      version: ring?.version ?? 0,
      members: (ring?.members ?? []).map((m) => {
        const h = engine.memberHealth(m.id)
        const where = engine.members.find((a) => a.id === m.id) ?? m
        return {
          id: m.id,
          clientUrl: where.clientUrl,
          peerUrl: where.peerUrl,
          role: m.state,
          lastContactMs:
            m.id === engine.self ? 0 : h && h.lastContactMs > 0 ? now - h.lastContactMs : null,
        }
      }),
      removed: [...(ring?.removed ?? [])],
      changeInProgress: (ring?.change ?? null) !== null,
      handoffs: engine.handoffs(),
    }
  }

  private async change(
    change: MembershipChangeResponse['change'],
    member: string,
    build: (ring: RingState) => RingState,
  ): Promise<MembershipChangeResponse> {
    // Only a member of the ring proposes changes to it (a joining member not yet added, or
    // a removed one, answers with its reason).
    void this.engine.topology.placement
    await this.engine.ringSync.propose(build)
    return { change, member, membership: this.view() }
  }

  add(member: AddMemberRequest): Promise<MembershipChangeResponse> {
    return this.change('add', member.id, (ring) => ringOf(planJoin(ring, member, Date.now())))
  }

  promote(id: string): Promise<MembershipChangeResponse> {
    return Promise.reject(
      new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `leaderless mode has no learners to promote (${id}): a member added with POST /admin/v1/members joins the ring and owns its ranges once it has streamed them`,
      ),
    )
  }

  remove(id: string): Promise<MembershipChangeResponse> {
    const engine = this.engine
    return this.change('remove', id, (ring) =>
      ringOf(planLeave(ring, id, engine.n, (m) => m === engine.self || engine.isUp(m), Date.now())),
    )
  }

  replace(id: string, next: AddMemberRequest): Promise<MembershipChangeResponse> {
    const engine = this.engine
    return this.change('replace', next.id, (ring) =>
      ringOf(planReplace(ring, id, next, (m) => m === engine.self || engine.isUp(m), Date.now())),
    )
  }
}
