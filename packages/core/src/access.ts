/**
 * Who may do what: the pure part of authorization. A user's roles are compiled once into a
 * `Permissions` value (recompiled whenever the auth store changes); each request then checks
 * it against the key, prefix or capability it needs. No I/O, no clock.
 *
 * - `read` on a prefix allows GET and HEAD of every key that starts with it, and listing any
 *   prefix that starts with it (a list never reaches a key outside the caller's grants).
 * - `write` on a prefix allows PUT and DELETE of those keys; a batch needs it for every op.
 * - `readwrite` is both.
 * - `admin` covers /admin/v1/*, users and roles, and everything `monitor` does.
 * - `monitor` covers /metrics, /v1/status and /v1/digest: scraping without data access.
 */

export type AccessKind = 'read' | 'write' | 'readwrite'

export interface RoleGrants {
  admin: boolean
  monitor: boolean
  grants: readonly { prefix: string; access: AccessKind }[]
  /** Requests a second on one node; 0: the role sets no limit. */
  rateLimitPerSecond: number
}

export interface Permissions {
  admin: boolean
  monitor: boolean
  /** Prefixes the user may read, shortest first, without prefixes another one covers. */
  read: string[]
  write: string[]
  /** The tightest rate limit among the user's roles; 0 when none sets one. */
  rateLimitPerSecond: number
}

/** Drops every prefix that a shorter one in the list already covers; sorts the rest. */
function minimalPrefixes(prefixes: string[]): string[] {
  const sorted = [...new Set(prefixes)].sort((a, b) => a.length - b.length || (a < b ? -1 : 1))
  const kept: string[] = []
  for (const prefix of sorted) {
    if (!kept.some((k) => prefix.startsWith(k))) kept.push(prefix)
  }
  return kept
}

/** The permissions of a user holding `roles` (unknown role names grant nothing). */
export function compilePermissions(roles: readonly (RoleGrants | undefined)[]): Permissions {
  let admin = false
  let monitor = false
  let rateLimitPerSecond = 0
  const read: string[] = []
  const write: string[] = []
  for (const role of roles) {
    if (role === undefined) continue
    admin ||= role.admin
    monitor ||= role.monitor || role.admin
    if (role.rateLimitPerSecond > 0) {
      rateLimitPerSecond =
        rateLimitPerSecond === 0
          ? role.rateLimitPerSecond
          : Math.min(rateLimitPerSecond, role.rateLimitPerSecond)
    }
    for (const grant of role.grants) {
      if (grant.access === 'read' || grant.access === 'readwrite') read.push(grant.prefix)
      if (grant.access === 'write' || grant.access === 'readwrite') write.push(grant.prefix)
    }
  }
  return {
    admin,
    monitor,
    read: minimalPrefixes(read),
    write: minimalPrefixes(write),
    rateLimitPerSecond,
  }
}

/** Permissions of nobody. */
export const noPermissions: Permissions = Object.freeze({
  admin: false,
  monitor: false,
  read: [],
  write: [],
  rateLimitPerSecond: 0,
}) as Permissions

function covered(prefixes: readonly string[], key: string): boolean {
  for (const prefix of prefixes) if (key.startsWith(prefix)) return true
  return false
}

/** May read the key. */
export function mayRead(permissions: Permissions, key: string): boolean {
  return covered(permissions.read, key)
}

/** May put or delete the key. */
export function mayWrite(permissions: Permissions, key: string): boolean {
  return covered(permissions.write, key)
}

/**
 * May list keys starting with `prefix`: only when one read grant covers the whole prefix, so
 * no key of the page can lie outside the grants.
 */
export function mayList(permissions: Permissions, prefix: string): boolean {
  return covered(permissions.read, prefix)
}
