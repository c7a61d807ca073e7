/**
 * Calls from this group's leader to another group's leader (slot moves), over HTTPS on the
 * other group's client port, presenting this member's certificate: the other group admits a
 * member of the deployment's directory (`access: 'shard-peer'`) and nobody else.
 *
 * It finds the leader by trying the group's members and following KV_ERR_NOT_LEADER hints, and
 * remembers the last leader. Every call has a deadline and a bounded number of attempts.
 */
import { Agent, request } from 'undici'
import { KvError, type ErrorDetails, type ShardGroup } from '@kvstore/protocol'
import type { TlsSource } from '../security/tls.js'

/** A call failed without a coded answer (connection refused, reset, timed out). */
export class GroupUnreachableError extends Error {
  constructor(
    readonly group: string,
    message: string,
  ) {
    super(message)
    this.name = 'GroupUnreachableError'
  }
}

const responseBytesMax = 4 * 1024 * 1024

export class GroupClient {
  private readonly agent: Agent
  private readonly leaders = new Map<string, string>()

  constructor(
    private readonly groups: () => readonly ShardGroup[],
    tls: TlsSource | null,
    private readonly timeoutMs: number,
    /** What a group is called in messages ("region" for regions). */
    private readonly what = 'group',
    /** HTTP/2 (regions ship over it); HTTP/1.1 otherwise. */
    h2 = false,
  ) {
    this.agent = new Agent({
      connections: 4,
      keepAliveTimeout: 10_000,
      ...(h2 ? { allowH2: true } : {}),
      connect: tls === null ? {} : { ...tls.contextOptions(), rejectUnauthorized: true },
    })
  }

  /**
   * POSTs `body` as JSON to `path` on the leader of `group`; resolves with the JSON answer. Each
   * attempt gets `timeoutMs`: a member that does not answer in time (paused, cut off) is left
   * for the next one, so one silent member does not hold a move up for long.
   */
  async call<T>(
    group: string,
    path: string,
    body: unknown,
    timeoutMs = this.timeoutMs,
    /** Gives up at once when aborted (the caller is stopping). */
    stop?: AbortSignal,
  ): Promise<T> {
    const members = this.groups().find((g) => g.id === group)?.members ?? []
    if (members.length === 0)
      throw new GroupUnreachableError(group, `no ${this.what} ${group} in the directory`)
    const payload = Buffer.isBuffer(body) ? body : JSON.stringify(body)
    const contentType = Buffer.isBuffer(body) ? 'application/x-protobuf' : 'application/json'
    const tried = new Set<string>()
    const queue: string[] = []
    const known = this.leaders.get(group)
    if (known !== undefined) queue.push(known)
    for (const m of members) if (m.url !== known) queue.push(m.url)
    let last = 'no member answered'
    for (let attempt = 0; attempt < members.length * 2 + 2 && queue.length > 0; attempt++) {
      if (stop?.aborted === true) throw new GroupUnreachableError(group, 'the call was stopped')
      const url = queue.shift() as string
      if (tried.has(url)) continue
      tried.add(url)
      let status: number
      let text: string
      try {
        const response = await request(`${url}${path}`, {
          method: 'POST',
          dispatcher: this.agent,
          headers: { 'content-type': contentType },
          body: payload,
          headersTimeout: timeoutMs,
          bodyTimeout: timeoutMs,
          signal:
            stop === undefined
              ? AbortSignal.timeout(timeoutMs)
              : AbortSignal.any([AbortSignal.timeout(timeoutMs), stop]),
        })
        status = response.statusCode
        const chunks: Buffer[] = []
        let bytes = 0
        for await (const chunk of response.body) {
          bytes += (chunk as Buffer).length
          if (bytes > responseBytesMax) throw new Error('the answer is too large')
          chunks.push(chunk as Buffer)
        }
        text = Buffer.concat(chunks).toString('utf8')
      } catch (err) {
        last = `${url}: ${(err as Error).message}`
        if (this.leaders.get(group) === url) this.leaders.delete(group)
        continue
      }
      let parsed: unknown
      try {
        parsed = JSON.parse(text)
      } catch {
        last = `${url} answered ${status} with a body that is not JSON`
        continue
      }
      if (status >= 200 && status < 300) {
        this.leaders.set(group, url)
        return parsed as T
      }
      const error = (parsed as { error?: { code?: string; message?: string } }).error
      const code = error?.code ?? 'KV_ERR_INTERNAL'
      if (code === 'KV_ERR_NOT_LEADER') {
        // The leader's URL as the directory gives it (it may be a proxy or a NAT address):
        // the URL the member advertises is only a fallback for a member the directory lacks.
        const named = error as { leaderId?: string | null; leaderUrl?: string | null }
        const listed = members.find((m) => m.id === named.leaderId)?.url
        const hint = listed ?? named.leaderUrl
        if (typeof hint === 'string' && !tried.has(hint)) queue.unshift(hint)
        last = `${url} is not the leader of ${this.what} ${group}`
        continue
      }
      if (code === 'KV_ERR_NOT_READY' || code === 'KV_ERR_SHUTTING_DOWN') {
        last = `${url}: ${error?.message ?? code}`
        continue
      }
      const {
        code: _code,
        message: _message,
        ...details
      } = (error ?? {}) as Record<string, unknown>
      throw new KvError(
        code as ConstructorParameters<typeof KvError>[0],
        `${this.what} ${group}: ${error?.message ?? `status ${status}`}`,
        details as unknown as ErrorDetails,
      )
    }
    throw new GroupUnreachableError(group, `${this.what} ${group} did not answer: ${last}`)
  }

  /** Forgets the leaders it learned (the directory changed: its URLs win again). */
  forgetLeaders(): void {
    this.leaders.clear()
  }

  async close(): Promise<void> {
    await this.agent.close()
  }
}
