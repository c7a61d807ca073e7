/**
 * One round of the membership nemesis (`member-churn`, single-leader mode): a brand-new node
 * takes an old member's place while the workload runs. The voters never drop below the number
 * the run started with: the new member is added and promoted before the old one is removed.
 * The round is one of (drawn with the run's seed):
 *
 * - swap a follower: start the new node (empty data directory, --join), add it as a learner,
 *   promote it once it has caught up (KV_ERR_LEARNER_BEHIND until then), remove a follower,
 *   stop it;
 * - swap the leader: the same, but the leader is removed: it hands leadership over first, and
 *   the removal is retried on the new leader (KV_ERR_NOT_LEADER's leaderUrl);
 * - replace a killed member: kill -9 a follower, start the new node, and let
 *   POST /admin/v1/members/:id/replace add, catch up, promote and remove in one call.
 *
 * A removed member is stopped once its removal has committed. A round that cannot finish in
 * time (a fault of the cluster's, not of the round's) says so in its description and leaves
 * the cluster as the operator would: a learner that was never promoted is removed again, a
 * node that was never added is stopped.
 */
import type { ChaosCluster, MemberSpec } from './cluster.js'
import { addLearner, membersView, promote, removeMember, replaceMember } from './membership.js'

export interface ChurnOptions {
  cluster: ChaosCluster
  random: () => number
  /** The new member's id: never used in this run before. */
  newId: string
  /** Members never removed (nor killed to be replaced). */
  protect: readonly string[]
  /** Progress lines. */
  log: (line: string) => void
}

const variants = ['swap-follower', 'swap-leader', 'replace-killed'] as const

/** Runs one change; resolves with what it did (never rejects). */
export async function churn(options: ChurnOptions): Promise<string> {
  const { cluster, random, newId, log } = options
  const variant = variants[Math.floor(random() * variants.length)] as (typeof variants)[number]
  // Drawn now, so that the schedule depends on the seed only, not on how the change goes.
  const draw = random()
  let joined = false
  let target: string | null = null
  const steps: string[] = []
  try {
    const view = await membersView(cluster)
    const leaderId = view.leaderId
    const voters = view.members.filter((m) => m.role === 'voter').map((m) => m.id)
    const followers = voters.filter((id) => id !== leaderId && !options.protect.includes(id))
    const removeLeader =
      variant === 'swap-leader' && leaderId !== null && !options.protect.includes(leaderId)
    target = removeLeader ? leaderId : (followers[Math.floor(draw * followers.length)] ?? null)
    if (target === null) return `no member may be removed now (voters ${voters.join(', ')})`
    const what = removeLeader ? `${target} (the leader)` : target
    if (variant === 'replace-killed') {
      await cluster.kill(target)
      steps.push(`kill -9 ${target}`)
      log(`kill -9 ${target}`)
      const spec: MemberSpec = await cluster.join(newId)
      joined = true
      log(`${newId} started with --join; POST /admin/v1/members/${target}/replace`)
      await replaceMember(cluster, target, spec)
      steps.push(`replace ${target} by ${newId}`)
    } else {
      const spec: MemberSpec = await cluster.join(newId)
      joined = true
      log(`${newId} started with --join`)
      await addLearner(cluster, spec)
      steps.push(`add ${newId} (learner)`)
      log(`${newId} added as a learner`)
      await promote(cluster, newId)
      steps.push(`promote ${newId}`)
      log(`${newId} promoted; removing ${what}`)
      await removeMember(cluster, target)
      steps.push(`remove ${what}`)
    }
    await cluster.retire(target)
    steps.push(`stop ${target}`)
    return steps.join(', ')
  } catch (err) {
    steps.push(`INCOMPLETE: ${(err as Error).message}`)
    log(`incomplete: ${(err as Error).message}`)
    steps.push(...(await tidy(cluster, newId, joined, target)))
    return steps.join(', ')
  }
}

/** After a round that did not finish: leaves no learner or stray node behind. */
async function tidy(
  cluster: ChaosCluster,
  newId: string,
  joined: boolean,
  target: string | null,
): Promise<string[]> {
  const done: string[] = []
  const present = (id: string) => cluster.nodes.some((n) => n.id === id)
  try {
    const view = await membersView(cluster, 20_000)
    const added = view.members.find((m) => m.id === newId)
    if (joined && added?.role === 'learner') {
      await removeMember(cluster, newId)
      done.push(`removed learner ${newId}`)
    }
    if (joined && present(newId) && added?.role !== 'voter') {
      await cluster.retire(newId)
      done.push(`stopped ${newId}`)
    }
    if (target !== null && present(target) && view.removed.includes(target)) {
      await cluster.retire(target)
      done.push(`stopped ${target} (removed)`)
    }
  } catch (err) {
    done.push(`tidying failed: ${(err as Error).message}`)
  }
  return done
}

export interface SplitOptions {
  cluster: ChaosCluster
  /** Two ids never used in this run before. */
  newIds: [string, string]
  protect: readonly string[]
  /** How long the old voters stay cut off (ms). */
  holdMs: number
  log: (line: string) => void
}

/**
 * One round of `member-split` (single-leader, needs per-node networks): two new nodes join as
 * learners and catch up; then the leader and the two are cut off from the other voters, and
 * at once both learners are promoted, the second while the first is not committed. A correct
 * leader refuses the second (one change at a time), cannot commit the first (the old voters
 * are out of reach) and steps down, and the old voters elect a leader among themselves. A
 * leader that lets changes overlap makes {itself and the two new} a majority of five that
 * shares no member with the old voters' majority: two leaders at once, which the checkers
 * must catch. After `holdMs` the network heals, and the configuration is set straight: both
 * new members are promoted, and as many old members removed (and stopped), so the voters are
 * as many as before. Resolves with what happened (never rejects).
 */
export async function split(options: SplitOptions): Promise<string> {
  const { cluster, newIds, log } = options
  const steps: string[] = []
  let healed = true
  try {
    const view = await membersView(cluster)
    const leaderId = view.leaderId
    const leader = cluster.nodes.find((n) => n.id === leaderId)
    if (leaderId === null || leader === undefined) return 'no leader: nothing done'
    const voters = view.members.filter((m) => m.role === 'voter').map((m) => m.id)
    const specs = await Promise.all(newIds.map((id) => cluster.join(id)))
    log(`${newIds.join(' and ')} started with --join`)
    for (const spec of specs) await addLearner(cluster, spec)
    steps.push(`add ${newIds.join(', ')} (learners)`)
    await caughtUp(cluster, newIds, 30_000)
    log(`${newIds.join(' and ')} caught up; cutting ${leaderId} and them off from the others`)
    const others = cluster.nodes
      .map((n) => n.id)
      .filter((id) => ![leaderId, ...newIds].includes(id))
    healed = false
    await cluster.partition([[leaderId, ...newIds], others])
    steps.push(`isolate ${leaderId} (the leader), ${newIds.join(', ')} from ${others.join(', ')}`)
    log(`cut; promoting ${newIds.join(' and ')} on ${leaderId}`)
    // Both promotions straight to the leader, the second while the first is in flight.
    const promoteOnce = async (id: string) => {
      try {
        const res = await fetch(`${leader.url}/admin/v1/members/${id}/promote`, {
          method: 'POST',
          signal: AbortSignal.timeout(Math.round(options.holdMs)),
        })
        const body = (await res.json()) as { error?: { code: string } }
        return res.ok ? 'done' : (body.error?.code ?? `HTTP ${res.status}`)
      } catch (err) {
        return (err as Error).name === 'TimeoutError' ? 'no answer' : (err as Error).message
      }
    }
    const first = promoteOnce(newIds[0])
    await new Promise((r) => setTimeout(r, 50))
    const second = promoteOnce(newIds[1])
    const started = Date.now()
    const answers = await Promise.all([first, second])
    steps.push(`promote ${newIds[0]}: ${answers[0]}, promote ${newIds[1]}: ${answers[1]}`)
    log(steps[steps.length - 1] as string)
    await new Promise((r) => setTimeout(r, Math.max(0, options.holdMs - (Date.now() - started))))
    await cluster.heal()
    healed = true
    steps.push('healed')
    // Set the configuration straight: the new members become voters, as many old ones go.
    for (const id of newIds) await promote(cluster, id)
    steps.push(`promote ${newIds.join(', ')}`)
    const after = await membersView(cluster)
    const removable = voters
      .filter((id) => !options.protect.includes(id))
      // Followers first: the leader goes last, if at all.
      .sort((a, b) => Number(a === after.leaderId) - Number(b === after.leaderId))
      .slice(0, newIds.length)
    for (const id of removable) {
      await removeMember(cluster, id)
      await cluster.retire(id)
      steps.push(`remove ${id}${id === after.leaderId ? ' (the leader)' : ''}, stop ${id}`)
    }
    return steps.join(', ')
  } catch (err) {
    if (!healed) await cluster.heal().catch(() => {})
    steps.push(`INCOMPLETE: ${(err as Error).message}`)
    log(`incomplete: ${(err as Error).message}`)
    return steps.join(', ')
  }
}

/** Waits until every one of `ids` is a learner connected to the leader and close behind it. */
async function caughtUp(cluster: ChaosCluster, ids: readonly string[], timeoutMs: number) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const view = await membersView(cluster)
    const behind = ids.filter((id) => {
      const m = view.members.find((x) => x.id === id)
      return m?.connected !== true || (m.lagEntries ?? Infinity) > 100
    })
    if (behind.length === 0) return
    if (Date.now() > deadline) throw new Error(`${behind.join(', ')} did not catch up in time`)
    await new Promise((r) => setTimeout(r, 200))
  }
}
