/**
 * Sends this member's outbox to the leader, oldest first, and records what became of each
 * entry. One call at a time, so entries reach the leader in acceptance order (FIFO per
 * member); a call carries many entries (up to `forwardEntriesMax` and `forwardBytesMax`).
 *
 * On the leader the entries are applied in process; from a follower they go over HTTPS to the
 * leader's client port (POST /internal/v1/outbox/apply, protobuf), with this member's
 * certificate. The longest prefix of decided outcomes (applied or failed) is recorded; the
 * rest are sent again, with the same request ids, after a backoff: the leader's request-id
 * dedupe makes every forward apply once. While there is no leader, or it does not answer, the
 * forwarder waits and tries again; a call to a leader that is replaced meanwhile is abandoned.
 *
 * `unsafeApplyTwice` (the teeth switch) drops the request ids and sends every entry twice in
 * a row; the ticket keeps the first outcome.
 */
import { Agent, request } from 'undici'
import type { Logger } from 'pino'
import {
  KvError,
  decodeOutboxApplyReply,
  encodeOutboxApplyRequest,
  isErrorCode,
  type ErrorDetails,
  type OutboxEntry,
  type OutboxOutcome,
} from '@kvstore/protocol'
import type { Replicator } from '../cluster/replicator.js'
import type { TlsSource } from '../security/tls.js'
import type { Outbox } from './outbox.js'

export const outboxApplyPath = '/internal/v1/outbox/apply'

/** Most entries, and bytes of keys and values, in one forward call. */
export const forwardEntriesMax = 512
export const forwardBytesMax = 1024 * 1024
const backoffMinMs = 25
const backoffMaxMs = 1000
const responseBytesMax = 8 * 1024 * 1024

export interface ForwarderOptions {
  outbox: Outbox
  replicator: Replicator
  /** Applies entries on this node (when it leads). */
  applyLocal: (entries: readonly OutboxEntry[]) => Promise<OutboxOutcome[]>
  tls: TlsSource | null
  ackTimeoutMs: number
  unsafeApplyTwice: boolean
  logger: Logger
}

class ForwardError extends Error {}

export class Forwarder {
  private stopped = false
  private running: Promise<void> | null = null
  private readonly agent: Agent
  /** A leader URL named by a KV_ERR_NOT_LEADER answer, tried next. */
  private hint: string | null = null
  private backoffMs = 0
  private wake: (() => void) | null = null
  private inflight: AbortController | null = null
  private lastProblem = ''

  constructor(private readonly options: ForwarderOptions) {
    this.agent = new Agent({
      connections: 2,
      keepAliveTimeout: 10_000,
      connect:
        options.tls === null ? {} : { ...options.tls.contextOptions(), rejectUnauthorized: true },
    })
  }

  start(): void {
    this.running ??= this.loop()
  }

  /** Stops after the call in flight (abandoned if it takes long); entries stay in the outbox. */
  async stop(): Promise<void> {
    this.stopped = true
    this.wake?.()
    const abandon = setTimeout(() => this.inflight?.abort(), 1000)
    try {
      await this.running
    } finally {
      clearTimeout(abandon)
      await this.agent.close().catch(() => {})
    }
  }

  private async loop(): Promise<void> {
    const { outbox } = this.options
    while (!this.stopped) {
      const entries = outbox.peek(forwardEntriesMax, forwardBytesMax)
      if (entries.length === 0) {
        await outbox.whenPending(1000)
        continue
      }
      let decided = 0
      try {
        const outcomes = await this.forward(entries)
        while (decided < outcomes.length && (outcomes[decided] as OutboxOutcome).status !== 'retry')
          decided++
        if (decided < outcomes.length) {
          const first = outcomes[decided] as OutboxOutcome
          this.problem(
            `the leader did not decide: ${first.status === 'retry' ? first.error.message : ''}`,
          )
          outbox.figures.forwarded.retry += outcomes.length - decided
        }
        await outbox.record(outcomes.slice(0, decided))
      } catch (err) {
        if (this.stopped) break
        outbox.figures.forwarded.retry += entries.length
        this.problem((err as Error).message)
      }
      if (decided === entries.length) {
        this.backoffMs = 0
        this.lastProblem = ''
      } else {
        this.backoffMs = Math.min(backoffMaxMs, Math.max(backoffMinMs, this.backoffMs * 2))
        await this.sleep(this.backoffMs * (0.5 + Math.random() / 2))
      }
    }
  }

  /** Logs a reason the outbox does not drain, once until it changes. */
  private problem(message: string): void {
    if (message === this.lastProblem) return
    this.lastProblem = message
    this.options.logger.info(
      { outboxEntries: this.options.outbox.entries, reason: message },
      'outbox waits for the leader',
    )
  }

  private sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms)
      function done() {
        clearTimeout(timer)
        resolve()
      }
      this.wake = done
    }).then(() => {
      this.wake = null
    })
  }

  /** One call: the entries' outcomes, in order (one per entry). */
  private async forward(entries: OutboxEntry[]): Promise<OutboxOutcome[]> {
    const twice = this.options.unsafeApplyTwice
    const sent = twice
      ? entries.flatMap((e) => {
          const bare = { ...e, requestId: '' }
          return [bare, bare]
        })
      : entries
    const outcomes = this.options.replicator.isLeader
      ? await this.options.applyLocal(sent)
      : await this.call(sent)
    if (outcomes.length !== sent.length)
      throw new ForwardError(
        `the leader answered ${outcomes.length} outcomes for ${sent.length} entries`,
      )
    outcomes.forEach((o, i) => {
      if (o.seq !== (sent[i] as OutboxEntry).seq)
        throw new ForwardError(
          `the leader's outcome ${i} is for seq ${o.seq}, not ${(sent[i] as OutboxEntry).seq}`,
        )
    })
    // The first application's outcome is the ticket's (the second is what breaks it).
    return twice ? outcomes.filter((_, i) => i % 2 === 0) : outcomes
  }

  private async call(entries: OutboxEntry[]): Promise<OutboxOutcome[]> {
    const { replicator, outbox } = this.options
    const leader = replicator.leaderMember
    const url = this.hint ?? leader?.clientUrl
    this.hint = null
    if (url === undefined) throw new ForwardError('no leader is known')
    const controller = new AbortController()
    this.inflight = controller
    // Abandon the call when this member learns of another leader than the one called, or
    // takes over itself (a paused leader never answers; a deposed one answers NOT_LEADER late).
    const watch = setInterval(() => {
      const now = replicator.leaderMember
      if (replicator.isLeader || (now !== undefined && now.clientUrl !== url)) controller.abort()
    }, 100)
    const timeoutMs = this.options.ackTimeoutMs + 2000
    const timeout = setTimeout(() => controller.abort(), timeoutMs)
    try {
      const response = await request(`${url}${outboxApplyPath}`, {
        method: 'POST',
        dispatcher: this.agent,
        headers: { 'content-type': 'application/x-protobuf' },
        body: Buffer.from(encodeOutboxApplyRequest(outbox.nodeId, entries)),
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
        signal: controller.signal,
      })
      const chunks: Buffer[] = []
      let bytes = 0
      for await (const chunk of response.body) {
        bytes += (chunk as Buffer).length
        if (bytes > responseBytesMax) throw new ForwardError('the answer is too large')
        chunks.push(chunk as Buffer)
      }
      const body = Buffer.concat(chunks)
      if (response.statusCode === 200) return decodeOutboxApplyReply(body)
      let error: Record<string, unknown> = {}
      try {
        error =
          (JSON.parse(body.toString('utf8')) as { error?: Record<string, unknown> }).error ?? {}
      } catch {
        // not JSON: reported by status below
      }
      if (error.code === 'KV_ERR_NOT_LEADER' && typeof error.leaderUrl === 'string')
        this.hint = error.leaderUrl
      const { code, message, ...details } = error
      throw new KvError(
        isErrorCode(code) ? code : 'KV_ERR_INTERNAL',
        `${url} answered ${response.statusCode}: ${typeof message === 'string' ? message : ''}`,
        details as ErrorDetails,
      )
    } catch (err) {
      if (controller.signal.aborted)
        throw new ForwardError(
          `the call to ${url} was abandoned (leader changed or no answer in ${timeoutMs} ms)`,
        )
      throw err
    } finally {
      clearInterval(watch)
      clearTimeout(timeout)
      this.inflight = null
    }
  }
}
