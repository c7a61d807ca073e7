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
