/**
 * The auth store as this node sees it: users, roles and settings, kept in memory and exactly
 * in step with the applied state. Records live under reserved keys (protocol/auth.ts); storage
 * tells this module synchronously which of them a batch changed, and after a truncation or a
 * snapshot install everything is read again. So a revocation applied on this node is enforced
 * by the next request it serves.
 */
import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import {
  authKeyPrefix,
  compareAuthStamps,
  decodeAuthRecord,
  parseAuthKey,
  type AuthRecord,
  type AuthRole,
  type AuthSettings,
  type AuthStamp,
  type AuthUser,
  type StoredRecord,
} from '@kvstore/protocol'
import { compilePermissions, type Permissions } from '@kvstore/core'
import type { Store } from '@kvstore/storage'
import { createHash } from 'node:crypto'

/** A record as stored, with the version (LSN) that wrote it, for compare-and-set. */
export interface StoredAuthRecord {
  record: AuthRecord
  version: number
}

/** The built-in role that may do everything. */
export const rootRole = 'root'
/** The built-in user created with a new cluster. */
export const rootUser = 'root'
/** The built-in role for scraping /metrics and /v1/status. */
export const monitorRole = 'monitor'

export class AuthStore {
  private settingsEntry: StoredAuthRecord | null = null
  private readonly users = new Map<string, StoredAuthRecord>()
  private readonly roles = new Map<string, StoredAuthRecord>()
  private readonly permissionCache = new Map<string, Permissions>()
  private reloading: Promise<void> | null = null
  private readonly listeners: (() => void)[] = []
  /** Raised on every change; lets callers tell whether what they read is still current. */
  version = 0

  constructor(
    private readonly store: Store,
    private readonly log: Logger,
  ) {}

  /** Reads every record, then follows the store's changes. */
  async start(): Promise<void> {
    await this.load()
    this.store.watchReserved((keys) => {
      if (keys === 'all') {
        void this.reload()
        return
      }
      for (const key of keys) this.applyStored(key, this.store.getSync(key))
      this.changed()
    })
  }

  /** Calls `listener` after every change. */
  onChange(listener: () => void): void {
    this.listeners.push(listener)
  }

  private changed(): void {
    this.version++
    this.permissionCache.clear()
    for (const listener of this.listeners) listener()
  }

  private async load(): Promise<void> {
    this.settingsEntry = null
    this.users.clear()
    this.roles.clear()
    let after: Buffer | undefined
    for (;;) {
      const page = await this.store.list({
        prefix: authKeyPrefix,
        limit: 1000,
        bytesMax: 16 * 1024 * 1024,
        ...(after ? { after } : {}),
      })
      for (const item of page.items) this.applyStored(item.key, item.record)
      const last = page.items[page.items.length - 1]
      if (!page.more || last === undefined) break
      after = last.key
    }
  }

  private reload(): Promise<void> {
    this.reloading ??= this.load()
      .then(() => this.changed())
      .catch((err: unknown) => this.log.error({ err }, 'reading the auth store failed'))
      .finally(() => {
        this.reloading = null
      })
    return this.reloading
  }

  /** Waits for a reload in progress (after a truncation or a snapshot install). */
  async settled(): Promise<void> {
    await this.reloading
  }

  private applyStored(key: Uint8Array, stored: StoredRecord | null): void {
    const what = parseAuthKey(key)
    if (what === null) return
    if (stored === null || stored.tombstone) {
      if (what.kind === 'settings') this.settingsEntry = null
      else (what.kind === 'user' ? this.users : this.roles).delete(what.name)
      return
    }
    // A record read back from storage is checked, never trusted: a corrupt one stops the node.
    const record = decodeAuthRecord(stored.value)
    const entry = { record, version: stored.version }
    if (record.body.kind === 'settings' && what.kind === 'settings') this.settingsEntry = entry
    else if (
      record.body.kind === 'user' &&
      what.kind === 'user' &&
      record.body.user.name === what.name
    )
      this.users.set(what.name, entry)
    else if (
      record.body.kind === 'role' &&
      what.kind === 'role' &&
      record.body.role.name === what.name
    )
      this.roles.set(what.name, entry)
    else throw new Error(`auth record under ${what.kind} key does not match it`)
  }

  get settings(): AuthSettings | null {
    const body = this.settingsEntry?.record.body
    return body?.kind === 'settings' ? body.settings : null
  }

  get settingsEntryStored(): StoredAuthRecord | null {
    return this.settingsEntry
  }

  /**
   * Set on a node that will create a new cluster with auth on: until the cluster's first entry
   * is applied (it carries the auth store), requests are refused as if auth were on already,
   * so there is no moment when a new cluster is open.
   */
  awaitingBootstrap = false

  /** True when requests must carry a credential. */
  get enabled(): boolean {
    const settings = this.settings
    if (settings !== null) return settings.enabled
    return this.awaitingBootstrap && this.store.appliedLsn === 0
  }

  /** A live user (not deleted). */
  user(name: string): AuthUser | null {
    const entry = this.users.get(name)
    if (entry === undefined || entry.record.deleted || entry.record.body.kind !== 'user')
      return null
    return entry.record.body.user
  }

  role(name: string): AuthRole | null {
    const entry = this.roles.get(name)
    if (entry === undefined || entry.record.deleted || entry.record.body.kind !== 'role')
      return null
    return entry.record.body.role
  }

  /** The stored entry of a user or role, deleted ones included (compare-and-set, merges). */
  entry(kind: 'user' | 'role', name: string): StoredAuthRecord | null {
    return (kind === 'user' ? this.users : this.roles).get(name) ?? null
  }

  liveUsers(): AuthUser[] {
    return [...this.users.keys()]
      .sort()
      .map((name) => this.user(name))
      .filter((u): u is AuthUser => u !== null)
  }

  liveRoles(): AuthRole[] {
    return [...this.roles.keys()]
      .sort()
      .map((name) => this.role(name))
      .filter((r): r is AuthRole => r !== null)
  }

  /** Every record, deleted ones included (leaderless exchange). */
  allRecords(): AuthRecord[] {
    const out: AuthRecord[] = []
    if (this.settingsEntry) out.push(this.settingsEntry.record)
    for (const e of this.users.values()) out.push(e.record)
    for (const e of this.roles.values()) out.push(e.record)
    return out
  }

  /** A hash of every record and its stamp (leaderless members compare it). */
  digest(): string {
    const hash = createHash('sha256')
    const lines = this.allRecords().map((r) => {
      const s = r.stamp
      const name =
        r.body.kind === 'user' ? r.body.user.name : r.body.kind === 'role' ? r.body.role.name : ''
      return `${r.body.kind}/${name}/${s.wallMs}.${s.logical}.${s.node}/${r.deleted ? 1 : 0}`
    })
    for (const line of lines.sort()) hash.update(line).update('\n')
    return hash.digest('base64url')
  }

  /** True when `incoming` should replace what this node holds (last writer wins). */
  newer(incoming: AuthRecord): boolean {
    const current =
      incoming.body.kind === 'settings'
        ? this.settingsEntry
        : this.entry(
            incoming.body.kind,
            incoming.body.kind === 'user' ? incoming.body.user.name : incoming.body.role.name,
          )
    return current === null || compareAuthStamps(incoming.stamp, current.record.stamp) > 0
  }

  /** The compiled permissions of a live user (cached until the next change). */
  permissions(name: string): Permissions | null {
    const user = this.user(name)
    if (user === null) return null
    let permissions = this.permissionCache.get(name)
    if (permissions === undefined) {
      permissions = compilePermissions(user.roles.map((r) => this.role(r) ?? undefined))
      this.permissionCache.set(name, permissions)
    }
    return permissions
  }

  /** True when some live user holds an admin role (auth may be turned on without lock-out). */
  hasAdmin(): boolean {
    return this.liveUsers().some((u) => this.permissions(u.name)?.admin === true)
  }
}

/** The records a new cluster starts with: auth on, root and monitor roles, a root user. */
export function bootstrapRecords(options: {
  enabled: boolean
  rootPasswordHash: string
  stamp: AuthStamp
  /** The token signing key and the root user's id; random unless given. */
  tokenKey?: Buffer
  rootUserId?: string
}): AuthRecord[] {
  const { stamp } = options
  return [
    {
      stamp,
      deleted: false,
      body: {
        kind: 'settings',
        settings: {
          enabled: options.enabled,
          tokenKey: options.tokenKey ?? randomBytes(32),
          tokenKeyId:
            options.tokenKey === undefined
              ? randomBytes(6).toString('base64url')
              : // Named by a hash of the key: the id travels in every token's header.
                createHash('sha256')
                  .update(options.tokenKey)
                  .digest()
                  .subarray(0, 6)
                  .toString('base64url'),
        },
      },
    },
    {
      stamp,
      deleted: false,
      body: {
        kind: 'role',
        role: {
          name: rootRole,
          admin: true,
          monitor: true,
          grants: [{ prefix: '', access: 'readwrite' }],
          rateLimitPerSecond: 0,
        },
      },
    },
    {
      stamp,
      deleted: false,
      body: {
        kind: 'role',
        role: { name: monitorRole, admin: false, monitor: true, grants: [], rateLimitPerSecond: 0 },
      },
    },
    {
      stamp,
      deleted: false,
      body: {
        kind: 'user',
        user: {
          name: rootUser,
          passwordHash: options.rootPasswordHash,
          roles: [rootRole],
          generation: 1,
          id: options.rootUserId ?? randomBytes(12).toString('base64url'),
        },
      },
    },
  ]
}
