/**
 * `kv member list|add|promote|remove|replace`: the cluster's membership, a thin shell over the
 * SDK's membership calls (which find the leader, follow its hints and retry).
 */
import type {
  CatchUpProgress,
  KvClient,
  MemberInfo,
  Membership,
  MembershipChange,
  NewMember,
} from '@kvstore/client'

export class MemberUsageError extends Error {}

/** The options of `kv member`, parsed along with the rest of `kv`'s. */
export const memberOptions = {
  id: { type: 'string' },
  'client-url': { type: 'string' },
  'peer-url': { type: 'string' },
  promote: { type: 'boolean', default: false },
  timeout: { type: 'string' },
} as const

export interface MemberArgs {
  json?: boolean | undefined
  id?: string | undefined
  'client-url'?: string | undefined
  'peer-url'?: string | undefined
  promote?: boolean | undefined
  timeout?: string | undefined
}

export interface MemberIo {
  stdout: NodeJS.WritableStream
  stderr: NodeJS.WritableStream
}

/** How long `member add --promote` and `member replace` wait for catch-up by default. */
const catchUpTimeoutDefault = '10m'

export const memberUsage = `Membership (admin; single-leader changes go to the leader, whichever node --url names):
  member list             the members: id, role (voter or learner; leaderless: owner, joining
                          or leaving), client URL, and, as the leader sees them, each one's lag
                          and whether it is connected; the ids removed
  member add ID --client-url URL --peer-url URL [--promote [--timeout DURATION]]
                          add a member. Start its node first (kv-node --join with the
                          cluster's members and itself in --members, and a certificate from
                          kv certs add-member). Single-leader: it joins as a learner, which
                          catches up by snapshot and log but counts toward no quorum;
                          --promote waits for it to catch up (up to --timeout, default 10m)
                          and makes it a voter
  member promote ID [--timeout DURATION]
                          single-leader: make a caught-up learner a voter; refused with
                          KV_ERR_LEARNER_BEHIND while it lags, unless --timeout says how long
                          to keep asking
  member remove ID        remove a member; its id is never let back in. Refused with
                          KV_ERR_WOULD_LOSE_QUORUM when the live voters left would not be a
                          majority. Removing the leader hands leadership over first
  member replace OLD --id NEW --client-url URL --peer-url URL [--timeout DURATION]
                          replace member OLD (dead or alive) by a new member NEW with a new id
                          and an empty data directory (start its node first, as for add): NEW
                          joins, catches up, becomes a voter, then OLD is removed. Keeps
                          waiting while NEW catches up (up to --timeout, default 10m); run it
                          again to resume an interrupted replacement
  --timeout DURATION      90s, 10m, 1h, 500ms; a bare number is seconds
`

function write(stream: NodeJS.WritableStream, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.write(text, (err) => (err ? reject(err) : resolve()))
  })
}

/** `90s`, `10m`, `1h`, `500ms` or `30` (seconds) in milliseconds. */
export function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim())
  if (match === null)
    throw new MemberUsageError(`--timeout must be a duration such as 90s, 10m or 1h, not ${text}`)
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match[2] ?? 's'] ?? 1000
  const ms = Math.round(Number(match[1]) * unit)
  if (!Number.isSafeInteger(ms)) throw new MemberUsageError(`--timeout ${text} is too long`)
  return ms
}

function entries(n: number): string {
  return `${n} ${n === 1 ? 'entry' : 'entries'}`
}

function lagOf(m: MemberInfo, leaderId: string | null): string {
  if (m.id === leaderId) return '-'
  return m.lagEntries === undefined ? '?' : entries(m.lagEntries)
}

function connectedOf(m: MemberInfo, view: Membership): string {
  if (m.id === view.leaderId) return '(leader)'
  if (m.connected === undefined) return '?'
  return m.connected ? 'yes' : 'NO'
}

/** The members as a table, then the ids removed and a change in flight. */
export function membersTable(view: Membership): string {
  const leaderId = view.leaderId ?? null
  const sees =
    view.mode === 'single-leader'
      ? `configuration at LSN ${view.version}, as ${view.self} sees it (leader: ${leaderId ?? 'none known'})`
      : `ring version ${view.version}, as ${view.self} sees it`
  const rows = [
    ['ID', 'ROLE', 'CLIENT URL', 'LAG', 'CONNECTED'],
    ...view.members.map((m) => [
      m.id,
      m.role,
      m.clientUrl,
      lagOf(m, leaderId),
      connectedOf(m, view),
    ]),
  ]
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? []
  const lines = [`${view.members.length} members (${view.mode}), ${sees}\n`]
  for (const row of rows)
    lines.push(
      `  ${row
        .map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
        .join('  ')}\n`,
    )
  if (view.mode === 'single-leader' && view.self !== leaderId && leaderId !== null)
    lines.push(`(lag and connections are known to the leader only; ${view.self} answered)\n`)
  if (view.removed.length > 0) lines.push(`removed: ${view.removed.join(', ')}\n`)
  for (const h of view.handoffs ?? [])
    lines.push(
      `handoff in progress: ${h.member} ${h.kind === 'replace' ? `replacing ${h.replacing ?? '?'}` : `${h.kind}ing`}, ${h.rangesDone} of ${h.rangesTotal} ranges, ${h.keysStreamed} keys streamed\n`,
    )
  if (view.changeInProgress)
    lines.push('a membership change is in progress (a new one waits until it is done)\n')
  return lines.join('')
}

function describeChange(result: MembershipChange, replaced?: string): string {
  const member = result.membership.members.find((m) => m.id === result.member)
  switch (result.change) {
    case 'add':
      return member?.role === 'learner'
        ? `OK added ${result.member} as a learner: once it has caught up (kv member list shows its lag), run kv member promote ${result.member}\n`
        : `OK added ${result.member}${member ? ` (${member.role})` : ''}\n`
    case 'promote':
      return `OK ${result.member} is a voter\n`
    case 'remove':
      return `OK removed ${result.member}; stop its node (it serves nothing now) and keep its id retired\n`
    case 'replace':
      return `OK ${result.member} replaced ${replaced ?? 'the old member'}${member ? ` and is a ${member.role}` : ''}; stop the old node if it still runs\n`
  }
}

function newMember(id: string | undefined, opts: MemberArgs, verb: string): NewMember {
  const clientUrl = opts['client-url']
  const peerUrl = opts['peer-url']
  if (id === undefined || clientUrl === undefined || peerUrl === undefined) {
    throw new MemberUsageError(
      verb === 'add'
        ? 'member add needs ID, --client-url URL and --peer-url URL'
        : 'member replace needs OLD, --id NEW, --client-url URL and --peer-url URL',
    )
  }
  return { id, clientUrl, peerUrl }
}

/** Runs `kv member SUB ...`; KvErrors go to the caller, which prints them with their code. */
export async function runMember(
  client: KvClient,
  args: string[],
  opts: MemberArgs,
  io: MemberIo,
): Promise<number> {
  const [sub, ...rest] = args
  const out = (value: unknown) => write(io.stdout, `${JSON.stringify(value, null, 2)}\n`)
  const started = Date.now()
  const progress = (p: CatchUpProgress) => {
    const lag = p.lagEntries === null ? '' : `, ${entries(p.lagEntries)} behind`
    const link = p.connected === false ? ', not connected to the leader' : ''
    void write(
      io.stderr,
      `${p.member} is catching up${lag}${link} (${Math.round((Date.now() - started) / 1000)} s)\n`,
    )
  }
  const onlyArgs = (n: number, usage: string) => {
    if (rest.length !== n) throw new MemberUsageError(`member ${sub} takes ${usage}`)
  }
  const noMemberOptions = (allowed: (keyof MemberArgs)[]) => {
    for (const name of Object.keys(memberOptions) as (keyof MemberArgs)[]) {
      const given = opts[name]
      if (given !== undefined && given !== false && !allowed.includes(name))
        throw new MemberUsageError(`member ${sub} takes no --${name}`)
    }
  }
  const report = async (result: MembershipChange, replaced?: string) => {
    if (opts.json) return out(result)
    await write(io.stdout, describeChange(result, replaced))
    await write(io.stdout, membersTable(result.membership))
  }
  switch (sub) {
    case 'list':
    case 'ls': {
      onlyArgs(0, 'no arguments')
      noMemberOptions([])
      const view = await client.members()
      if (opts.json) await out(view)
      else await write(io.stdout, membersTable(view))
      return 0
    }
    case 'add': {
      onlyArgs(1, 'one ID')
      noMemberOptions(['client-url', 'peer-url', 'promote', 'timeout'])
      if (opts.timeout !== undefined && !opts.promote)
        throw new MemberUsageError('--timeout goes with --promote')
      const timeoutMs = parseDuration(opts.timeout ?? catchUpTimeoutDefault)
      const spec = newMember(rest[0], opts, 'add')
      let result = await client.addMember(spec)
      if (opts.promote) {
        if (!opts.json)
          await write(io.stderr, `added ${spec.id} as a learner; waiting for it to catch up\n`)
        result = await client.promoteMember(spec.id, { timeoutMs, onProgress: progress })
      }
      await report(result)
      return 0
    }
    case 'promote': {
      onlyArgs(1, 'one ID')
      noMemberOptions(['timeout'])
      const id = rest[0] as string
      const result = await client.promoteMember(
        id,
        opts.timeout === undefined
          ? {}
          : { timeoutMs: parseDuration(opts.timeout), onProgress: progress },
      )
      await report(result)
      return 0
    }
    case 'remove':
    case 'rm': {
      onlyArgs(1, 'one ID')
      noMemberOptions([])
      await report(await client.removeMember(rest[0] as string))
      return 0
    }
    case 'replace': {
      onlyArgs(1, 'one OLD member id')
      noMemberOptions(['id', 'client-url', 'peer-url', 'timeout'])
      const old = rest[0] as string
      const spec = newMember(opts.id, opts, 'replace')
      const result = await client.replaceMember(old, spec, {
        timeoutMs: parseDuration(opts.timeout ?? catchUpTimeoutDefault),
        onProgress: progress,
      })
      await report(result, old)
      return 0
    }
    default:
      throw new MemberUsageError(
        sub === undefined
          ? 'member needs list, add, promote, remove or replace'
          : `unknown member command ${JSON.stringify(sub)}`,
      )
  }
}
