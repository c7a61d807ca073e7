/**
 * The live dashboard through the router (docs/dashboard.md): the nodes draw it, the router
 * passes it on and says which groups are behind it.
 *   GET /ui, /ui/assets/<name>   the page and its files, from any member of the first group
 *   GET /ui/v1/state?group=ID    that group's dashboard state, from one of its members
 *   GET /ui/v1/stream?group=ID   a `router` event (this router and its groups), then that
 *                                group's stream from one of its members, as it comes
 * The caller's credential goes to the node (as for every proxied request), which checks the
 * monitor role. A follower is streamed from when the group has one, so that a kill of the
 * leader does not break the page's stream: the follower's view shows the new leader as soon
 * as its heartbeat arrives. When the member's stream ends or goes quiet for
 * --ui-stream-idle-ms, the page's stream ends too and the page reconnects through the router,
 * which picks a member that answers.
 *
 * Bounded: at most --ui-streams-max streams at once (KV_ERR_DASHBOARD_STREAMS_TOO_MANY), and a
 * page that reads slower than the node writes is cut off once --ui-stream-buffer-bytes-max
 * bytes wait for it (it reconnects and starts from a fresh snapshot).
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { ServerResponse } from 'node:http'
import type { Http2ServerResponse } from 'node:http2'
import { KvError } from '@kvstore/protocol'
import type { RouterConfig } from './config.js'
import type { GroupState, Member } from './groups.js'
import type { Proxy } from './proxy.js'
import { UpstreamError } from './upstream.js'

export interface DashboardDeps {
  config: RouterConfig
  groups: GroupState[]
  proxy: Proxy
}

/** What the page is told about the router before the group's own events. */
export interface RouterDashboardInfo {
  routerId: string
  /** The group this stream shows. */
  group: string
  groups: { id: string; leader: string | null; members: string[] }[]
}

/** The member to stream from: a reachable follower first, then the leader, then any. */
export function streamMember(group: GroupState): Member | null {
  const leader = group.leader
  const reachable = group.members.filter((m) => m.health.reachable)
  return (
    reachable.find((m) => m !== leader && m.role === 'follower') ??
    (leader !== null && leader.health.reachable ? leader : null) ??
    reachable[0] ??
    group.members[0] ??
    null
  )
}

function unsent(raw: ServerResponse | Http2ServerResponse): number {
  const h2 = (raw as Http2ServerResponse).stream
  return h2 !== undefined ? h2.writableLength : (raw as ServerResponse).writableLength
}

export class RouterDashboard {
  private open = 0

  constructor(private readonly deps: DashboardDeps) {}

  /** Pages streamed to now. */
  get streams(): number {
    return this.open
  }

  info(group: GroupState): RouterDashboardInfo {
    return {
      routerId: this.deps.config.routerId,
      group: group.id,
      groups: this.deps.groups.map((g) => ({
        id: g.id,
        leader: g.leader?.id ?? null,
        members: g.members.map((m) => m.id),
      })),
    }
  }

  async stream(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const { config, proxy } = this.deps
    const group = proxy.groupOfQuery(request)
    if (group instanceof KvError) throw group
    if (this.open >= config.uiStreamsMax) {
      void reply.header('retry-after', '1')
      throw new KvError(
        'KV_ERR_DASHBOARD_STREAMS_TOO_MANY',
        `this router already streams to ${config.uiStreamsMax} dashboard pages (--ui-streams-max); retry later`,
        { uiStreamsMax: config.uiStreamsMax },
      )
    }
    const member = streamMember(group)
    if (member === null)
      throw new KvError(
        'KV_ERR_GROUP_UNAVAILABLE',
        `no member of group ${group.id} answers the router`,
        { group: group.id, retryAfterSeconds: 1 },
      )
    this.open++
    const aborter = new AbortController()
    let counted = true
    const done = (): void => {
      if (counted) this.open--
      counted = false
      aborter.abort()
    }
    request.raw.once('close', done)
    let upstream
    try {
      upstream = await member.upstream.stream(
        '/ui/v1/stream',
        { ...proxy.forwardHeaders(request), accept: 'text/event-stream' },
        config.upstreamTimeoutMs,
        config.uiStreamIdleMs,
        aborter.signal,
      )
    } catch (err) {
      done()
      if (err instanceof UpstreamError)
        throw new KvError(
          'KV_ERR_GROUP_UNAVAILABLE',
          `the dashboard stream of ${member.id} (group ${group.id}) did not open: ${err.message}`,
          { group: group.id, retryAfterSeconds: 1 },
        )
      throw err
    }
    if (upstream.statusCode !== 200) {
      // The node's own answer (401, 403, 429, 503: a coded error) goes back as it came.
      const body = Buffer.from(await upstream.body.arrayBuffer())
      done()
      const type = upstream.headers['content-type']
      void reply.code(upstream.statusCode)
      if (typeof type === 'string') void reply.header('content-type', type)
      const retryAfter = upstream.headers['retry-after']
      if (typeof retryAfter === 'string') void reply.header('retry-after', retryAfter)
      void reply.header('kv-served-by', member.id).header('kv-group', group.id)
      await reply.send(body)
      return
    }
    void reply.hijack()
    const raw = reply.raw as ServerResponse | Http2ServerResponse
    raw.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      'x-accel-buffering': 'no',
      'kv-served-by': member.id,
      'kv-group': group.id,
    })
    const write = (chunk: Buffer | string): boolean => {
      if (raw.writableEnded || raw.destroyed) return false
      if (unsent(raw) + chunk.length > config.uiStreamBufferBytesMax) {
        // A page this far behind gets a fresh snapshot when it reconnects.
        raw.end()
        return false
      }
      ;(raw as ServerResponse).write(chunk)
      return true
    }
    write(`event: router\ndata: ${JSON.stringify(this.info(group))}\n\n`)
    try {
      for await (const chunk of upstream.body) if (!write(chunk as Buffer)) break
    } catch {
      // The member went away or went quiet: the page reconnects, through a member that answers.
    } finally {
      done()
      upstream.body.destroy()
      if (!raw.writableEnded && !raw.destroyed) raw.end()
    }
  }
}
