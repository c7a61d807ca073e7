/**
 * Changes to the auth store: users, roles, grants, passwords, and turning auth on or off.
 *
 * Every change is a read-modify-write of one or two records under compare-and-set (the record's
 * version), retried a few times when another change got there first. Where it goes depends on
 * the mode (`AuthWriter`):
 * - single-leader: a batch through the leader's log, answered once a majority holds it (a
 *   follower refuses with KV_ERR_NOT_LEADER, admin or not);
 * - standalone: the node's own log;
 * - leaderless: this member's own state, then pushed to every member (see leaderless/auth-sync).
 */
import {
  KvError,
  authRecordKey,
  encodeAuthRecord,
  grantPrefixProblem,
  identityNamePattern,
  type Access,
  type AuthRecord,
  type AuthRole,
  type AuthStamp,
  type AuthUser,
} from '@kvstore/protocol'
import { randomBytes } from 'node:crypto'
import type { Sequencer, WriteOp } from '@kvstore/storage'
import type { Replicator } from '../cluster/replicator.js'
import { rootRole, rootUser, type AuthStore } from './auth-store.js'
import { checkPassword, hashPassword, type HashLimiter } from './passwords.js'

/** One record to write: a new version, or (single-leader) a deletion. */
export interface AuthWrite {
  record: AuthRecord
  /** Compare-and-set: the version read (0: the record must not exist). */
  expectVersion: number
}

export interface AuthWriter {
  /** A stamp for a change made now (leaderless last-writer-wins; informational otherwise). */
  stamp(): AuthStamp
  /** Writes the records as one atomic change; resolves once durable as the mode requires. */
  write(writes: AuthWrite[]): Promise<void>
}

/** Single-leader and standalone: through the log, like data. */
export function logAuthWriter(options: {
  sequencer: Sequencer
  replicator: Replicator | null
  nodeId: string
  ackTimeoutMs: number
  now: () => number
}): AuthWriter {
  return {
    stamp: () => ({ wallMs: options.now(), logical: 0, node: options.nodeId }),
    async write(writes) {
      options.replicator?.checkWritable()
      const ops: WriteOp[] = writes.map((w) =>
        w.record.deleted
          ? {
              type: 'delete',
              key: authRecordKey(w.record),
              ifVersion: w.expectVersion,
            }
          : {
              type: 'put',
              key: authRecordKey(w.record),
              value: encodeAuthRecord(w.record),
              ...(w.expectVersion === 0 ? { ifAbsent: true } : { ifVersion: w.expectVersion }),
            },
      )
      const result = await options.sequencer.write({ kind: 'batch', ops })
      // An auth change counts once a majority holds it: it then survives any failover.
      await options.replicator?.waitForAck(result.lsn, result.epoch, 'quorum', options.ackTimeoutMs)
    },
  }
}

export interface AuthLimits {
  authUsersMax: number
  authRolesMax: number
  authGrantsMax: number
}

export type Capability = 'admin' | 'monitor'
export type GrantKind = Access | Capability

const attemptsMax = 5

function checkName(value: unknown, what: 'user' | 'role'): string {
  if (typeof value !== 'string' || !identityNamePattern.test(value)) {
    throw new KvError(
      'KV_ERR_INVALID_ARGUMENT',
      `a ${what} name must be 1-64 letters, digits, '.', '_' or '-'; got ${JSON.stringify(value)}`,
    )
  }
  return value
}

function notFound(kind: 'user' | 'role', name: string): KvError {
  return kind === 'user'
    ? new KvError('KV_ERR_USER_NOT_FOUND', `user ${JSON.stringify(name)} does not exist`, {
        user: name,
      })
    : new KvError('KV_ERR_ROLE_NOT_FOUND', `role ${JSON.stringify(name)} does not exist`, {
        role: name,
      })
}

export class AuthAdmin {
  constructor(
    private readonly auth: AuthStore,
    private readonly writer: AuthWriter,
    private readonly limits: AuthLimits,
    private readonly hashLimiter: HashLimiter,
  ) {}

  /** Runs a read-modify-write, again if a concurrent change made its condition fail. */
  private async change(build: () => AuthWrite[]): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const writes = build()
      if (writes.length === 0) return
      try {
        await this.writer.write(writes)
        return
      } catch (err) {
        if (
          !(err instanceof KvError) ||
          err.code !== 'KV_ERR_PRECONDITION_FAILED' ||
          attempt >= attemptsMax
        )
          throw err
        await this.auth.settled()
      }
    }
  }

  private userEntry(name: string): { user: AuthUser; version: number } {
    const entry = this.auth.entry('user', name)
    if (entry === null || entry.record.deleted || entry.record.body.kind !== 'user')
      throw notFound('user', name)
    return { user: entry.record.body.user, version: entry.version }
  }

  private roleEntry(name: string): { role: AuthRole; version: number } {
    const entry = this.auth.entry('role', name)
    if (entry === null || entry.record.deleted || entry.record.body.kind !== 'role')
      throw notFound('role', name)
    return { role: entry.record.body.role, version: entry.version }
  }

  private userWrite(user: AuthUser, version: number, deleted = false): AuthWrite {
    return {
      record: { stamp: this.writer.stamp(), deleted, body: { kind: 'user', user } },
      expectVersion: version,
    }
  }

  private roleWrite(role: AuthRole, version: number, deleted = false): AuthWrite {
    return {
      record: { stamp: this.writer.stamp(), deleted, body: { kind: 'role', role } },
      expectVersion: version,
    }
  }

  /** The version to write a new record over: 0, or a deleted copy's (leaderless keeps those). */
  private freshVersion(kind: 'user' | 'role', name: string): number {
    const entry = this.auth.entry(kind, name)
    if (entry === null) return 0
    if (!entry.record.deleted) {
      throw kind === 'user'
        ? new KvError('KV_ERR_USER_EXISTS', `user ${JSON.stringify(name)} already exists`, {
            user: name,
          })
        : new KvError('KV_ERR_ROLE_EXISTS', `role ${JSON.stringify(name)} already exists`, {
            role: name,
          })
    }
    return entry.version
  }

  private checkRoles(roles: unknown): string[] {
    if (!Array.isArray(roles))
      throw new KvError('KV_ERR_MALFORMED_BODY', '"roles" must be a list of role names')
    const names = [...new Set(roles.map((r) => checkName(r, 'role')))]
    if (names.length > this.limits.authGrantsMax)
      throw this.limit(`a user holds at most ${this.limits.authGrantsMax} roles`)
    for (const name of names) if (this.auth.role(name) === null) throw notFound('role', name)
    return names
  }

  private limit(message: string): KvError {
    return new KvError('KV_ERR_AUTH_LIMIT', message)
  }

  async addUser(
    nameInput: unknown,
    password: unknown,
    rolesInput: unknown = [],
  ): Promise<AuthUser> {
    const name = checkName(nameInput, 'user')
    const hash =
      password === undefined || password === null
        ? ''
        : await hashPassword(checkPassword(password), this.hashLimiter)
    const roles = this.checkRoles(rolesInput)
    let made: AuthUser | null = null
    await this.change(() => {
      const version = this.freshVersion('user', name)
      if (this.auth.liveUsers().length >= this.limits.authUsersMax)
        throw this.limit(`the auth store holds at most ${this.limits.authUsersMax} users`)
      made = {
        name,
        passwordHash: hash,
        roles,
        generation: 1,
        id: randomBytes(12).toString('base64url'),
      }
      return [this.userWrite(made, version)]
    })
    return made as unknown as AuthUser
  }

  async deleteUser(nameInput: unknown): Promise<void> {
    const name = checkName(nameInput, 'user')
    await this.change(() => {
      const { user, version } = this.userEntry(name)
      if (name === rootUser && this.auth.enabled)
        throw new KvError(
          'KV_ERR_INVALID_ARGUMENT',
          'the root user cannot be deleted while auth is enabled (kv auth disable first)',
        )
      // A user re-created later under this name gets a new id, which no old token names.
      return [this.userWrite({ ...user, generation: user.generation + 1 }, version, true)]
    })
  }

  async setPassword(nameInput: unknown, password: unknown): Promise<void> {
    const name = checkName(nameInput, 'user')
    const hash = await hashPassword(checkPassword(password), this.hashLimiter)
    await this.change(() => {
      const { user, version } = this.userEntry(name)
      return [
        this.userWrite({ ...user, passwordHash: hash, generation: user.generation + 1 }, version),
      ]
    })
  }

  /** Every token of the user stops working (the generation goes up). */
  async revokeTokens(nameInput: unknown): Promise<number> {
    const name = checkName(nameInput, 'user')
    let generation = 0
    await this.change(() => {
      const { user, version } = this.userEntry(name)
      generation = user.generation + 1
      return [this.userWrite({ ...user, generation }, version)]
    })
    return generation
  }

  async grantRole(userInput: unknown, roleInput: unknown): Promise<AuthUser> {
    const name = checkName(userInput, 'user')
    const role = checkName(roleInput, 'role')
    let result: AuthUser | null = null
    await this.change(() => {
      const { user, version } = this.userEntry(name)
      if (this.auth.role(role) === null) throw notFound('role', role)
      if (user.roles.includes(role)) {
        result = user
        return []
      }
      if (user.roles.length >= this.limits.authGrantsMax)
        throw this.limit(`a user holds at most ${this.limits.authGrantsMax} roles`)
      result = { ...user, roles: [...user.roles, role] }
      return [this.userWrite(result, version)]
    })
    return result as unknown as AuthUser
  }

  /** Takes a role from a user; the user's tokens stop working too. */
  async revokeRole(userInput: unknown, roleInput: unknown): Promise<AuthUser> {
    const name = checkName(userInput, 'user')
    const role = checkName(roleInput, 'role')
    let result: AuthUser | null = null
    await this.change(() => {
      const { user, version } = this.userEntry(name)
      if (!user.roles.includes(role))
        throw new KvError('KV_ERR_INVALID_ARGUMENT', `user ${name} does not hold role ${role}`)
      if (name === rootUser && role === rootRole && this.auth.enabled)
        throw new KvError(
          'KV_ERR_INVALID_ARGUMENT',
          'root keeps the root role while auth is enabled',
        )
      result = {
        ...user,
        roles: user.roles.filter((r) => r !== role),
        generation: user.generation + 1,
      }
      return [this.userWrite(result, version)]
    })
    return result as unknown as AuthUser
  }

  async addRole(
    nameInput: unknown,
    options: { admin?: unknown; monitor?: unknown; rateLimitPerSecond?: unknown } = {},
  ): Promise<AuthRole> {
    const name = checkName(nameInput, 'role')
    const flag = (value: unknown, what: string): boolean => {
      if (value === undefined) return false
      if (typeof value !== 'boolean')
        throw new KvError('KV_ERR_MALFORMED_BODY', `"${what}" must be true or false`)
      return value
    }
    const rate = options.rateLimitPerSecond ?? 0
    if (typeof rate !== 'number' || !Number.isSafeInteger(rate) || rate < 0 || rate > 10_000_000)
      throw new KvError(
        'KV_ERR_MALFORMED_BODY',
        '"rateLimitPerSecond" must be a whole number from 0 to 10000000',
      )
    const role: AuthRole = {
      name,
      admin: flag(options.admin, 'admin'),
      monitor: flag(options.monitor, 'monitor'),
      grants: [],
      rateLimitPerSecond: rate,
    }
    await this.change(() => {
      const version = this.freshVersion('role', name)
      if (this.auth.liveRoles().length >= this.limits.authRolesMax)
        throw this.limit(`the auth store holds at most ${this.limits.authRolesMax} roles`)
      return [this.roleWrite(role, version)]
    })
    return role
  }

  async deleteRole(nameInput: unknown): Promise<void> {
    const name = checkName(nameInput, 'role')
    if (name === rootRole)
      throw new KvError('KV_ERR_INVALID_ARGUMENT', 'the root role cannot be deleted')
    await this.change(() => {
      const { role, version } = this.roleEntry(name)
      return [this.roleWrite(role, version, true)]
    })
  }

  private checkGrant(
    kindInput: unknown,
    prefixInput: unknown,
  ): { kind: GrantKind; prefix: string } {
    const kinds: GrantKind[] = ['read', 'write', 'readwrite', 'admin', 'monitor']
    if (typeof kindInput !== 'string' || !kinds.includes(kindInput as GrantKind))
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `access must be one of ${kinds.join(', ')}; got ${JSON.stringify(kindInput)}`,
      )
    const kind = kindInput as GrantKind
    if (kind === 'admin' || kind === 'monitor') {
      if (prefixInput !== undefined && prefixInput !== null)
        throw new KvError('KV_ERR_INVALID_ARGUMENT', `${kind} takes no prefix`)
      return { kind, prefix: '' }
    }
    if (typeof prefixInput !== 'string')
      throw new KvError('KV_ERR_INVALID_ARGUMENT', `${kind} needs a key prefix ("" for every key)`)
    const problem = grantPrefixProblem(prefixInput)
    if (problem !== null) throw new KvError('KV_ERR_INVALID_ARGUMENT', problem)
    return { kind, prefix: prefixInput }
  }

  async grant(roleInput: unknown, kindInput: unknown, prefixInput?: unknown): Promise<AuthRole> {
    const name = checkName(roleInput, 'role')
    const { kind, prefix } = this.checkGrant(kindInput, prefixInput)
    let result: AuthRole | null = null
    await this.change(() => {
      const { role, version } = this.roleEntry(name)
      let next: AuthRole
      if (kind === 'admin' || kind === 'monitor') {
        next = { ...role, [kind]: true }
      } else {
        const others = role.grants.filter((g) => g.prefix !== prefix)
        const existing = role.grants.find((g) => g.prefix === prefix)
        const merged: Access =
          existing === undefined || existing.access === kind ? kind : 'readwrite'
        if (others.length + 1 > this.limits.authGrantsMax)
          throw this.limit(`a role holds at most ${this.limits.authGrantsMax} grants`)
        next = { ...role, grants: [...others, { prefix, access: merged }] }
      }
      result = next
      return [this.roleWrite(next, version)]
    })
    return result as unknown as AuthRole
  }

  async revoke(roleInput: unknown, kindInput: unknown, prefixInput?: unknown): Promise<AuthRole> {
    const name = checkName(roleInput, 'role')
    const { kind, prefix } = this.checkGrant(kindInput, prefixInput)
    let result: AuthRole | null = null
    await this.change(() => {
      const { role, version } = this.roleEntry(name)
      if (name === rootRole && this.auth.enabled)
        throw new KvError(
          'KV_ERR_INVALID_ARGUMENT',
          'the root role keeps everything while auth is enabled',
        )
      let next: AuthRole
      if (kind === 'admin' || kind === 'monitor') {
        next = { ...role, [kind]: false }
      } else {
        const existing = role.grants.find((g) => g.prefix === prefix)
        if (existing === undefined)
          throw new KvError(
            'KV_ERR_INVALID_ARGUMENT',
            `role ${name} has no grant on prefix ${JSON.stringify(prefix)}`,
          )
        const left: Access | null =
          kind === 'readwrite' || existing.access === kind
            ? null
            : existing.access === 'readwrite'
              ? kind === 'read'
                ? 'write'
                : 'read'
              : existing.access
        next = {
          ...role,
          grants: role.grants
            .filter((g) => g.prefix !== prefix)
            .concat(left === null ? [] : [{ prefix, access: left }]),
        }
      }
      result = next
      return [this.roleWrite(next, version)]
    })
    return result as unknown as AuthRole
  }

  async setEnabled(enabled: boolean): Promise<void> {
    await this.change(() => {
      const entry = this.auth.settingsEntryStored
      const current = entry?.record.body.kind === 'settings' ? entry.record.body.settings : null
      if (current?.enabled === enabled) return []
      if (enabled && !this.auth.hasAdmin())
        throw new KvError(
          'KV_ERR_INVALID_ARGUMENT',
          'no user holds an admin role: add one first (kv user add root --roles root), or nobody could manage auth once it is on',
        )
      // Turning auth on again draws a new signing key, so no token from before still works.
      const settings = {
        enabled,
        tokenKey: enabled || current === null ? randomBytes(32) : current.tokenKey,
        tokenKeyId:
          enabled || current === null ? randomBytes(6).toString('base64url') : current.tokenKeyId,
      }
      return [
        {
          record: {
            stamp: this.writer.stamp(),
            deleted: false,
            body: { kind: 'settings', settings },
          },
          expectVersion: entry?.version ?? 0,
        },
      ]
    })
  }
}
