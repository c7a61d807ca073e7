/**
 * The commands of the core's text traces (testdata/*.txt), on the test harness. Each command
 * prints what it changed, or "ok"; `status` and `messages` print what a test would assert.
 *
 *   cluster a b c [leader=a] [elections first=a] [cache=BYTES]
 *                              a new cluster: a static leader, or elections on (`first` times
 *                              out first; the others later, at different ticks)
 *   propose a [n=1] [tag=v] [durable=false]   the leader proposes n entries `tag-LSN`
 *   persist a                  the leader's proposals are durable
 *   tick [n=1]                 every node ticks, and messages are delivered after each tick
 *   deliver                    handles every Ready and delivers messages until nothing moves
 *   cut a->b | uncut a->b      drops (or stops dropping) messages on one link
 *   partition a b,c | heal a b,c  cuts (or restores) both ways; the streams break (come back)
 *   disconnect a b | connect a b  a's stream to b breaks (comes back)
 *   autopersist on|off, flush  hold Ready entries off disk, then write them
 *   restart a [keep=N] [epoch=E] [follow=L] [lead]
 *                              a crashes and restarts from its disk (its first N entries)
 *   compact a lsn=N            a's log below N is compacted away
 *   campaign a | transfer a to=b
 *   status [a b ...]           role, epoch, commit, log, and a leader's view of each follower
 *   messages [type=T]          the messages delivered since the last `messages`
 */
import type { Message, NodeId } from '../src/index.js'
import type { TraceCommand } from './datadriven.js'
import { Harness } from './harness.js'

const noop = new TextEncoder().encode('noop')

function list(value: string | undefined): string[] {
  return value === undefined || value === '' ? [] : value.split(',')
}

function int(command: TraceCommand, key: string, fallback: number): number {
  const value = command.args.get(key)
  if (value === undefined) return fallback
  const n = Number(value)
  if (!Number.isSafeInteger(n)) throw new Error(`${key}=${value} is not an integer`)
  return n
}

/** Payloads `tag-N` with consecutive N and the same tag, as `tag-1..9`. */
function compactLog(payloads: string[]): string {
  const out: string[] = []
  let run: { tag: string; from: number; to: number } | null = null
  const flush = () => {
    if (run)
      out.push(run.from === run.to ? `${run.tag}-${run.from}` : `${run.tag}-${run.from}..${run.to}`)
    run = null
  }
  for (const p of payloads) {
    const match = /^(.*)-(\d+)$/.exec(p)
    if (match === null) {
      flush()
      out.push(p)
      continue
    }
    const tag = match[1] as string
    const n = Number(match[2])
    const current = run as { tag: string; from: number; to: number } | null
    if (current !== null && current.tag === tag && current.to + 1 === n) current.to = n
    else {
      flush()
      run = { tag, from: n, to: n }
    }
  }
  flush()
  return `[${out.join(' ')}]`
}

export function describeMessage(m: Message): string {
  const head = `${m.from}->${m.to} ${m.type} e${m.epoch}`
  switch (m.type) {
    case 'append': {
      const first = m.entries[0]?.lsn
      const last = m.entries[m.entries.length - 1]?.lsn
      const entries =
        first === undefined ? 'none' : first === last ? `${first}` : `${first}..${last}`
      return `${head} prev=${m.prevLsn}/e${m.prevEpoch} entries=${entries} commit=${m.commitLsn}`
    }
    case 'appendAck':
      return `${head} match=${m.matchLsn}${m.reject ? ` reject hint=${m.hintLsn}` : ''}`
    case 'heartbeat':
      return `${head} commit=${m.commitLsn} last=${m.leaderLastLsn}`
    case 'heartbeatAck':
      return `${head} match=${m.matchLsn}`
    case 'vote':
      return `${head}${m.preVote ? ' pre' : ''}${m.transfer ? ' transfer' : ''} last=${m.lastLsn}/e${m.lastEpoch}`
    case 'voteAck':
      return `${head}${m.preVote ? ' pre' : ''} ${m.granted ? 'granted' : 'refused'}`
    case 'timeoutNow':
      return head
  }
}

export class Trace {
  private h: Harness | null = null
  private seen = 0

  private get harness(): Harness {
    if (this.h === null) throw new Error('no cluster yet: start with `cluster`')
    return this.h
  }

  private status(ids: NodeId[]): string {
    const h = this.harness
    const lines: string[] = []
    for (const id of ids.length > 0 ? ids : [...h.nodes.keys()]) {
      const node = h.node(id)
      const core = node.core
      const leader = core.leaderId === null || core.isLeader ? '' : ` leader=${core.leaderId}`
      const snapshot = node.snapshotLsn > 0 ? ` snapshot=${node.snapshotLsn}` : ''
      lines.push(
        `${id}: ${core.roleName} e${core.epoch}${leader} commit=${core.commitLsn} last=${core.lastLsn}${snapshot} log=${compactLog(h.log(id))}`,
      )
      if (!core.isLeader) continue
      for (const member of core.members) {
        const pr = core.progressOf(member)
        if (member === id || pr === undefined) continue
        const flags = [
          pr.connected ? '' : ' disconnected',
          pr.probeSentTick !== null ? ' probe-sent' : '',
          pr.inflight.length > 0 ? ` inflight=${pr.inflight.length}` : '',
          pr.regressions > 0 ? ` regressions=${pr.regressions}` : '',
        ].join('')
        lines.push(`  ${member}: ${pr.state} match=${pr.matchLsn} next=${pr.nextLsn}${flags}`)
      }
    }
    return lines.join('\n')
  }

  run = (command: TraceCommand): string => {
    const { name, words, args } = command
    const node = (i = 0) => {
      const id = words[i]
      if (id === undefined) throw new Error(`${name}: which node?`)
      return this.harness.node(id)
    }
    switch (name) {
      case 'cluster': {
        const ids = words
        const cache = args.has('cache') ? { logCacheBytesMax: int(command, 'cache', 0) } : {}
        if (args.has('leader')) {
          const leader = args.get('leader') as string
          const h = new Harness(ids, cache)
          h.node(leader).core.becomeLeader()
          for (const id of ids) if (id !== leader) h.node(id).core.becomeFollower(1, leader)
          h.connect(leader)
          this.h = h
        } else if (words.includes('elections') || args.has('first')) {
          const members = ids.filter((w) => w !== 'elections')
          const first = args.get('first') ?? members[0]
          const later = [0.5, 0.95, 0.7, 0.85]
          const perNode: Record<NodeId, { random: () => number }> = {}
          for (const id of members) {
            const draw = id === first ? 0 : (later.shift() as number)
            perNode[id] = { random: () => draw }
          }
          const h = new Harness(
            members,
            { ...cache, electionTicks: int(command, 'election', 10), makeNoop: () => noop },
            {},
            perNode,
          )
          h.connectAll()
          this.h = h
        } else {
          throw new Error('cluster: leader=ID or elections')
        }
        this.seen = this.harness.delivered.length
        return this.status([])
      }
      case 'propose': {
        const id = words[0] as string
        this.harness.propose(
          id,
          int(command, 'n', 1),
          args.get('tag') ?? 'v',
          args.get('durable') !== 'false',
        )
        return ''
      }
      case 'persist':
        this.harness.persistLeader(words[0] as string)
        return ''
      case 'tick':
        this.harness.tick(int(command, 'n', 1))
        return ''
      case 'deliver':
        this.harness.process()
        return ''
      case 'cut':
      case 'uncut': {
        for (const link of words) {
          if (name === 'cut') this.harness.cut.add(link)
          else this.harness.cut.delete(link)
        }
        return ''
      }
      case 'partition':
      case 'heal':
        this.harness.isolate(words[0] as string, list(words[1]), name === 'partition')
        return ''
      case 'disconnect':
      case 'connect': {
        const core = node().core
        for (const peer of list(words[1])) {
          if (name === 'disconnect') core.peerDisconnected(peer)
          else core.peerConnected(peer)
        }
        this.harness.process()
        return ''
      }
      case 'autopersist':
        this.harness.autoPersist = words[0] !== 'off'
        return ''
      case 'flush':
        this.harness.flushDisks()
        return ''
      case 'restart': {
        const id = words[0] as string
        const restarted = this.harness.restart(id, {
          ...(args.has('keep') ? { keep: int(command, 'keep', 0) } : {}),
          ...(args.has('epoch') ? { epoch: int(command, 'epoch', 0) } : {}),
        })
        const follow = args.get('follow')
        if (follow !== undefined) restarted.core.becomeFollower(restarted.core.epoch, follow)
        if (words.includes('lead')) {
          restarted.core.becomeLeader()
          this.harness.connect(id)
        }
        this.harness.process()
        return this.status([id])
      }
      case 'compact': {
        const n = node()
        const lsn = int(command, 'lsn', 0)
        const epoch = n.core.epochAt(lsn - 1)
        if (epoch === null) throw new Error(`compact: no entry at ${lsn - 1}`)
        n.core.compacted(lsn, epoch)
        n.disk = n.disk.filter((e) => e.lsn >= lsn)
        n.diskStart = lsn
        return ''
      }
      case 'campaign':
        node().core.campaign()
        this.harness.process()
        return ''
      case 'transfer': {
        const to = args.get('to')
        if (to === undefined) throw new Error('transfer: to=ID')
        node().core.transferLeadership(to)
        this.harness.process()
        return ''
      }
      case 'status':
        return this.status(words)
      case 'messages': {
        const type = args.get('type')
        const delivered = this.harness.delivered.slice(this.seen)
        this.seen = this.harness.delivered.length
        const shown = delivered.filter((m) => type === undefined || m.type === type)
        return shown.length === 0 ? 'none' : shown.map(describeMessage).join('\n')
      }
      default:
        throw new Error(`unknown command ${name}`)
    }
  }
}
