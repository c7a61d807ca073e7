/**
 * `kv shard map|status|move|rebalance`: the shard map of a sharded deployment and slot moves
 * between its groups, a thin shell over the SDK's shard calls (which find each group's leader,
 * follow its hints and retry).
 *
 * The CLI talks to a kv-router, or to a member of any group: every group's view names the
 * directory of groups (their members and URLs), and `--shard-map FILE` (the file the nodes
 * were started with) gives it when the view cannot. The map shown is every group's claims
 * merged (per slot, the highest version wins), and each move goes to the group owning its
 * slots.
 */
import { readFile } from 'node:fs/promises'
import {
  KvError,
  isMoveFinished,
  ownersOf,
  planRebalance,
  slotsPerGroup,
  slotsText,
  type GroupShardView,
  type KvClient,
  type RebalancePlan,
  type ShardMap,
  type ShardMove,
  type ShardOverview,
} from '@kvstore/client'
import { formatSlotRanges, parseSlotRanges, shardMapOfFile, slotCount } from '@kvstore/protocol'
import { MemberUsageError, parseDuration } from './member-command.js'

export class ShardUsageError extends Error {}

/** The options of `kv shard`, parsed along with the rest of `kv`'s (`--to`, `--dry-run` and
 * `--timeout` are shared with other commands). */
export const shardOptions = {
  slots: { type: 'string' },
  wait: { type: 'boolean', default: false },
  abort: { type: 'boolean', default: false },
  group: { type: 'string' },
  'shard-map': { type: 'string' },
  'max-slots': { type: 'string' },
} as const

export interface ShardArgs {
  json?: boolean | undefined
  slots?: string | undefined
  to?: string | undefined
  wait?: boolean | undefined
  abort?: boolean | undefined
  group?: string | undefined
  'shard-map'?: string | undefined
  'max-slots'?: string | undefined
  'dry-run'?: boolean | undefined
  timeout?: string | undefined
}

export interface ShardIo {
  stdout: NodeJS.WritableStream
  stderr: NodeJS.WritableStream
}

/** How long `--wait` waits for one move by default. */
const moveTimeoutDefault = '10m'

export const shardUsage = `Shards (a sharded deployment: --url names a kv-router or a member of any group):
  shard map               the shard map: which group owns each range of slots, and at which
                          version, merged from every group's claims (the highest version
                          wins); slots per group
  shard status            each group's moves: the move out of it in flight (phase, age, last
                          error), its finished moves, and the imports into it
                          (both: exit status 1 when a group did not answer; what the other
                          groups know is still shown)
  shard move --slots A-B[,C...] --to GROUP [--wait [--timeout DURATION]]
                          move slots to GROUP (admin): sent to the leader of the group that
                          owns them, which copies them, catches the target up through its
                          log, fences them for a moment, switches ownership and unfences.
                          The slots must belong to one group. --wait follows the move until
                          it is done (exit status 0) or aborted (1), up to --timeout
                          (default 10m)
  shard move --abort [--group GROUP]
                          stop the move in flight (of GROUP, else of the one group that has
                          one): it rolls back, or finishes if the target already took it
  shard rebalance [--dry-run] [--wait [--timeout DURATION]] [--max-slots N]
                          spread the slots evenly over every group of the map, moving as few
                          as it can (a group just added gets its share): runs the plan's
                          moves one after another, each waited for before the next (--wait:
                          the last one too); --dry-run prints the plan only; --max-slots
                          splits larger moves
  --shard-map FILE        the shard map file the nodes were started with: the directory of
                          groups (and, without --url, the URLs to use)
  --group GROUP           which group (shard move --abort)
`

function write(stream: NodeJS.WritableStream, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.write(text, (err) => (err ? reject(err) : resolve()))
  })
}

function ago(ms: number, nowMs: number): string {
  const s = Math.max(0, Math.round((nowMs - ms) / 1000))
  if (s < 120) return `${s} s ago`
  if (s < 7200) return `${Math.round(s / 60)} min ago`
  return `${Math.round(s / 3600)} h ago`
}

function table(rows: string[][], indent = '  '): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? []
  return rows
    .map(
      (row) =>
        `${indent}${row
          .map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
          .join('  ')}\n`,
    )
    .join('')
}

function percent(n: number): string {
  return `${((n / slotCount) * 100).toFixed(1)}%`
}

/** Reads and checks a shard map file (`--shard-map`): the directory and the starting map. */
export async function readShardMapFile(path: string): Promise<ShardMap> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new ShardUsageError(`cannot read the shard map ${path}: ${(err as Error).message}`)
  }
  try {
    return shardMapOfFile(JSON.parse(text) as unknown)
  } catch (err) {
    throw new ShardUsageError(`${path} is not a valid shard map: ${(err as Error).message}`)
  }
}

/** The shard map as a table of slot ranges, then the slots and members of each group. */
export function mapText(overview: ShardOverview): string {
  const { map } = overview
  const answered = overview.views.map((v) => v.group)
  const source =
    overview.router !== null
      ? `as kv-router ${overview.router} routes by; no group answered directly`
      : `claims of ${answered.join(', ') || 'none'}`
  const lines = [
    `shard map version ${map.version}: ${map.slotCount} slots over ${map.groups.length} groups (${source})\n`,
    table([
      ['SLOTS', 'GROUP', 'VERSION', 'SINCE LSN'],
      ...map.slots.map((c) => [
        c.first === c.last ? String(c.first) : `${c.first}-${c.last}`,
        c.group,
        String(c.version),
        String(c.sinceLsn),
      ]),
    ]),
    'groups:\n',
  ]
  const counts = slotsPerGroup(map)
  lines.push(
    table([
      ['GROUP', 'SLOTS', 'SHARE', 'MEMBERS'],
      ...map.groups.map((g) => [
        g.id,
        String(counts.get(g.id) ?? 0),
        percent(counts.get(g.id) ?? 0),
        g.members.map((m) => `${m.id} ${m.url}`).join(', '),
      ]),
    ]),
  )
  return lines.join('')
}

function moveLine(m: ShardMove, nowMs: number): string {
  const error =
    m.error === '' ? '' : ` (${m.phase === 'aborted' ? 'why' : 'last error'}: ${m.error})`
  const when = isMoveFinished(m)
    ? `ended ${ago(m.updatedAtMs, nowMs)}`
    : `started ${ago(m.startedAtMs, nowMs)}, updated ${ago(m.updatedAtMs, nowMs)}`
  return `${m.id}  ${formatSlotRanges(m.slots)} -> ${m.target}  ${m.phase}  ${when}${error}`
}

/** Each group's moves and imports. */
export function statusText(overview: ShardOverview, nowMs = Date.now()): string {
  const lines: string[] = []
  for (const v of overview.views) {
    const owned = v.claims.reduce((n, c) => n + c.last - c.first + 1, 0)
    lines.push(
      `${v.group}: ${owned} slots, fenced ${v.fenced === '' ? 'none' : v.fenced}, applied LSN ${v.appliedLsn}\n`,
    )
    lines.push(`  move out: ${v.move === null ? 'none' : moveLine(v.move, nowMs)}\n`)
    const history = v.history.slice(-5).reverse()
    if (history.length > 0) {
      lines.push(
        `  finished moves (newest first${v.history.length > 5 ? `, 5 of ${v.history.length}` : ''}):\n`,
      )
      for (const m of history) lines.push(`    ${moveLine(m, nowMs)}\n`)
    }
    for (const i of v.imports)
      lines.push(
        `  import ${i.id}: ${formatSlotRanges(i.slots)} from ${i.source}, ${i.state}, source LSN ${i.cursorLsn}, ${i.keys} keys\n`,
      )
  }
  for (const u of overview.unreachable)
    lines.push(`${u.group}: UNREACHABLE (${u.code}: ${u.message})\n`)
  return lines.join('')
}

/** The plan as text: the share each group ends with, then the moves in order. */
export function planText(plan: RebalancePlan): string {
  const groups = Object.keys({ ...plan.current, ...plan.targets }).sort()
  const lines = [
    table([
      ['GROUP', 'NOW', 'AFTER'],
      ...groups.map((g) => [g, String(plan.current[g] ?? 0), String(plan.targets[g] ?? 0)]),
    ]),
  ]
  if (plan.moves.length === 0) lines.push('the slots are spread evenly: nothing to move\n')
  else {
    const total = plan.moves.reduce((n, m) => n + m.count, 0)
    lines.push(`${plan.moves.length} move${plan.moves.length === 1 ? '' : 's'}, ${total} slots:\n`)
    plan.moves.forEach((m, i) =>
      lines.push(`  ${i + 1}. ${m.count} slots ${m.slots}: ${m.from} -> ${m.to}\n`),
    )
  }
  return lines.join('')
}

function timeoutMs(opts: ShardArgs): number {
  try {
    return parseDuration(opts.timeout ?? moveTimeoutDefault)
  } catch (err) {
    if (err instanceof MemberUsageError) throw new ShardUsageError(err.message)
    throw err
  }
}

/** The options each subcommand takes (json and the connection's are always allowed). */
const allowed: Record<string, (keyof ShardArgs)[]> = {
  map: ['shard-map'],
  status: ['shard-map'],
  move: ['slots', 'to', 'wait', 'timeout', 'abort', 'group', 'shard-map'],
  rebalance: ['dry-run', 'wait', 'timeout', 'shard-map', 'max-slots'],
}

function checkOptions(sub: string, opts: ShardArgs): void {
  const names: (keyof ShardArgs)[] = [
    ...(Object.keys(shardOptions) as (keyof ShardArgs)[]),
    'to',
    'dry-run',
    'timeout',
  ]
  for (const name of names) {
    const given = opts[name]
    if (given !== undefined && given !== false && !(allowed[sub] ?? []).includes(name))
      throw new ShardUsageError(`shard ${sub} takes no --${name}`)
  }
}

/** Runs `kv shard SUB ...`; KvErrors go to the caller, which prints them with their code. */
export async function runShard(
  client: KvClient,
  args: string[],
  opts: ShardArgs,
  io: ShardIo,
): Promise<number> {
  const [sub, ...rest] = args
  if (sub === undefined || !Object.hasOwn(allowed, sub))
    throw new ShardUsageError(
      sub === undefined
        ? 'shard needs map, status, move or rebalance'
        : `unknown shard command ${JSON.stringify(sub)}`,
    )
  if (rest.length > 0) throw new ShardUsageError(`shard ${sub} takes no arguments`)
  checkOptions(sub, opts)
  const out = (value: unknown) => write(io.stdout, `${JSON.stringify(value, null, 2)}\n`)
  const directory =
    opts['shard-map'] === undefined ? undefined : await readShardMapFile(opts['shard-map'])
  const overview = () => client.shardOverview(directory === undefined ? {} : { directory })
  /**
   * The overview for a rebalance: every group answered, or else the map a kv-router routes by
   * (the groups may be out of this machine's reach).
   */
  const completeOverview = async (): Promise<ShardOverview> => {
    const o = await overview()
    if (o.unreachable.length > 0 && o.router === null)
      throw new KvError(
        'KV_ERR_UNAVAILABLE',
        `no member of ${o.unreachable.map((u) => u.group).join(', ')} answered: the map is not known for sure (${o.unreachable.map((u) => u.message).join('; ')})`,
        { group: o.unreachable.map((u) => u.group).join(',') },
      )
    return o
  }
  const warnUnreachable = async (o: ShardOverview) => {
    if (o.router !== null) {
      await write(
        io.stderr,
        `kv: note: no group's member could be reached from here (${o.unreachable.map((u) => u.group).join(', ')}); this is the map kv-router ${o.router} routes by\n`,
      )
      return
    }
    for (const u of o.unreachable)
      await write(
        io.stderr,
        `kv: warning: no member of group ${u.group} answered (${u.code}); its slots are shown as the other groups know them\n`,
      )
  }
  switch (sub) {
    case 'map': {
      const o = await overview()
      await warnUnreachable(o)
      if (opts.json) {
        const counts = slotsPerGroup(o.map)
        await out({
          ...o.map,
          slotsPerGroup: Object.fromEntries(counts),
          unreachable: o.unreachable,
          router: o.router,
        })
      } else await write(io.stdout, mapText(o))
      return o.unreachable.length > 0 && o.router === null ? 1 : 0
    }
    case 'status': {
      const o = await overview()
      if (o.views.length === 0)
        throw new KvError(
          'KV_ERR_UNAVAILABLE',
          `kv-router ${o.router ?? '?'} answered, but no member of any group could be reached from here to show its moves (${o.unreachable.map((u) => `${u.group}: ${u.message}`).join('; ')}); give --url a member, or --shard-map with URLs this machine reaches`,
        )
      await warnUnreachable(o)
      if (opts.json)
        await out({ version: o.map.version, groups: o.views, unreachable: o.unreachable })
      else await write(io.stdout, statusText(o))
      return o.unreachable.length > 0 ? 1 : 0
    }
    case 'move':
      // A move needs only the source group: the groups themselves check the rest.
      return opts.abort ? abort(client, opts, io, overview) : move(client, opts, io, overview)
    case 'rebalance':
      return rebalance(client, opts, io, completeOverview)
    default:
      throw new ShardUsageError(`unknown shard command ${JSON.stringify(sub)}`)
  }
}

/** Follows a move until it is done or aborted, reporting each phase on standard error. */
async function follow(
  client: KvClient,
  move: ShardMove,
  group: string | null,
  opts: ShardArgs,
  io: ShardIo,
): Promise<ShardMove> {
  const started = Date.now()
  return client.waitMove(move.id, {
    ...(group !== null ? { group } : {}),
    timeoutMs: timeoutMs(opts),
    onProgress: (m) => {
      if (opts.json) return
      const error = m.error === '' ? '' : ` (${m.error})`
      void write(
        io.stderr,
        `move ${m.id}: ${m.phase}${error} (${Math.round((Date.now() - started) / 1000)} s)\n`,
      )
    },
  })
}

function finishedText(m: ShardMove, from: string | null): string {
  const slots = formatSlotRanges(m.slots)
  return m.phase === 'done'
    ? `OK move ${m.id} done: slots ${slots} belong to ${m.target} (claim version ${m.version})\n`
    : `move ${m.id} was aborted${m.error === '' ? '' : ` (${m.error})`}: slots ${slots} stay with ${from ?? 'their group'}\n`
}

async function move(
  client: KvClient,
  opts: ShardArgs,
  io: ShardIo,
  overview: () => Promise<ShardOverview>,
): Promise<number> {
  if (opts.group !== undefined) throw new ShardUsageError('--group goes with shard move --abort')
  if (opts.slots === undefined || opts.to === undefined)
    throw new ShardUsageError('shard move needs --slots A-B and --to GROUP (or --abort)')
  if (opts.timeout !== undefined && !opts.wait)
    throw new ShardUsageError('--timeout goes with --wait')
  let slots: string
  try {
    slots = slotsText(opts.slots)
  } catch (err) {
    throw new ShardUsageError(`--slots: ${(err as Error).message.replace(/^slots: /, '')}`)
  }
  const to = opts.to
  timeoutMs(opts) // a bad --timeout is refused before anything moves
  const o = await overview()
  if (!o.map.groups.some((g) => g.id === to))
    throw new KvError(
      'KV_ERR_INVALID_ARGUMENT',
      `group ${to} is not in the shard map (groups: ${o.map.groups.map((g) => g.id).join(', ')})`,
      { group: to },
    )
  const owners = ownersOf(o.map, parseSlotRanges(slots))
  if (owners.length > 1)
    throw new KvError(
      'KV_ERR_INVALID_ARGUMENT',
      `slots ${slots} belong to several groups (${owners.map((w) => `${w.group}: ${formatSlotRanges(w.slots)}`).join('; ')}): a move takes the slots of one group; move each group's part in its own command`,
    )
  const from = (owners[0] as { group: string }).group
  if (from === to)
    throw new KvError('KV_ERR_INVALID_ARGUMENT', `slots ${slots} already belong to ${to}`, {
      group: to,
    })
  const started = await client.moveSlots({ slots, to, from })
  if (!opts.wait) {
    if (opts.json) await out(io, { ...started, group: from })
    else
      await write(
        io.stdout,
        `OK move ${started.move.id} started: slots ${slots} from ${from} to ${to} (phase ${started.move.phase}); kv shard status follows it\n`,
      )
    return 0
  }
  if (!opts.json)
    await write(io.stderr, `move ${started.move.id}: slots ${slots} from ${from} to ${to}\n`)
  const ended = await follow(client, started.move, from, opts, io)
  if (opts.json) await out(io, { ...started, group: from, move: ended })
  else await write(ended.phase === 'done' ? io.stdout : io.stderr, finishedText(ended, from))
  return ended.phase === 'done' ? 0 : 1
}

function out(io: ShardIo, value: unknown): Promise<void> {
  return write(io.stdout, `${JSON.stringify(value, null, 2)}\n`)
}

async function abort(
  client: KvClient,
  opts: ShardArgs,
  io: ShardIo,
  overview: () => Promise<ShardOverview>,
): Promise<number> {
  if (opts.slots !== undefined || opts.to !== undefined || opts.wait || opts.timeout)
    throw new ShardUsageError('shard move --abort takes only --group GROUP')
  let group = opts.group
  if (group === undefined) {
    const o = await overview()
    const moving = o.views.filter((v) => v.move !== null && !isMoveFinished(v.move))
    if (moving.length === 0) {
      const unknown = o.unreachable.map((u) => u.group)
      if (o.views.length === 0)
        throw new ShardUsageError(
          `no group could be reached from here to find the move in flight (${unknown.join(', ')}): name its source group with --group`,
        )
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `no group has a move in flight${unknown.length > 0 ? ` (${unknown.join(', ')} did not answer: name it with --group)` : ''}`,
      )
    }
    if (moving.length > 1)
      throw new ShardUsageError(
        `several groups have a move in flight (${moving.map((v) => `${v.group}: ${(v.move as ShardMove).id}`).join(', ')}): name one with --group`,
      )
    group = (moving[0] as GroupShardView).group
  }
  const ended = await client.abortMove({ group })
  if (opts.json) await out(io, ended)
  else {
    const m = ended.move
    await write(
      io.stdout,
      m.phase === 'done'
        ? `move ${m.id} could not be rolled back: ${m.target} had taken slots ${formatSlotRanges(m.slots)}, so it finished (done)\n`
        : `OK move ${m.id} ${m.phase === 'aborted' ? 'aborted' : `is ${m.phase}`}: slots ${formatSlotRanges(m.slots)} stay with ${group}\n`,
    )
  }
  return 0
}

async function rebalance(
  client: KvClient,
  opts: ShardArgs,
  io: ShardIo,
  overview: () => Promise<ShardOverview>,
): Promise<number> {
  if (opts.timeout !== undefined && opts['dry-run'])
    throw new ShardUsageError('--timeout goes with a rebalance that runs, not --dry-run')
  let slotsPerMoveMax: number | undefined
  if (opts['max-slots'] !== undefined) {
    if (!/^[1-9][0-9]*$/.test(opts['max-slots']))
      throw new ShardUsageError(
        `--max-slots must be a positive whole number, got ${opts['max-slots']}`,
      )
    slotsPerMoveMax = Number(opts['max-slots'])
  }
  timeoutMs(opts)
  const o = await overview()
  const moving = o.views.filter((v) => v.move !== null && !isMoveFinished(v.move))
  if (moving.length > 0)
    throw new KvError(
      'KV_ERR_SHARD_MOVE_IN_PROGRESS',
      `a move is in flight (${moving.map((v) => `${v.group}: ${(v.move as ShardMove).id}`).join(', ')}): wait for it (kv shard status) or abort it (kv shard move --abort) first`,
    )
  const plan = planRebalance(o.map, slotsPerMoveMax === undefined ? {} : { slotsPerMoveMax })
  if (opts['dry-run'] || plan.moves.length === 0) {
    if (opts.json) await out(io, { ...plan, ran: [] })
    else await write(io.stdout, planText(plan))
    return 0
  }
  if (!opts.json) await write(io.stdout, planText(plan))
  const ran: { from: string; to: string; slots: string; move: ShardMove }[] = []
  for (const [i, step] of plan.moves.entries()) {
    const last = i === plan.moves.length - 1
    const started = await client.moveSlots({ slots: step.slots, to: step.to, from: step.from })
    if (!opts.json)
      await write(
        io.stderr,
        `move ${i + 1} of ${plan.moves.length} (${started.move.id}): ${step.count} slots ${step.slots} from ${step.from} to ${step.to}\n`,
      )
    if (last && !opts.wait) {
      ran.push({ ...step, move: started.move })
      if (!opts.json)
        await write(
          io.stdout,
          `OK the last move (${started.move.id}) started; kv shard status follows it\n`,
        )
      break
    }
    const ended = await follow(client, started.move, step.from, opts, io)
    ran.push({ ...step, move: ended })
    if (ended.phase !== 'done') {
      if (opts.json) await out(io, { ...plan, ran })
      else
        await write(
          io.stderr,
          `${finishedText(ended, step.from)}kv: rebalance stopped after ${i} of ${plan.moves.length} moves; run it again to plan the rest\n`,
        )
      return 1
    }
    if (!opts.json) await write(io.stdout, finishedText(ended, step.from))
  }
  if (opts.json) await out(io, { ...plan, ran })
  else if (opts.wait)
    await write(
      io.stdout,
      `OK rebalanced: ${plan.moves.length} move${plan.moves.length === 1 ? '' : 's'} done\n`,
    )
  return 0
}
