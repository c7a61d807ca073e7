/**
 * The membership nemesis in leaderless mode (`member-churn` on a leaderless run): online ring
 * changes while the workload runs, made through the admin API as an operator makes them, sent
 * to any running member of the ring (there is no leader). Each round takes a fresh id and is
 * one of (drawn with the run's seed):
 *
 * - join-leave: start the new node (empty data directory, --join), add it
 *   (POST /admin/v1/members), wait until it owns its ranges, then remove an old member
 *   (DELETE /admin/v1/members/:id: it pushes its ranges out first), wait until it is gone,
 *   and stop it. The ring never has fewer members than the run started with, nor fewer than N:
 *   the new member is in before the old one goes (and no one goes if the ring is short).
 * - replace-killed: kill -9 an old member, wait until the others see it down, start the new
 *   node, and POST /admin/v1/members/:old/replace: the new member takes the dead one's points
 *   and streams its data from the other replicas; wait until it owns them, then stop the old.
 *
 * Every wait is bounded. Answers that mean "not now" (another change in flight, a member just
 * restarted and not yet seen up, not ready) are retried within the bound. A call whose answer
 * was lost is not simply repeated: the ring is read first, and a change it already shows
 * counts as made (a second add would be refused as "already a member"). A round that cannot
 * finish says so in its description and leaves the cluster as an operator would: a new node
 * the ring never took is stopped, a member killed for a replacement that never started is
 * started again. A change agreed but not finished in time is left to finish on its own; the
 * next round (and the end of the run) waits for it.
 */
import type { ChaosCluster, ChaosNode, MemberSpec } from './cluster.js'

/** GET /admin/v1/members in leaderless mode, as much of it as the nemesis reads. */
export interface RingView {
  /** The member that answered. */
  self: string
  /** The ring version. */
  version: number
  members: { id: string; clientUrl: string; role: 'owner' | 'joining' | 'leaving' | string }[]
  removed: string[]
  changeInProgress: boolean
}

export class RingCallError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message)
  }
}

/** Answers that mean "try again shortly". */
const retryable = new Set([
  'KV_ERR_MEMBERSHIP_CHANGE_IN_PROGRESS',
  // A leave while the leaving member is not seen up yet; a replace while another member is
  // down (one just restarted after a kill, not yet seen up).
  'KV_ERR_WOULD_LOSE_QUORUM',
  'KV_ERR_NOT_READY',
  'KV_ERR_STALE_RING',
  'KV_ERR_QUORUM_UNAVAILABLE',
  'KV_ERR_OVERLOADED',
  'KV_ERR_SHUTTING_DOWN',
  'KV_ERR_TIMEOUT',
])

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** The running nodes to send an admin call to, leaving out `exclude`, in a rotating order. */
function targets(cluster: ChaosCluster, exclude: readonly string[], turn: number): ChaosNode[] {
  const nodes = cluster.nodes.filter((n) => cluster.isRunning(n.id) && !exclude.includes(n.id))
  if (nodes.length === 0) return []
  const k = turn % nodes.length
  return [...nodes.slice(k), ...nodes.slice(0, k)]
}

/** GET /admin/v1/members on one node, or null when it does not answer 200 in time. */
async function viewAt(node: ChaosNode, timeoutMs = 3000): Promise<RingView | null> {
  try {
    const res = await fetch(`${node.url}/admin/v1/members`, {
      signal: AbortSignal.timeout(timeoutMs),
    })
    if (!res.ok) {
      await res.arrayBuffer()
      return null
    }
    return (await res.json()) as RingView
  } catch {
    return null
  }
}

/**
 * The ring as the running members see it: the view with the highest version among the
 * running nodes that answer (a member just restarted may not have learned the newest yet),
 * leaving out `exclude` (a new node not yet added knows no ring worth asking about).
 */
export async function ringView(
  cluster: ChaosCluster,
  exclude: readonly string[] = [],
): Promise<RingView | null> {
  const views = await Promise.all(targets(cluster, exclude, 0).map((n) => viewAt(n)))
  let best: RingView | null = null
  for (const v of views) if (v !== null && (best === null || v.version > best.version)) best = v
  return best
}

/**
 * Waits until the ring shows no change in flight and `settled(view)` holds; resolves with the
 * view, or rejects after `timeoutMs` with what the ring last showed.
 */
export async function waitRing(
  cluster: ChaosCluster,
  settled: (view: RingView) => boolean,
  timeoutMs: number,
  what: string,
  exclude: readonly string[] = [],
): Promise<RingView> {
  const deadline = Date.now() + timeoutMs
  let last: RingView | null = null
  for (;;) {
    last = (await ringView(cluster, exclude)) ?? last
    if (last !== null && !last.changeInProgress && settled(last)) return last
    if (Date.now() > deadline) {
      const shown =
        last === null
          ? 'no member answered'
          : `ring v${last.version} on ${last.self}: ${last.members.map((m) => `${m.id} ${m.role}`).join(', ')}${last.changeInProgress ? ', a change in flight' : ''}`
      throw new RingCallError(`${what} not within ${timeoutMs} ms (${shown})`, 'timeout')
    }
    await sleep(250)
  }
}

/**
 * One ring change through any running member, retried while the answer says "not now", until
 * `timeoutMs`. Before each retry the ring is read: when `applied(view)` says the change is
 * there already (an earlier attempt went through but its answer was lost), it counts as made.
 */
export async function ringCall(
  cluster: ChaosCluster,
  method: 'POST' | 'DELETE',
  path: string,
  body: unknown,
  applied: (view: RingView) => boolean,
  options: { timeoutMs?: number; exclude?: readonly string[] } = {},
): Promise<void> {
  const exclude = options.exclude ?? []
  const deadline = Date.now() + (options.timeoutMs ?? 45_000)
  let last = 'no running member to ask'
  for (let turn = 0; ; turn++) {
    if (turn > 0) {
      const view = await ringView(cluster, exclude)
      if (view !== null && applied(view)) return
    }
    const node = targets(cluster, exclude, turn)[0]
    if (node !== undefined) {
      try {
        const res = await fetch(`${node.url}${path}`, {
          method,
          ...(body !== undefined
            ? { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }
            : {}),
          signal: AbortSignal.timeout(Math.max(1000, Math.min(20_000, deadline - Date.now()))),
        })
        const answer = (await res.json()) as { error?: { code: string; message: string } }
        if (res.ok) return
        const code = answer.error?.code ?? `HTTP ${res.status}`
        last = `${node.id}: ${code}: ${answer.error?.message ?? ''}`
        if (!retryable.has(code)) {
          // Maybe refused because an attempt whose answer was lost made the change already.
          const view = await ringView(cluster, exclude)
          if (view !== null && applied(view)) return
          throw new RingCallError(`${method} ${path}: ${last}`, code)
        }
      } catch (err) {
        if (err instanceof RingCallError) throw err
        last = `${node.id}: ${(err as Error).message}`
      }
    }
    if (Date.now() > deadline) {
      throw new RingCallError(`${method} ${path} did not succeed in time; last: ${last}`, 'timeout')
    }
    await sleep(250)
  }
}

/** Is `id` in the ring as an owner (its join or replacement finished)? */
const owns = (view: RingView, id: string) =>
  view.members.some((m) => m.id === id && m.role === 'owner')
const inRing = (view: RingView, id: string) => view.members.some((m) => m.id === id)
const gone = (view: RingView, id: string) => !inRing(view, id) && view.removed.includes(id)

export interface RingChurnOptions {
  cluster: ChaosCluster
  random: () => number
  /** The new member's id: never used in this run before. */
  newId: string
  /** Members never removed (nor killed to be replaced). */
  protect: readonly string[]
  /** The ring never has fewer members than this (the run's starting count, at least N). */
  membersMin: number
  /** Bound on each wait of the round (a change to be agreed, a handoff to finish). */
  stepTimeoutMs?: number
  /** Progress lines. */
  log: (line: string) => void
}

const variants = ['join-leave', 'replace-killed'] as const

/** Runs one ring change; resolves with what it did (never rejects). */
export async function ringChurn(options: RingChurnOptions): Promise<string> {
  const { cluster, random, newId, log } = options
  const stepMs = options.stepTimeoutMs ?? 60_000
  const variant = variants[Math.floor(random() * variants.length)] as (typeof variants)[number]
  // Drawn now, so that the schedule depends on the seed only, not on how the change goes.
  const draw = random()
  const steps: string[] = []
  let joined = false
  let killed: string | null = null
  try {
    // A change left from an earlier round (or a kill's restart) must be over first.
    const before = await waitRing(cluster, () => true, stepMs, 'the ring to settle')
    const candidates = before.members
      .map((m) => m.id)
      .filter(
        (id) =>
          !options.protect.includes(id) &&
          cluster.nodes.some((n) => n.id === id) &&
          cluster.isRunning(id),
      )
      .sort()
    const target = candidates[Math.floor(draw * candidates.length)]
    if (target === undefined) return `no member may be removed now (ring v${before.version})`
    if (variant === 'replace-killed') {
      await cluster.kill(target)
      killed = target
      steps.push(`kill -9 ${target}`)
      log(`kill -9 ${target}; waiting for the others to see it down`)
      await seenDown(cluster, target, stepMs)
      const spec: MemberSpec = await cluster.join(newId)
      joined = true
      log(`${newId} started with --join; POST /admin/v1/members/${target}/replace`)
      await ringCall(
        cluster,
        'POST',
        `/admin/v1/members/${target}/replace`,
        spec,
        (v) => inRing(v, newId),
        { timeoutMs: stepMs, exclude: [target, newId] },
      )
      killed = null // agreed: the new member takes its place, the old stays dead
      steps.push(`replace ${target} by ${newId}`)
      log(`replacement agreed; waiting for ${newId} to own ${target}'s ranges`)
      const after = await waitRing(
        cluster,
        (v) => owns(v, newId) && gone(v, target),
        stepMs,
        `${newId} to own ${target}'s ranges`,
        [newId],
      )
      steps.push(`${newId} owns them (ring v${after.version})`)
      await cluster.retire(target)
      steps.push(`stop ${target}`)
      return steps.join(', ')
    }
    const spec: MemberSpec = await cluster.join(newId)
    joined = true
    log(`${newId} started with --join; POST /admin/v1/members`)
    await ringCall(cluster, 'POST', '/admin/v1/members', spec, (v) => inRing(v, newId), {
      timeoutMs: stepMs,
      exclude: [newId],
    })
    steps.push(`add ${newId}`)
    log(`${newId} added; waiting for it to own its ranges`)
    const added = await waitRing(
      cluster,
      (v) => owns(v, newId),
      stepMs,
      `${newId} to own its ranges`,
    )
    steps.push(`${newId} owns its ranges (ring v${added.version})`)
    if (added.members.length - 1 < options.membersMin) {
      steps.push(`nobody leaves (the ring has ${added.members.length} members)`)
      return steps.join(', ')
    }
    log(`removing ${target}`)
    await ringCall(
      cluster,
      'DELETE',
      `/admin/v1/members/${target}`,
      undefined,
      (v) => !inRing(v, target) || v.members.some((m) => m.id === target && m.role === 'leaving'),
      {
        timeoutMs: stepMs,
      },
    )
    steps.push(`remove ${target}`)
    log(`${target} leaving; waiting for its ranges to move`)
    const after = await waitRing(cluster, (v) => gone(v, target), stepMs, `${target} to leave`)
    steps.push(`${target} gone (ring v${after.version})`)
    await cluster.retire(target)
    steps.push(`stop ${target}`)
    return steps.join(', ')
  } catch (err) {
    steps.push(`INCOMPLETE: ${(err as Error).message}`)
    log(`incomplete: ${(err as Error).message}`)
    steps.push(...(await tidy(cluster, newId, joined, killed)))
    return steps.join(', ')
  }
}

/** Waits until every running member that answers sees `id` down. */
async function seenDown(cluster: ChaosCluster, id: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const running = cluster.nodes.filter((n) => n.id !== id && cluster.isRunning(n.id))
    const views = await Promise.all(
      running.map(async (n) => {
        try {
          const res = await fetch(`${n.url}/v1/cluster`, { signal: AbortSignal.timeout(2000) })
          if (!res.ok) {
            await res.arrayBuffer()
            return null
          }
          return (await res.json()) as { members?: { id: string; up?: boolean }[] }
        } catch {
          return null
        }
      }),
    )
    const answered = views.filter((v) => v !== null)
    if (
      answered.length > 0 &&
      answered.every((v) => v.members?.find((m) => m.id === id)?.up !== true)
    )
      return
    if (Date.now() > deadline) throw new RingCallError(`${id} not seen down in time`, 'timeout')
    await sleep(200)
  }
}

/** After a round that did not finish: no stray node, no member left killed for nothing. */
async function tidy(
  cluster: ChaosCluster,
  newId: string,
  joined: boolean,
  killed: string | null,
): Promise<string[]> {
  const done: string[] = []
  try {
    const view = await ringView(cluster, [newId])
    const present = (id: string) => cluster.nodes.some((n) => n.id === id)
    if (joined && present(newId) && view !== null && !inRing(view, newId)) {
      await cluster.retire(newId)
      done.push(`stopped ${newId} (never added)`)
    }
    if (killed !== null && present(killed) && (view === null || inRing(view, killed))) {
      await cluster.start(killed)
      done.push(`restarted ${killed} (not replaced)`)
    }
  } catch (err) {
    done.push(`tidying failed: ${(err as Error).message}`)
  }
  return done
}

/**
 * At the end of a run: waits (bounded) for any change in flight to finish, then stops every
 * node the ring does not name (a removed member, a new node never added), as an operator
 * would. Resolves with the final ring, or rejects naming what did not settle.
 */
export async function settleRing(cluster: ChaosCluster, timeoutMs: number): Promise<RingView> {
  const view = await waitRing(cluster, () => true, timeoutMs, 'the ring to settle')
  for (const node of [...cluster.nodes]) {
    if (!inRing(view, node.id)) await cluster.retire(node.id)
  }
  return view
}
