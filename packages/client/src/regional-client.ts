/**
 * A client of a multi-region deployment: one `KvClient` per region, and home-region routing.
 *
 * Each region is a single-leader cluster of its own, with its own leader, log, LSNs and session
 * tokens, so each gets a `KvClient` of its own (its view, failover and session are the region's).
 * A key's home region is the region of the longest `homeRegionByPrefix` prefix it starts with,
 * else `homeRegion`. Writes (put, delete, batch, and their queued forms) go to the key's home
 * region, and so do reads by default: with the region's session, a client reads its own writes.
 * Every region converges to the same state (last writer by stamp wins; the losers are kept in
 * the conflict record), but nothing is atomic or conditional across regions: a batch whose keys
 * have different home regions is refused, and conditions hold in the home region only.
 */
import { KvError } from '@kvstore/protocol/errors'
import {
  KvClient,
  type BatchOp,
  type BatchResult,
  type DeleteResult,
  type GetResult,
  type KvClientOptions,
  type ListItem,
  type ListOptions,
  type ListPage,
  type PutResult,
  type QueuedResult,
  type QueuedWriteOptions,
  type ReadOptions,
  type TicketResult,
  type WriteConditions,
  type WriteOptions,
} from './client.js'
import {
  HomeRegions,
  checkRegionUrls,
  type RegionConflict,
  type RegionConflictsOptions,
  type RegionConflictsPage,
  type RegionDigest,
  type RegionsView,
} from './regions.js'

export interface RegionalClientOptions extends Omit<KvClientOptions, 'url'> {
  /**
   * The regions this client may use, each with one or more of its members' client URLs (the
   * seeds of that region's `KvClient`), e.g. `{ us: ['https://us1:7001'], eu: ['https://eu1:7001'] }`.
   */
  regions: Record<string, string | string[]>
  /** The home region of every key that no `homeRegionByPrefix` prefix names. */
  homeRegion: string
  /** Per key prefix, its home region: the longest prefix a key starts with wins. */
  homeRegionByPrefix?: Record<string, string>
  /**
   * Before a region's first request, check that its URLs reach nodes of that region (their
   * `GET /v1/cluster` names it), and refuse with `KV_ERR_INVALID_ARGUMENT` otherwise. Default true.
   */
  checkRegions?: boolean
}

/** Options of a read: those of `KvClient`, and the region to read from. */
export interface RegionalReadOptions extends ReadOptions {
  /**
   * Read from this region instead of the key's home region: a nearer copy, which has the home
   * region's writes once they are shipped (no read-your-writes for writes made elsewhere).
   */
  region?: string
}

/** Options of `list`: the region defaults to the home region of `prefix` (or `homeRegion`). */
export interface RegionalListOptions extends ListOptions {
  region?: string
}

/** Conflict calls name the region to ask (default: `homeRegion`). */
export interface RegionalConflictsOptions extends RegionConflictsOptions {
  region?: string
}

/** Node ids remembered per region for tickets, at most. */
const ticketNodesMax = 1024

/** A client of a multi-region deployment. Reuse one; `close()` when done. */
export class RegionalClient {
  private readonly clients = new Map<string, KvClient>()
  private readonly homes: HomeRegions
  private readonly checkRegions: boolean
  /** Per region, the check that its URLs reach it (or its failure). */
  private readonly checked = new Map<string, Promise<void>>()
  /** The region of a member that took a queued write (the ticket's first part). */
  private readonly nodeRegions = new Map<string, string>()

  /** Creates a client; it connects lazily, on the first request to each region. */
  constructor(options: RegionalClientOptions) {
    const { regions, homeRegion, homeRegionByPrefix, checkRegions, ...common } = options
    const urls = checkRegionUrls(regions)
    this.homes = new HomeRegions([...urls.keys()], homeRegion, homeRegionByPrefix ?? {})
    this.checkRegions = checkRegions ?? true
    for (const [id, list] of urls) this.clients.set(id, new KvClient({ ...common, url: list }))
  }

  /** The regions this client may use. */
  get regionIds(): string[] {
    return [...this.clients.keys()]
  }

  /** The region that takes `key`'s writes (and, by default, its reads). */
  homeOf(key: string): string {
    return this.homes.of(key)
  }

  /**
   * The `KvClient` of one region, for anything this client does not route: its own session,
   * cluster view, admin calls. Throws `KV_ERR_INVALID_ARGUMENT` for a region not given.
   */
  region(id: string): KvClient {
    const client = this.clients.get(id)
    if (client === undefined)
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `region ${JSON.stringify(id)} is not one of this client's regions (${this.regionIds.join(', ')})`,
        { region: id },
      )
    return client
  }

  /**
   * Each region's session token (null before its first write or read): read-your-writes holds
   * within a region, so a token is a position in that region's log only.
   */
  get sessions(): Record<string, string | null> {
    return Object.fromEntries([...this.clients].map(([id, c]) => [id, c.session]))
  }

  /** Continues a session of `region` that another client started (see `KvClient.useSession`). */
  useSession(region: string, token: string): void {
    this.region(region).useSession(token)
  }

  /** Reads a key from its home region (or `options.region`); null when it does not exist. */
  async get(key: string, options: RegionalReadOptions = {}): Promise<GetResult | null> {
    const { region, ...rest } = options
    return (await this.routed(region ?? this.homeOf(key))).get(key, rest)
  }

  /** Writes a key in its home region (see `KvClient.put`); the answer carries its `stamp`. */
  async put(
    key: string,
    value: string | Uint8Array,
    options: WriteOptions = {},
  ): Promise<PutResult> {
    return (await this.routed(this.homeOf(key))).put(key, value, options)
  }

  /** Deletes a key in its home region (a tombstone that every region applies). */
  async delete(key: string, options: Omit<WriteOptions, 'ifAbsent'> = {}): Promise<DeleteResult> {
    return (await this.routed(this.homeOf(key))).delete(key, options)
  }

  /**
   * Applies puts and deletes atomically in the home region of their keys. The keys must share
   * one home region: a batch spanning regions is refused with `KV_ERR_CROSS_REGION`
   * (`details.regions`, `details.keys`: one key per region) before anything is sent, since no
   * write is atomic across regions.
   */
  async batch(
    ops: BatchOp[],
    options: Omit<WriteOptions, keyof WriteConditions> = {},
  ): Promise<BatchResult> {
    return (await this.routed(this.batchRegion(ops))).batch(ops, options)
  }

  /** One page of keys from the home region of `prefix` (or `options.region`). */
  async list(options: RegionalListOptions = {}): Promise<ListPage> {
    const { region, ...rest } = options
    return (await this.routed(region ?? this.homeOf(options.prefix ?? ''))).list(rest)
  }

  /** Every key matching `options`, page by page, from one region (as `list`). */
  async *listAll(options: Omit<RegionalListOptions, 'cursor'> = {}): AsyncGenerator<ListItem> {
    const { region, ...rest } = options
    yield* (await this.routed(region ?? this.homeOf(options.prefix ?? ''))).listAll(rest)
  }

  /** Queues a put on a member of the key's home region (see `KvClient.putQueued`). */
  async putQueued(
    key: string,
    value: string | Uint8Array,
    options: QueuedWriteOptions = {},
  ): Promise<QueuedResult> {
    const region = this.homeOf(key)
    return this.learnTicket(
      region,
      await (await this.routed(region)).putQueued(key, value, options),
    )
  }

  /** Queues a delete on a member of the key's home region. */
  async deleteQueued(
    key: string,
    options: Omit<QueuedWriteOptions, 'ifAbsent'> = {},
  ): Promise<QueuedResult> {
    const region = this.homeOf(key)
    return this.learnTicket(region, await (await this.routed(region)).deleteQueued(key, options))
  }

  /** Queues a batch in the home region of its keys, which must share one (as `batch`). */
  async batchQueued(
    ops: BatchOp[],
    options: Omit<QueuedWriteOptions, keyof WriteConditions> = {},
  ): Promise<QueuedResult> {
    const region = this.batchRegion(ops)
    return this.learnTicket(region, await (await this.routed(region)).batchQueued(ops, options))
  }

  /** What became of a queued write, asked in the region of the member that holds the ticket. */
  async ticket(ticket: string): Promise<TicketResult> {
    return (await this.ticketClient(ticket)).ticket(ticket)
  }

  /** Polls a ticket until it is applied or failed (see `KvClient.waitTicket`). */
  async waitTicket(
    ticket: string,
    options: { timeoutMs?: number; intervalMs?: number } = {},
  ): Promise<TicketResult> {
    return (await this.ticketClient(ticket)).waitTicket(ticket, options)
  }

  /** A region as its leader sees it (default: `homeRegion`); see `KvClient.regions`. */
  regions(options: { region?: string; url?: string } = {}): Promise<RegionsView> {
    const { region, ...rest } = options
    return this.region(region ?? this.homes.home).regions(rest)
  }

  /** One page of a region's conflict record (default: `homeRegion`'s); admin role. */
  conflicts(options: RegionalConflictsOptions = {}): Promise<RegionConflictsPage> {
    const { region, ...rest } = options
    return this.region(region ?? this.homes.home).conflicts(rest)
  }

  /** Every record of a region's conflict record, page by page. */
  conflictsAll(
    options: Omit<RegionalConflictsOptions, 'after'> & { after?: string } = {},
  ): AsyncGenerator<RegionConflict> {
    const { region, ...rest } = options
    return this.region(region ?? this.homes.home).conflictsAll(rest)
  }

  /** A node's digest of the live user keys (default: a node of `homeRegion`); admin role. */
  regionDigest(options: { region?: string; url?: string } = {}): Promise<RegionDigest> {
    return this.region(options.region ?? this.homes.home).regionDigest(options.url)
  }

  /** Closes every region's connections. */
  async close(): Promise<void> {
    await Promise.all([...this.clients.values()].map((c) => c.close()))
  }

  // ---------------------------------------------------------------- routing

  /** The one home region of a batch's keys; refuses a batch that spans regions. */
  private batchRegion(ops: BatchOp[]): string {
    const byRegion = new Map<string, string>()
    for (const op of ops) {
      const region = this.homeOf(op.key)
      if (!byRegion.has(region)) byRegion.set(region, op.key)
    }
    if (byRegion.size > 1)
      throw new KvError(
        'KV_ERR_CROSS_REGION',
        `the batch writes keys of ${byRegion.size} home regions (${[...byRegion].map(([r, k]) => `${JSON.stringify(k)} in ${r}`).join(', ')}); a batch is atomic within one region only: split it by home region`,
        { regions: [...byRegion.keys()], keys: [...byRegion.values()] },
      )
    return byRegion.keys().next().value ?? this.homes.home
  }

  /** The client of `region`, once its URLs were found to reach it. */
  private async routed(region: string): Promise<KvClient> {
    const client = this.region(region)
    if (!this.checkRegions) return client
    let check = this.checked.get(region)
    if (check === undefined) {
      check = this.checkRegion(region, client)
      this.checked.set(region, check)
      // A check that could not be made (no node answered) is made again next time; a refusal stays.
      check.catch((err: unknown) => {
        if (!(err instanceof KvError) || err.code !== 'KV_ERR_INVALID_ARGUMENT')
          this.checked.delete(region)
      })
    }
    try {
      await check
    } catch (err) {
      // No node answered: the request itself finds out, with the client's retries.
      if (err instanceof KvError && err.code === 'KV_ERR_INVALID_ARGUMENT') throw err
    }
    return client
  }

  private async checkRegion(region: string, client: KvClient): Promise<void> {
    let view
    try {
      view = await client.cluster()
    } catch (err) {
      if (err instanceof KvError && err.code === 'KV_ERR_UNSUPPORTED_IN_MODE')
        throw new KvError(
          'KV_ERR_INVALID_ARGUMENT',
          `the URLs given for region ${region} reach a leaderless cluster, not a region`,
          { region },
        )
      throw err
    }
    const actual = view.regions?.region
    if (actual !== region)
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        actual === undefined
          ? `the URLs given for region ${region} reach a cluster that is in no region (its nodes run without --region)`
          : `the URLs given for region ${region} reach region ${actual}`,
        { region, ...(actual !== undefined ? { actual } : {}) },
      )
    for (const r of view.regions?.regions ?? [])
      for (const m of r.members) this.rememberNode(m.id, r.id)
  }

  private rememberNode(node: string, region: string): void {
    if (!this.nodeRegions.has(node) && this.nodeRegions.size >= ticketNodesMax) return
    this.nodeRegions.set(node, region)
  }

  private learnTicket(region: string, result: QueuedResult): QueuedResult {
    this.rememberNode(result.node, region)
    return result
  }

  /**
   * The client of the region whose member holds `ticket` (`<node>.<seq>`): known from the
   * queued write or a region's view, else learnt from the home region's regions view.
   */
  private async ticketClient(ticket: string): Promise<KvClient> {
    const node = ticket.slice(0, Math.max(0, ticket.lastIndexOf('.')))
    let region = this.nodeRegions.get(node)
    if (region === undefined) {
      const view = await this.region(this.homes.home).regions()
      for (const r of view.regions) for (const m of r.members) this.rememberNode(m.id, r.id)
      region = this.nodeRegions.get(node)
    }
    if (region === undefined || !this.clients.has(region))
      throw new KvError(
        'KV_ERR_TICKET_NOT_FOUND',
        `ticket ${ticket} names member ${JSON.stringify(node)}, which is in none of this client's regions (${this.regionIds.join(', ')})`,
        { node },
      )
    return this.routed(region)
  }
}
