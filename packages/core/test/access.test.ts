import { describe, expect, it } from 'vitest'
import { compilePermissions, mayList, mayRead, mayWrite, noPermissions } from '../src/access.js'

const role = (over: Partial<Parameters<typeof compilePermissions>[0][number] & object> = {}) => ({
  admin: false,
  monitor: false,
  grants: [],
  rateLimitPerSecond: 0,
  ...over,
})

describe('permissions', () => {
  it('grants read, write and readwrite on prefixes, and nothing else', () => {
    const p = compilePermissions([
      role({
        grants: [
          { prefix: 'app/', access: 'readwrite' },
          { prefix: 'cfg/', access: 'read' },
        ],
      }),
      role({ grants: [{ prefix: 'logs/', access: 'write' }] }),
    ])
    expect(mayRead(p, 'app/1')).toBe(true)
    expect(mayWrite(p, 'app/1')).toBe(true)
    expect(mayRead(p, 'cfg/x')).toBe(true)
    expect(mayWrite(p, 'cfg/x')).toBe(false)
    expect(mayWrite(p, 'logs/1')).toBe(true)
    expect(mayRead(p, 'logs/1')).toBe(false)
    expect(mayRead(p, 'ap')).toBe(false)
    expect(mayRead(p, 'other')).toBe(false)
    expect(p.admin || p.monitor).toBe(false)
  })

  it('lets a list through only when one grant covers the whole prefix', () => {
    const p = compilePermissions([role({ grants: [{ prefix: 'app/', access: 'read' }] })])
    expect(mayList(p, 'app/')).toBe(true)
    expect(mayList(p, 'app/users/')).toBe(true)
    expect(mayList(p, 'ap')).toBe(false)
    expect(mayList(p, '')).toBe(false)
    const all = compilePermissions([role({ grants: [{ prefix: '', access: 'read' }] })])
    expect(mayList(all, '')).toBe(true)
  })

  it('admin implies monitor; unknown roles grant nothing; the tightest rate limit wins', () => {
    const p = compilePermissions([
      role({ admin: true, rateLimitPerSecond: 50 }),
      undefined,
      role({ rateLimitPerSecond: 10 }),
      role(),
    ])
    expect(p.admin && p.monitor).toBe(true)
    expect(p.rateLimitPerSecond).toBe(10)
    expect(compilePermissions([undefined])).toEqual(noPermissions)
  })

  it('keeps only the prefixes no shorter one covers', () => {
    const p = compilePermissions([
      role({
        grants: [
          { prefix: 'a/b/', access: 'read' },
          { prefix: 'a/', access: 'read' },
          { prefix: 'c', access: 'read' },
        ],
      }),
    ])
    expect(p.read).toEqual(['c', 'a/'])
  })
})
