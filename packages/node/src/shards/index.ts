/** Sharding on a node: what its group owns, slot moves out of it, and imports into it. */
import type { Logger } from 'pino'
import type { Sequencer, Store } from '@kvstore/storage'
import type { Replicator } from '../cluster/replicator.js'
import type { NodeConfig } from '../config.js'
import type { TlsSource } from '../security/tls.js'
import { GroupClient } from './group-client.js'
import { ShardImporter } from './importer.js'
import { ShardMover } from './mover.js'
import { loadShardSetup, type ShardSetup, type ShardState } from './state.js'

export { ShardState, loadShardSetup, type ShardSetup } from './state.js'

export interface Shards {
  state: ShardState
  mover: ShardMover
  importer: ShardImporter
  client: GroupClient
  /** Member ids of every group: who may call the import routes. */
  peers: ReadonlySet<string>
  /**
   * SIGHUP: reads the shard map file's directory again (a new group, new URLs). The slots it
   * lists are not read: a group's own record says what it owns.
   */
  reloadDirectory(): void
  stop(): Promise<void>
}

export function startShards(options: {
  setup: ShardSetup
  state: ShardState
  store: Store
  sequencer: Sequencer
  replicator: Replicator
  config: NodeConfig
  tls: TlsSource | null
  logger: Logger
}): Shards {
  const { setup, state, store, sequencer, replicator, config, tls, logger } = options
  // Per attempt: a quorum write on the target (ackTimeoutMs) and some room. A call that deletes
  // what an earlier import left (begin, abandon) passes its own, longer timeout.
  const client = new GroupClient(() => state.groups, tls, config.ackTimeoutMs + 5000)
  const mover = new ShardMover(state, store, sequencer, replicator, client, config, logger)
  const importer = new ShardImporter(state, store, sequencer, replicator, config.ackTimeoutMs)
  mover.start()
  const peers = new Set(setup.groups.flatMap((g) => g.members.map((m) => m.id)))
  return {
    state,
    mover,
    importer,
    client,
    peers,
    reloadDirectory() {
      const file = config.shardMap as string
      // This group's members may have changed since the start (membership changes): only this
      // node must still be one of them.
      const next = loadShardSetup(file, setup.group, config.nodeId, null)
      state.groups = next.groups
      peers.clear()
      for (const g of next.groups) for (const m of g.members) peers.add(m.id)
      logger.info({ groups: next.groups.map((g) => g.id) }, 'shard map directory reloaded')
    },
    async stop() {
      await mover.stop()
      await client.close()
    },
  }
}
