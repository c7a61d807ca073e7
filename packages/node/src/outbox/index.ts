/**
 * Queued writes (`ack=queued`) on a single-leader member: the outbox (outbox.ts), the
 * forwarder that drains it to the leader (forwarder.ts), the leader's side (apply.ts) and the
 * routes (routes.ts). `startOutbox` wires them; the node stops them before replication.
 */
import type { Logger } from 'pino'
import type { OutboxEntry, OutboxOutcome } from '@kvstore/protocol'
import type { Sequencer, Store } from '@kvstore/storage'
import type { Replicator } from '../cluster/replicator.js'
import type { NodeConfig } from '../config.js'
import { isInvariantError } from '../http/errors.js'
import type { AuthStore } from '../security/auth-store.js'
import type { TlsSource } from '../security/tls.js'
import { applyEntries } from './apply.js'
import { Forwarder } from './forwarder.js'
import { Outbox } from './outbox.js'

export { Outbox } from './outbox.js'

export interface OutboxService {
  outbox: Outbox
  /** The leader's side: applies entries forwarded by a member (or by this one). */
  apply: (entries: readonly OutboxEntry[]) => Promise<OutboxOutcome[]>
  stop: () => Promise<void>
}

export async function startOutbox(options: {
  config: NodeConfig
  store: Store
  sequencer: Sequencer
  replicator: Replicator
  auth: AuthStore
  tls: TlsSource | null
  logger: Logger
  onFatal: (err: Error) => void
}): Promise<OutboxService> {
  const { config, store, replicator, logger } = options
  const outbox = await Outbox.open(store, config.nodeId, config)
  const apply = (entries: readonly OutboxEntry[]) =>
    applyEntries(
      {
        store,
        sequencer: options.sequencer,
        replicator,
        auth: options.auth,
        ackTimeoutMs: config.ackTimeoutMs,
        onFatal: options.onFatal,
        isInvariantError,
      },
      entries,
    )
  const forwarder = new Forwarder({
    outbox,
    replicator,
    applyLocal: apply,
    tls: options.tls,
    ackTimeoutMs: config.ackTimeoutMs,
    unsafeApplyTwice: config.unsafeOutboxApplyTwice,
    logger,
  })
  if (outbox.entries > 0)
    logger.info({ outboxEntries: outbox.entries }, 'outbox holds queued writes; forwarding them')
  forwarder.start()
  let sweeping: Promise<unknown> = Promise.resolve()
  const sweep = setInterval(
    () => {
      sweeping = outbox.sweep().catch((err: unknown) => {
        logger.warn({ err }, 'ticket sweep failed; the next one tries again')
      })
    },
    Math.min(10_000, Math.max(250, Math.floor(config.ticketRetentionMs / 4))),
  )
  sweep.unref()
  return {
    outbox,
    apply,
    async stop() {
      clearInterval(sweep)
      await forwarder.stop()
      await sweeping
      await outbox.settled()
    },
  }
}
