/**
 * The auth store's records (proto/auth.proto) and where they live.
 *
 * Records sit in the applied state under reserved keys that start with U+0000:
 *
 *   \0auth/settings        whether auth is on, and the token signing key
 *   \0auth/user/<name>     a user: password hash, roles, generation
 *   \0auth/role/<name>     a role: admin, monitor, prefix grants, rate limit
 *
 * A client can never name such a key (keys may not hold control characters), and listing
 * skips them, so the records travel with the data (log, snapshots, digests) without ever being
 * served as data. Decoding validates every field.
 */
import { fileURLToPath } from 'node:url'
import protobuf from 'protobufjs'
import { DecodeError, EncodeError } from './codec.js'
import { identityNamePattern } from './identity.js'
import { formatVersion, limitsCeiling } from './limits.js'

const root = protobuf.loadSync(fileURLToPath(new URL('../proto/auth.proto', import.meta.url)))
const AuthRecordType = root.lookupType('kv.v1.AuthRecord')

/** The protobufjs reflection root of auth.proto, for schema tests. */
export const authSchemaRoot: protobuf.Root = root

/** Bounds a decoder enforces whatever the node's configuration says. */
export const authLimits = {
  passwordHashBytesMax: 512,
  rolesPerUserMax: 10_000,
  grantsPerRoleMax: 10_000,
  tokenKeyBytes: 32,
  tokenKeyIdBytesMax: 64,
  rateLimitPerSecondMax: 10_000_000,
} as const

export type Access = 'read' | 'write' | 'readwrite'
const accessNumbers: Record<Access, number> = { read: 1, write: 2, readwrite: 3 }
const accessNames = new Map<number, Access>([
  [1, 'read'],
  [2, 'write'],
  [3, 'readwrite'],
])

export interface AuthUser {
  name: string
  /** Empty: the user cannot log in with a password (a client certificate still works). */
  passwordHash: string
  roles: string[]
  generation: number
  /** Random, made when the user is created; tokens name it. */
  id: string
}

export interface AuthGrant {
  /** Keys starting with this; '' covers every key. */
  prefix: string
  access: Access
}

export interface AuthRole {
  name: string
  admin: boolean
  monitor: boolean
  grants: AuthGrant[]
  /** 0: no limit of its own. */
  rateLimitPerSecond: number
}

export interface AuthSettings {
  enabled: boolean
  tokenKey: Buffer
  tokenKeyId: string
}

/** When a record was written: a hybrid logical clock (wall ms, logical, member). */
export interface AuthStamp {
  wallMs: number
  logical: number
  node: string
}

export type AuthBody =
  | { kind: 'user'; user: AuthUser }
  | { kind: 'role'; role: AuthRole }
  | { kind: 'settings'; settings: AuthSettings }

export interface AuthRecord {
  stamp: AuthStamp
  /** A deleted user or role. */
  deleted: boolean
  body: AuthBody
}

/** True for a key in the reserved space (U+0000 first): never a client's key. */
export function isReservedKey(key: Uint8Array): boolean {
  return key.length > 0 && key[0] === 0x00
}

const authPrefixText = '\u0000auth/'
/** Every auth record's key starts with these bytes. */
export const authKeyPrefix: Buffer = Buffer.from(authPrefixText, 'utf8')

export function authSettingsKey(): Buffer {
  return Buffer.from(`${authPrefixText}settings`, 'utf8')
}

export function authUserKey(name: string): Buffer {
  return Buffer.from(`${authPrefixText}user/${name}`, 'utf8')
}

export function authRoleKey(name: string): Buffer {
  return Buffer.from(`${authPrefixText}role/${name}`, 'utf8')
}

/** The reserved key a record is stored under. */
export function authRecordKey(record: AuthRecord): Buffer {
  switch (record.body.kind) {
    case 'settings':
      return authSettingsKey()
    case 'user':
      return authUserKey(record.body.user.name)
    case 'role':
      return authRoleKey(record.body.role.name)
  }
}

/** What an auth key names, or null when the key is not one. */
export function parseAuthKey(
  key: Uint8Array,
): { kind: 'settings' } | { kind: 'user' | 'role'; name: string } | null {
  const text = Buffer.from(key.buffer, key.byteOffset, key.length).toString('utf8')
  if (!text.startsWith(authPrefixText)) return null
  const rest = text.slice(authPrefixText.length)
  if (rest === 'settings') return { kind: 'settings' }
  const match = /^(user|role)\/(.+)$/.exec(rest)
  if (match === null || !identityNamePattern.test(match[2] as string)) return null
  return { kind: match[1] as 'user' | 'role', name: match[2] as string }
}

/** A reason a grant prefix is not usable, or null. */
export function grantPrefixProblem(prefix: string): string | null {
  if (Buffer.byteLength(prefix) > limitsCeiling.keyBytesMax)
    return `the prefix is longer than ${limitsCeiling.keyBytesMax} bytes`
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(prefix)) return 'the prefix contains a control character'
  return null
}

function fail(reason: string): never {
  throw new DecodeError('auth record', reason)
}

function name(value: unknown, what: string): string {
  if (typeof value !== 'string' || !identityNamePattern.test(value))
    fail(`${what} ${JSON.stringify(value)} is not a valid name`)
  return value
}

function count(value: unknown, what: string, max = Number.MAX_SAFE_INTEGER): number {
  const n = value === undefined ? 0 : value
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0 || n > max)
    fail(`${what} is not a valid number`)
  return n
}

function list(value: unknown, what: string, max: number): unknown[] {
  if (value === undefined) return []
  if (!Array.isArray(value) || value.length > max) fail(`${what} is not a list of at most ${max}`)
  return value
}

function validateBody(body: AuthBody): void {
  switch (body.kind) {
    case 'user': {
      const u = body.user
      name(u.name, 'user name')
      if (
        typeof u.passwordHash !== 'string' ||
        u.passwordHash.length > authLimits.passwordHashBytesMax
      )
        fail('password hash is malformed')
      if (u.passwordHash !== '' && !u.passwordHash.startsWith('scrypt$'))
        fail('password hash is not an scrypt hash')
      list(u.roles, 'roles', authLimits.rolesPerUserMax).forEach((r) => name(r, 'role name'))
      if (new Set(u.roles).size !== u.roles.length) fail('roles repeat')
      count(u.generation, 'generation')
      if (typeof u.id !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(u.id))
        fail('user id is malformed')
      return
    }
    case 'role': {
      const r = body.role
      name(r.name, 'role name')
      if (typeof r.admin !== 'boolean' || typeof r.monitor !== 'boolean')
        fail('flags are malformed')
      for (const g of list(r.grants, 'grants', authLimits.grantsPerRoleMax) as AuthGrant[]) {
        if (typeof g.prefix !== 'string') fail('grant prefix is not text')
        const problem = grantPrefixProblem(g.prefix)
        if (problem !== null) fail(problem)
        if (!(g.access in accessNumbers)) fail(`grant access ${String(g.access)} is unknown`)
      }
      count(r.rateLimitPerSecond, 'rate limit', authLimits.rateLimitPerSecondMax)
      return
    }
    case 'settings': {
      const s = body.settings
      if (typeof s.enabled !== 'boolean') fail('enabled is not a boolean')
      if (!(s.tokenKey instanceof Uint8Array)) fail('token key is not bytes')
      if (s.tokenKey.length !== 0 && s.tokenKey.length !== authLimits.tokenKeyBytes)
        fail(`token key is ${s.tokenKey.length} bytes`)
      if (typeof s.tokenKeyId !== 'string' || s.tokenKeyId.length > authLimits.tokenKeyIdBytesMax)
        fail('token key id is malformed')
      return
    }
  }
}

function validateStamp(stamp: AuthStamp): void {
  count(stamp.wallMs, 'stamp wall clock')
  count(stamp.logical, 'stamp logical clock', 0xffffffff)
  if (
    typeof stamp.node !== 'string' ||
    (stamp.node !== '' && !identityNamePattern.test(stamp.node))
  )
    fail('stamp member is not a valid name')
}

/** Encodes a record; throws EncodeError when it breaks the format's rules (a caller's bug). */
export function encodeAuthRecord(record: AuthRecord): Buffer {
  try {
    validateStamp(record.stamp)
    validateBody(record.body)
  } catch (err) {
    throw new EncodeError('auth record', (err as Error).message)
  }
  const { body } = record
  const payload =
    body.kind === 'user'
      ? { user: body.user }
      : body.kind === 'role'
        ? {
            role: {
              ...body.role,
              grants: body.role.grants.map((g) => ({
                prefix: g.prefix,
                access: accessNumbers[g.access],
              })),
            },
          }
        : { settings: body.settings }
  const bytes = AuthRecordType.encode({
    format: formatVersion,
    wallMs: record.stamp.wallMs,
    logical: record.stamp.logical,
    clockNode: record.stamp.node,
    deleted: record.deleted,
    ...payload,
  }).finish()
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length)
}

/** Decodes and validates a record; throws DecodeError on anything malformed. */
export function decodeAuthRecord(bytes: Uint8Array): AuthRecord {
  let m: Record<string, unknown>
  try {
    m = AuthRecordType.toObject(AuthRecordType.decode(bytes), {
      defaults: true,
      arrays: true,
      bytes: Buffer,
      oneofs: true,
    }) as Record<string, unknown>
  } catch (err) {
    throw new DecodeError('auth record', (err as Error).message, { cause: err })
  }
  if (m.format !== formatVersion) fail(`format ${String(m.format)} is not ${formatVersion}`)
  const stamp: AuthStamp = {
    wallMs: m.wallMs as number,
    logical: m.logical as number,
    node: m.clockNode as string,
  }
  validateStamp(stamp)
  if (typeof m.deleted !== 'boolean') fail('deleted is not a boolean')
  let body: AuthBody
  switch (m.body) {
    case 'user': {
      const u = m.user as Record<string, unknown>
      body = {
        kind: 'user',
        user: {
          name: u.name as string,
          passwordHash: u.passwordHash as string,
          roles: u.roles as string[],
          generation: u.generation as number,
          id: u.id as string,
        },
      }
      break
    }
    case 'role': {
      const r = m.role as Record<string, unknown>
      body = {
        kind: 'role',
        role: {
          name: r.name as string,
          admin: r.admin as boolean,
          monitor: r.monitor as boolean,
          grants: list(r.grants, 'grants', authLimits.grantsPerRoleMax).map((g) => {
            const grant = g as { prefix: unknown; access: unknown }
            const access = accessNames.get(grant.access as number)
            if (access === undefined) fail(`grant access ${String(grant.access)} is unknown`)
            return { prefix: grant.prefix as string, access }
          }),
          rateLimitPerSecond: r.rateLimitPerSecond as number,
        },
      }
      break
    }
    case 'settings': {
      const s = m.settings as Record<string, unknown>
      body = {
        kind: 'settings',
        settings: {
          enabled: s.enabled as boolean,
          tokenKey: s.tokenKey as Buffer,
          tokenKeyId: s.tokenKeyId as string,
        },
      }
      break
    }
    default:
      fail('record has no body')
  }
  validateBody(body)
  return { stamp, deleted: m.deleted, body }
}

/**
 * Orders two versions of one record for last-writer-wins: by wall clock, then logical
 * counter, then member id. Positive when `a` wins.
 */
export function compareAuthStamps(a: AuthStamp, b: AuthStamp): number {
  if (a.wallMs !== b.wallMs) return a.wallMs - b.wallMs
  if (a.logical !== b.logical) return a.logical - b.logical
  return a.node < b.node ? -1 : a.node > b.node ? 1 : 0
}
