/**
 * `kv regions` and `kv conflicts`: a region as its leader sees it (shipping to each other
 * region, the receiving cursors, conflict counts), and its conflict record; plus the lines
 * `kv cluster` adds for a node in a region. The rendering is pure (tested without a node).
 */
import type {
  KvClient,
  RegionConflict,
  RegionConflictSide,
  RegionalClusterView,
  RegionsView,
} from '@kvstore/client'

export const regionsUsage = `Regions (multi-leader; the node at --url is in a region):
  regions                 this region, its leader, and per other region: how the leader
                          ships to it (state, the receiver's cursor, lag in entries and ms,
                          entries shipped, last error) and how far this region applied its
                          writes (cursor); the conflicts counted (--json: GET /v1/regions)
  conflicts               the conflict record (admin): each write that lost to a concurrent
        [--limit N] [--after ID] [--all]
                          write of another region, with its winner (key, values, regions,
                          stamps) and the region that detected it, oldest first; --limit per
                          page (default 100), --after the last ID of the previous page,
                          --all every page (--json: the page, or every record)
`

export class RegionsUsageError extends Error {}

/** `3 s ago`, `2 min ago`, or `never`. */
function ago(ms: number | null, now: number): string {
  if (ms === null) return 'never'
  const s = Math.max(0, Math.round((now - ms) / 1000))
  return s < 120 ? `${s} s ago` : `${Math.round(s / 60)} min ago`
}

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? []
  return rows
    .map((r) =>
      `  ${r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join('  ')}`.trimEnd(),
    )
    .join('\n')
}

/**
 * `kv regions`: the region, its leader (when known), the regions of the deployment, a table
 * of shipping per other region, a table of receiving cursors, and the conflict counts.
 */
export function regionsText(
  view: RegionsView,
  o: { leaderId?: string | null; leaderUrl?: string | null; now?: number } = {},
): string {
  const now = o.now ?? Date.now()
  const leader =
    o.leaderId === undefined || o.leaderId === null
      ? view.leader
        ? 'answered by its leader'
        : 'no leader known'
      : `leader ${o.leaderId}${o.leaderUrl ? ` at ${o.leaderUrl}` : ''}`
  const others = view.regions.filter((r) => r.id !== view.region)
  const lines = [
    `region ${view.region} (${leader}); regions: ${view.regions.map((r) => `${r.id} (${r.members.map((m) => m.id).join(', ')})`).join(', ')}`,
    '',
  ]
  if (view.shipping.length === 0) {
    lines.push(
      view.leader
        ? 'shipping: none yet'
        : "shipping: known on the region's leader only (this answer came from a follower)",
    )
  } else {
    lines.push(
      table([
        [
          'SHIPPING TO',
          'STATE',
          'CURSOR',
          'COMMIT LSN',
          'LAG ENTRIES',
          'LAG MS',
          'SHIPPED',
          'LAST SHIPPED',
          'ERROR',
        ],
        ...view.shipping.map((s) => [
          s.to,
          s.state,
          s.cursor === null ? '-' : String(s.cursor),
          String(s.commitLsn),
          String(s.lagEntries),
          String(s.lagMs),
          String(s.shippedEntries),
          ago(s.lastShippedAtMs, now),
          s.error ?? '-',
        ]),
      ]),
    )
  }
  lines.push('')
  if (view.receiving.length === 0 && others.length > 0) lines.push('receiving: nothing yet')
  else
    lines.push(
      table([
        ['RECEIVING FROM', 'CURSOR', 'SOURCE COMMIT LSN', 'LAST APPLIED'],
        ...view.receiving.map((r) => [
          r.from,
          String(r.cursor),
          r.sourceCommitLsn === null ? '-' : String(r.sourceCommitLsn),
          ago(r.lastAppliedAtMs, now),
        ]),
      ]),
    )
  const c = view.conflicts
  lines.push(
    '',
    `conflicts: ${c.recorded} recorded (a write of ${view.region} lost: ${c.localLost}; a write of another region lost: ${c.remoteLost}; old records collected: ${c.collected})${view.leader ? '' : ", as this follower counted them (the leader's counts are the region's)"}`,
    '',
  )
  return lines.join('\n')
}

/** The lines `kv cluster` adds for a node in a region: lag to and from each other region. */
export function clusterRegionLines(view: RegionalClusterView, now = Date.now()): string {
  const r = view.regions
  if (r === undefined) return ''
  const lines = [`region ${r.region}: conflicts recorded ${r.conflicts.recorded}`]
  for (const s of r.shipping)
    lines.push(
      `  to ${s.to.padEnd(8)} ${s.state.padEnd(10)} cursor ${String(s.cursor ?? '-').padStart(10)}  lag ${s.lagEntries} entries, ${s.lagMs} ms${s.error !== null ? `  (${s.error})` : ''}`,
    )
  if (r.shipping.length === 0 && !r.leader)
    lines.push("  shipping: known on the region's leader only")
  for (const x of r.receiving)
    lines.push(
      `  from ${x.from.padEnd(6)} cursor ${String(x.cursor).padStart(10)}  applied ${ago(x.lastAppliedAtMs, now)}`,
    )
  return `${lines.join('\n')}\n`
}

/** A conflict side's value for a table: its text (at most `width` characters) or `(deleted)`. */
function shortValue(side: RegionConflictSide, width = 24): string {
  if (side.deleted) return '(deleted)'
  let text: string
  const bytes = Buffer.from(side.valueBase64 ?? '', 'base64')
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes)
    // eslint-disable-next-line no-control-regex
    if (/[\u0000-\u001f\u007f]/.test(text)) text = `(${bytes.length} bytes)`
  } catch {
    text = `(${bytes.length} bytes)`
  }
  return text.length > width ? `${text.slice(0, width - 1)}…` : text
}

/** `kv conflicts`: one row per record, oldest first. */
export function conflictsText(conflicts: RegionConflict[]): string {
  if (conflicts.length === 0) return 'no conflicts recorded\n'
  return `${table([
    ['ID', 'KEY', 'WINNER', 'REGION', 'STAMP', 'LOSER', 'REGION', 'STAMP', 'DETECTED IN', 'AT'],
    ...conflicts.map((c) => [
      c.id,
      c.key,
      shortValue(c.winner),
      c.winner.region,
      c.winner.stamp,
      shortValue(c.loser),
      c.loser.region,
      c.loser.stamp,
      c.detectedIn,
      new Date(c.atMs).toISOString(),
    ]),
  ])}\n`
}

function write(stream: NodeJS.WritableStream, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.write(text, (err) => (err ? reject(err) : resolve()))
  })
}

const conflictIdPattern = /^[0-9]{20}-[0-9]{1,6}$/

/** Runs `kv regions` or `kv conflicts`. */
export async function runRegionsCommand(
  command: 'regions' | 'conflicts',
  client: KvClient,
  args: string[],
  opts: {
    json?: boolean | undefined
    limit?: string | undefined
    after?: string | undefined
    all?: boolean | undefined
  },
  io: { stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream },
): Promise<number> {
  if (args.length > 0)
    throw new RegionsUsageError(`${command} takes no arguments (got ${args.join(' ')})`)
  if (command === 'regions') {
    if (opts.limit !== undefined || opts.after !== undefined || opts.all)
      throw new RegionsUsageError('regions takes no --limit, --after or --all')
    const view = await client.regions()
    if (opts.json) {
      await write(io.stdout, `${JSON.stringify(view, null, 2)}\n`)
      return 0
    }
    let leader: { leaderId?: string | null; leaderUrl?: string | null } = {}
    try {
      const cluster = await client.cluster()
      leader = { leaderId: cluster.leaderId, leaderUrl: cluster.leaderUrl }
    } catch {
      // the table goes without the leader's name
    }
    await write(io.stdout, regionsText(view, leader))
    return 0
  }
  let limit: number | undefined
  if (opts.limit !== undefined) {
    if (!/^[1-9][0-9]*$/.test(opts.limit) || Number(opts.limit) > 1000)
      throw new RegionsUsageError(
        `--limit must be a whole number from 1 to 1000, got ${opts.limit}`,
      )
    limit = Number(opts.limit)
  }
  if (opts.after !== undefined && !conflictIdPattern.test(opts.after))
    throw new RegionsUsageError(
      `--after must be a conflict id, such as 00000000000000000042-0 (the ID column), got ${opts.after}`,
    )
  const options = {
    ...(limit !== undefined ? { limit } : {}),
    ...(opts.after !== undefined ? { after: opts.after } : {}),
  }
  if (opts.all) {
    const all: RegionConflict[] = []
    for await (const c of client.conflictsAll(options)) all.push(c)
    await write(
      io.stdout,
      opts.json ? `${JSON.stringify({ conflicts: all }, null, 2)}\n` : conflictsText(all),
    )
    return 0
  }
  const page = await client.conflicts(options)
  if (opts.json) {
    await write(io.stdout, `${JSON.stringify(page, null, 2)}\n`)
    return 0
  }
  await write(io.stdout, conflictsText(page.conflicts))
  if (page.next !== null)
    await write(io.stderr, `(more conflicts: kv conflicts --after ${page.next}, or --all)\n`)
  return 0
}
