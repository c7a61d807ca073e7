/**
 * The membership nemesis's changes (single-leader mode), through the admin API as an operator
 * makes them: every call goes to the leader (found from the nodes' views, then by following
 * KV_ERR_NOT_LEADER's `leaderUrl`), and is retried while the answer says "not now" (no leader
 * yet, another change in flight, a learner still behind). Every call it makes is idempotent
 * (add, promote, remove, replace), so a retry after a lost answer is safe. Each wait is bounded.
 */
import { currentLeader, type ChaosCluster, type MemberSpec } from './cluster.js'

/** GET /admin/v1/members, as much of it as the nemesis reads. */
export interface MembersView {
  members: {
    id: string
    role: 'voter' | 'learner'
    /** On the leader, for the others: is it connected, and how far behind. */
    connected?: boolean
    lagEntries?: number
  }[]
  removed: string[]
  leaderId: string | null
}

/** Answers that mean "try again shortly": the change may still go through. */
const retryable = new Set([
  'KV_ERR_NOT_LEADER',
  'KV_ERR_MEMBERSHIP_CHANGE_IN_PROGRESS',
  'KV_ERR_LEARNER_BEHIND',
  'KV_ERR_NOT_READY',
  'KV_ERR_OVERLOADED',
  'KV_ERR_SHUTTING_DOWN',
  'KV_ERR_TIMEOUT',
  // The leader has not seen a restarted member live again yet.
  'KV_ERR_WOULD_LOSE_QUORUM',
])

export class AdminError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message)
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/**
 * One admin call on the leader, retried until it answers 200 or `timeoutMs` passes. Each
 * attempt waits at most `attemptMs` (a replacement waits for its learner to catch up).
 */
export async function adminCall<T>(
  cluster: ChaosCluster,
  method: 'GET' | 'POST' | 'DELETE',
  path: string,
  body?: unknown,
  options: { timeoutMs?: number; attemptMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 30_000)
  let last = 'no leader found'
  let lastCode = 'none'
  let hint: string | null = null
  for (;;) {
    const url = hint ?? (await currentLeader(cluster))?.url ?? null
    hint = null
    if (url !== null) {
      try {
        const res = await fetch(`${url}${path}`, {
          method,
          ...(body !== undefined
            ? { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }
            : {}),
          signal: AbortSignal.timeout(
            Math.max(500, Math.min(options.attemptMs ?? 10_000, deadline - Date.now())),
          ),
        })
        const answer = (await res.json()) as T & {
          error?: { code: string; message: string; leaderUrl?: string | null }
        }
        if (res.ok) return answer
        lastCode = answer.error?.code ?? `HTTP ${res.status}`
        last = `${lastCode}: ${answer.error?.message ?? ''}`
        if (!retryable.has(lastCode)) throw new AdminError(`${method} ${path}: ${last}`, lastCode)
        if (lastCode === 'KV_ERR_NOT_LEADER' && typeof answer.error?.leaderUrl === 'string') {
          // Follow the hint at once (a leader that removes itself hands over first).
          hint = answer.error.leaderUrl
        }
      } catch (err) {
        if (err instanceof AdminError) throw err
        last = (err as Error).message
        lastCode = 'network'
      }
    }
    if (Date.now() > deadline) {
      throw new AdminError(`${method} ${path} did not succeed in time; last: ${last}`, lastCode)
    }
    if (hint === null) await sleep(200)
  }
}

export function membersView(cluster: ChaosCluster, timeoutMs = 10_000): Promise<MembersView> {
  return adminCall<MembersView>(cluster, 'GET', '/admin/v1/members', undefined, { timeoutMs })
}

/** POST /admin/v1/members: `spec` joins as a learner. */
export async function addLearner(cluster: ChaosCluster, spec: MemberSpec): Promise<void> {
  await adminCall(cluster, 'POST', '/admin/v1/members', spec)
}

/** Promotes `id` once it has caught up (KV_ERR_LEARNER_BEHIND until then). */
export async function promote(cluster: ChaosCluster, id: string, timeoutMs = 45_000) {
  await adminCall(cluster, 'POST', `/admin/v1/members/${id}/promote`, undefined, { timeoutMs })
}

/** DELETE /admin/v1/members/:id; the leader removing itself hands over first (followed). */
export async function removeMember(cluster: ChaosCluster, id: string): Promise<void> {
  await adminCall(cluster, 'DELETE', `/admin/v1/members/${id}`)
}

/** POST /admin/v1/members/:old/replace: add `spec`, catch up, promote, remove `old`. */
export async function replaceMember(
  cluster: ChaosCluster,
  old: string,
  spec: MemberSpec,
): Promise<void> {
  await adminCall(cluster, 'POST', `/admin/v1/members/${old}/replace`, spec, {
    timeoutMs: 60_000,
    attemptMs: 40_000,
  })
}
