/**
 * Slot moves between shard groups, as an operator makes them (`POST /admin/v1/shards/moves` on
 * the source group's leader), for the `move-slots` nemesis and the end-of-run settling.
 *
 * The nemesis runs beside the other faults, not in turns with them: a move is slow (copy,
 * catch up, fence, switch), and its point is to be interrupted by the kills and pauses the
 * rest of the schedule makes. Each round it takes a slot the workload's keys live in, the run
 * of slots around it that one group owns (1 to 512 of them), and moves them to another group;
 * the next round that picks the slot moves it back. Sometimes (one move in five) it asks for
 * an abort once the move is under way. It waits for the move to end (done or aborted, in the
 * source group's history) for up to 30 s, asks for an abort if it has not, and waits 20 s
 * more. Each move is one record: id, slots, from, to, the phase it ended in, how long it took.
 *
 * Calls follow `KV_ERR_NOT_LEADER`'s leader hint, and retry "not now" answers (no leader yet,
 * another move in flight) within a bound. A POST whose answer was lost may have started the
 * move: the source's view is read first, and a move of the same slots to the same group that
 * it shows is taken as ours rather than started again.
 */
import type { GroupShardView, ShardMove } from '@kvstore/protocol'
import { formatSlotRanges } from '@kvstore/protocol'
import { currentLeader, type ChaosNode } from './cluster.js'
import type { ShardGroupHandle, ShardedCluster } from './sharded-cluster.js'

/** One move the nemesis made, as the run's report keeps it. */
export interface MoveRecord {
  /** The move's id ('' when it never started). */
  id: string
  slots: string
  from: string
  to: string
  /** done, aborted, or where it stood when the nemesis stopped waiting; refused when never started. */
  phase: string
  /** Requested to the end seen, ms. */
  durationMs: number
  /** ms since the run began. */
  start: number
  end: number
  /** The nemesis asked for an abort (by its draw, or because the move took too long). */
  abortRequested: boolean
  /** The move's error, or why it could not be started or followed. */
  error: string
  /** move-slots: the leader it killed or paused during the move ('' when none). */
  interrupted: string
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** What `GET /v1/shards` answers on `node`, or null when it does not in time. */
export async function shardViewOf(
  node: ChaosNode,
  timeoutMs = 1000,
): Promise<GroupShardView | null> {
  try {
    const res = await fetch(`${node.url}/v1/shards`, { signal: AbortSignal.timeout(timeoutMs) })
    if (!res.ok) {
      await res.arrayBuffer()
      return null
    }
    return (await res.json()) as GroupShardView
  } catch {
    return null
  }
}

/** The group's view from its leader, else from the first running member that answers. */
export async function groupView(group: ShardGroupHandle): Promise<GroupShardView | null> {
  const leader = await currentLeader(group.cluster)
  if (leader !== null) {
    const view = await shardViewOf(leader)
    if (view !== null) return view
  }
  for (const node of group.cluster.nodes) {
    if (!group.cluster.isRunning(node.id) || node === leader) continue
    const view = await shardViewOf(node)
    if (view !== null) return view
  }
  return null
}

interface Answer {
  status: number
  body: { move?: ShardMove; error?: { code?: string; leaderUrl?: string | null } }
}

/** "Not now" answers: retried (within the bound). */
const notNow = new Set([
  'KV_ERR_NOT_LEADER',
  'KV_ERR_NOT_READY',
  'KV_ERR_NO_LEADER',
  'KV_ERR_STALE_EPOCH',
  'KV_ERR_SHUTTING_DOWN',
  'KV_ERR_OVERLOADED',
])

/**
 * POSTs `path` to the group's leader, following NOT_LEADER hints and retrying "not now"
 * answers until `deadline`. Resolves with the last answer, or null when none came (every
 * attempt timed out or was refused a connection: the call may or may not have been made).
 */
async function leaderPost(
  group: ShardGroupHandle,
  path: string,
  body: unknown,
  deadline: number,
): Promise<Answer | null> {
  let hint: string | null = null
  let last: Answer | null = null
  while (Date.now() < deadline) {
    const url = hint ?? (await currentLeader(group.cluster))?.url ?? null
    hint = null
    if (url === null) {
      await sleep(200)
      continue
    }
    try {
      const res = await fetch(`${url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body ?? {}),
        signal: AbortSignal.timeout(3000),
      })
      const text = await res.text()
      let parsed: Answer['body'] = {}
      try {
        parsed = JSON.parse(text) as Answer['body']
      } catch {
        parsed = {}
      }
      last = { status: res.status, body: parsed }
      const code = parsed.error?.code
      if (code === undefined || !notNow.has(code)) return last
      if (code === 'KV_ERR_NOT_LEADER' && typeof parsed.error?.leaderUrl === 'string')
        hint = parsed.error.leaderUrl
      else await sleep(200)
    } catch {
      // A lost answer: the caller decides whether the call happened.
      return null
    }
  }
  return last
}

const sameSlots = (move: ShardMove, slots: string, to: string) =>
  formatSlotRanges(move.slots) === slots && move.target === to

/** The source's move of these slots to `to` that we have not seen yet, running or finished. */
function findMove(
  view: GroupShardView | null,
  slots: string,
  to: string,
  known: ReadonlySet<string>,
): ShardMove | null {
  if (view === null) return null
  if (view.move !== null && sameSlots(view.move, slots, to) && !known.has(view.move.id))
    return view.move
  for (const m of [...view.history].reverse())
    if (sameSlots(m, slots, to) && !known.has(m.id)) return m
  return null
}

export interface MoveOptions {
  cluster: ShardedCluster
  from: ShardGroupHandle
  to: ShardGroupHandle
  slots: string
  /** Ask for an abort this long after the move started (null: never, unless it takes too long). */
  abortAfterMs: number | null
  /** Move ids the run has seen already (a lost answer's move is found among the others). */
  known: Set<string>
  /** Wait this long for the end before asking for an abort (default 30 s). */
  patienceMs?: number
  clock: () => number
}

/** Makes one move and follows it to its end (bounded); resolves with its record. */
export async function moveSlots(options: MoveOptions): Promise<MoveRecord> {
  const { from, to, slots, known, clock } = options
  const start = clock()
  const record: MoveRecord = {
    id: '',
    slots,
    from: from.id,
    to: to.id,
    phase: 'refused',
    durationMs: 0,
    start,
    end: start,
    abortRequested: false,
    error: '',
    interrupted: '',
  }
  const finish = () => {
    record.end = clock()
    record.durationMs = Math.round(record.end - record.start)
    return record
  }
  // Start it: at most 10 s of tries.
  let move: ShardMove | null = null
  const startBy = Date.now() + 10_000
  while (move === null && Date.now() < startBy) {
    const answer = await leaderPost(
      from,
      '/admin/v1/shards/moves',
      { slots, to: to.id },
      Math.min(startBy, Date.now() + 5000),
    )
    if (answer?.status === 202 && answer.body.move !== undefined) {
      move = answer.body.move
      break
    }
    // The answer was lost, or says another move runs: it may be ours.
    const code = answer?.body.error?.code
    if (answer === null || code === 'KV_ERR_SHARD_MOVE_IN_PROGRESS') {
      move = findMove(await groupView(from), slots, to.id, known)
      if (move !== null) break
      await sleep(300)
      continue
    }
    record.error = `${answer.status} ${code ?? JSON.stringify(answer.body)}`
    return finish()
  }
  if (move === null) {
    record.error ||= 'no answer from the source group within 10 s'
    return finish()
  }
  record.id = move.id
  known.add(move.id)
  record.phase = move.phase
  // Follow it to the end.
  const patienceMs = options.patienceMs ?? 30_000
  const begun = Date.now()
  // Two aborts at most: the drawn one, and one when the move outlasts our patience.
  const abortsDue = [
    ...(options.abortAfterMs === null ? [] : [begun + options.abortAfterMs]),
    begun + patienceMs,
  ].sort((a, b) => a - b)
  const giveUpAt = begun + patienceMs + 20_000
  for (;;) {
    const view = await groupView(from)
    const ended = view?.history.find((m) => m.id === move.id)
    if (ended !== undefined) {
      record.phase = ended.phase
      record.error = ended.error
      return finish()
    }
    const ours = view?.move?.id === move.id
    if (ours && view?.move) {
      record.phase = view.move.phase
      record.error = view.move.error
    }
    const now = Date.now()
    // Only while the group shows this move running: when it does not, it has ended.
    if (ours && abortsDue.length > 0 && now >= (abortsDue[0] as number)) {
      abortsDue.shift()
      record.abortRequested = true
      await leaderPost(from, '/admin/v1/shards/moves/abort', {}, now + 5000)
    }
    if (now >= giveUpAt) {
      record.error = `still ${record.phase} ${Math.round((now - begun) / 1000)} s after it started${record.error ? ` (${record.error})` : ''}`
      record.phase = `${record.phase} (unfinished)`
      return finish()
    }
    await sleep(200)
  }
}

/**
 * Waits until no group has a move in flight (every source's `move` is null), up to
 * `timeoutMs`; resolves with the views of every group (null for one that did not answer).
 */
export async function settleMoves(
  cluster: ShardedCluster,
  timeoutMs: number,
): Promise<{ settled: boolean; views: (GroupShardView | null)[]; waitedMs: number }> {
  const started = Date.now()
  for (;;) {
    const views = await Promise.all(cluster.groups.map((g) => groupView(g)))
    const settled = views.every((v) => v !== null && v.move === null)
    if (settled || Date.now() - started > timeoutMs)
      return { settled, views, waitedMs: Date.now() - started }
    await sleep(250)
  }
}
