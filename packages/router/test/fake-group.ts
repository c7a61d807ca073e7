/**
 * Fake single-leader groups for the router's unit tests: plain HTTP servers that answer like
 * nodes (GET /v1/cluster, keys, listings, batches, GET /v1/shards, whoami), sharing one state
 * per group that a test changes at will (who leads, lags, is down or slow, owns which slots),
 * and recording what each node was sent.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { encodeSession, slotOfKey } from '@kvstore/protocol'

export interface Seen {
  method: string
  url: string
  headers: IncomingMessage['headers']
  body: string
}

export interface FakeNode {
  id: string
  url: string
  server: Server
  seen: Seen[]
  /** What it does with requests: answer, hang (never answer), or drop the connection. */
  mode: 'ok' | 'hang' | 'drop'
  lagMs: number
  appliedLsn: number
  /** One-off answers to the next requests matching a path prefix (status, body, headers). */
  scripted: { prefix: string; status: number; body: unknown; headers?: Record<string, string> }[]
}

export class FakeGroup {
  readonly nodes: FakeNode[] = []
  leaderId: string
  epoch = 1
  lsn = 0
  readonly data = new Map<string, string>()
  /** Slots this group owns; a key outside them is refused with WRONG_SHARD naming `other`. */
  owns: (slot: number) => boolean = () => true
  other: string | null = null
  mapVersion = 1
  claims: unknown[] = []

  private constructor(
    readonly id: string,
    leaderId: string,
  ) {
    this.leaderId = leaderId
  }

  static async start(id: string, size = 3): Promise<FakeGroup> {
    const group = new FakeGroup(id, `${id}n1`)
    for (let i = 1; i <= size; i++) {
      const node: FakeNode = {
        id: `${id}n${i}`,
        url: '',
        server: createServer(),
        seen: [],
        mode: 'ok',
        lagMs: 0,
        appliedLsn: 0,
        scripted: [],
      }
      node.server.on('request', (req, res) => group.handle(node, req, res))
      await new Promise<void>((resolve) => node.server.listen(0, '127.0.0.1', resolve))
      node.url = `http://127.0.0.1:${(node.server.address() as AddressInfo).port}`
      group.nodes.push(node)
    }
    return group
  }

  node(id: string): FakeNode {
    const node = this.nodes.find((n) => n.id === id)
    if (node === undefined) throw new Error(`no node ${id}`)
    return node
  }

  get urls(): string[] {
    return this.nodes.map((n) => n.url)
  }

  async close(): Promise<void> {
    for (const n of this.nodes) n.server.closeAllConnections()
    await Promise.all(this.nodes.map((n) => new Promise((resolve) => n.server.close(resolve))))
  }

  private view(self: FakeNode): unknown {
    const leader = this.nodes.find((n) => n.id === this.leaderId)
    return {
      mode: 'single-leader',
      clusterId: 'fake',
      leaderId: leader?.id ?? null,
      leaderUrl: leader?.url ?? null,
      writable: self.id === this.leaderId,
      epoch: this.epoch,
      commitLsn: this.lsn,
      self: self.id,
      members: this.nodes.map((n) => ({
        id: n.id,
        role: n.id === this.leaderId ? 'leader' : 'follower',
        clientUrl: n.url,
        peerUrl: null,
        epoch: this.epoch,
        ackedLsn: this.lsn,
        appliedLsn: n.appliedLsn,
        lagEntries: 0,
        lagMs: n.lagMs,
        lastContactMs: 0,
        connected: true,
      })),
    }
  }

  private handle(node: FakeNode, req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8')
      node.seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body })
      if (node.mode === 'hang') return
      if (node.mode === 'drop') {
        req.socket.destroy()
        return
      }
      const send = (status: number, payload: unknown, headers: Record<string, string> = {}) => {
        const text = typeof payload === 'string' ? payload : JSON.stringify(payload)
        res.writeHead(status, {
          'content-type':
            typeof payload === 'string' ? 'application/octet-stream' : 'application/json',
          ...headers,
        })
        res.end(text)
      }
      const url = req.url ?? ''
      const scripted = node.scripted.findIndex((s) => url.startsWith(s.prefix))
      if (scripted !== -1) {
        const [s] = node.scripted.splice(scripted, 1)
        if (s !== undefined) send(s.status, s.body, s.headers)
        return
      }
      const error = (status: number, code: string, details: Record<string, unknown> = {}) =>
        send(status, { error: { code, message: code, ...details } })
      const readHeaders = () => ({
        'kv-role': node.id === this.leaderId ? 'leader' : 'follower',
        'kv-lag-ms': String(node.lagMs),
        'kv-applied-lsn': String(this.lsn),
        'kv-session': encodeSession({ epoch: this.epoch, lsn: this.lsn }),
      })
      if (url === '/v1/cluster') return send(200, this.view(node))
      if (url === '/v1/shards') {
        if (this.claims.length === 0) return error(400, 'KV_ERR_UNSUPPORTED_IN_MODE')
        return send(200, {
          group: this.id,
          appliedLsn: this.lsn,
          claims: this.claims,
          fenced: '',
          map: { version: this.mapVersion, slotCount: 4096, groups: [], slots: [] },
          move: null,
          history: [],
          imports: [],
        })
      }
      if (url === '/v1/auth/whoami')
        return send(200, {
          user: null,
          via: 'anonymous',
          roles: [],
          permissions: null,
          authEnabled: false,
        })
      if (url.startsWith('/v1/kv?')) {
        const query = new URLSearchParams(url.slice('/v1/kv?'.length))
        const prefix = query.get('prefix') ?? ''
        const limit = Number(query.get('limit') ?? 100)
        let after: string | null = null
        const cursor = query.get('cursor')
        if (cursor !== null)
          after = (JSON.parse(Buffer.from(cursor, 'base64url').toString()) as { after: string })
            .after
        const keys = [...this.data.keys()]
          .filter((k) => k.startsWith(prefix) && this.owns(slotOfKey(k)))
          .filter((k) => after === null || Buffer.compare(Buffer.from(k), Buffer.from(after)) > 0)
          .sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))
        const page = keys.slice(0, limit)
        const more = keys.length > limit
        const last = page[page.length - 1]
        return send(
          200,
          {
            items: page.map((key) => ({ key, version: 1, valueBytes: 1 })),
            nextCursor:
              more && last !== undefined
                ? Buffer.from(JSON.stringify({ v: 1, after: last, prefix })).toString('base64url')
                : null,
            appliedLsn: this.lsn,
          },
          readHeaders(),
        )
      }
      if (url.startsWith('/v1/kv/')) {
        const key = decodeURIComponent(url.slice('/v1/kv/'.length).split('?')[0] as string)
        if (!this.owns(slotOfKey(key)))
          return error(421, 'KV_ERR_WRONG_SHARD', {
            slot: slotOfKey(key),
            group: this.other,
            endpoints: [],
            mapVersion: this.mapVersion,
          })
        if (req.method === 'GET' || req.method === 'HEAD') {
          const value = this.data.get(key)
          if (value === undefined)
            return send(
              404,
              { error: { code: 'KV_ERR_KEY_NOT_FOUND', message: 'no' } },
              readHeaders(),
            )
          return send(200, value, readHeaders())
        }
        if (node.id !== this.leaderId) {
          const leader = this.nodes.find((n) => n.id === this.leaderId)
          return error(421, 'KV_ERR_NOT_LEADER', {
            leaderId: leader?.id ?? null,
            leaderUrl: leader?.url ?? null,
          })
        }
        this.lsn++
        const session = encodeSession({ epoch: this.epoch, lsn: this.lsn })
        if (req.method === 'DELETE') this.data.delete(key)
        else this.data.set(key, body)
        return send(
          200,
          { key, version: this.lsn, lsn: this.lsn, session },
          { 'kv-lsn': String(this.lsn), 'kv-session': session },
        )
      }
      if (url.startsWith('/v1/batch')) {
        if (node.id !== this.leaderId) return error(421, 'KV_ERR_NOT_LEADER', {})
        this.lsn++
        return send(200, {
          lsn: this.lsn,
          session: encodeSession({ epoch: this.epoch, lsn: this.lsn }),
          results: [],
        })
      }
      return error(404, 'KV_ERR_ROUTE_NOT_FOUND')
    })
  }
}
