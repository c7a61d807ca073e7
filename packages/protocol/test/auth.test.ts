import { describe, expect, it } from 'vitest'
import {
  authRecordKey,
  compareAuthStamps,
  decodeAuthRecord,
  encodeAuthRecord,
  isReservedKey,
  parseAuthKey,
  type AuthRecord,
} from '../src/auth.js'
import { keyToBytes } from '../src/keys.js'

const stamp = { wallMs: 1000, logical: 2, node: 'n1' }

describe('auth records', () => {
  it('round-trips users, roles and settings', () => {
    const records: AuthRecord[] = [
      {
        stamp,
        deleted: false,
        body: {
          kind: 'user',
          user: {
            name: 'alice',
            passwordHash: 'scrypt$15$8$1$c2FsdA$aGFzaA',
            roles: ['app'],
            generation: 3,
            id: 'u1',
          },
        },
      },
      {
        stamp,
        deleted: false,
        body: {
          kind: 'role',
          role: {
            name: 'app',
            admin: false,
            monitor: true,
            grants: [
              { prefix: 'app/', access: 'readwrite' },
              { prefix: '', access: 'read' },
            ],
            rateLimitPerSecond: 100,
          },
        },
      },
      {
        stamp,
        deleted: false,
        body: {
          kind: 'settings',
          settings: { enabled: true, tokenKey: Buffer.alloc(32, 7), tokenKeyId: 'k1' },
        },
      },
      {
        stamp,
        deleted: true,
        body: {
          kind: 'user',
          user: { name: 'bob', passwordHash: '', roles: [], generation: 0, id: 'u2' },
        },
      },
    ]
    for (const record of records) expect(decodeAuthRecord(encodeAuthRecord(record))).toEqual(record)
  })

  it('keeps records in reserved keys no client can name', () => {
    const key = authRecordKey({
      stamp,
      deleted: false,
      body: {
        kind: 'user',
        user: { name: 'alice', passwordHash: '', roles: [], generation: 0, id: 'u3' },
      },
    })
    expect(isReservedKey(key)).toBe(true)
    expect(parseAuthKey(key)).toEqual({ kind: 'user', name: 'alice' })
    expect(() => keyToBytes(key.toString('utf8'), 1024)).toThrow(/control character/)
    expect(isReservedKey(Buffer.from('auth/user/alice'))).toBe(false)
  })

  it('refuses malformed records', () => {
    const bad = (body: AuthRecord['body']) => () =>
      encodeAuthRecord({ stamp, deleted: false, body })
    expect(
      bad({
        kind: 'user',
        user: { name: 'a/b', passwordHash: '', roles: [], generation: 0, id: 'x' },
      }),
    ).toThrow(/name/)
    expect(
      bad({
        kind: 'user',
        user: { name: 'a', passwordHash: 'md5$x', roles: [], generation: 0, id: 'x' },
      }),
    ).toThrow(/scrypt/)
    expect(
      bad({
        kind: 'role',
        role: {
          name: 'r',
          admin: false,
          monitor: false,
          grants: [{ prefix: 'a\u0000', access: 'read' }],
          rateLimitPerSecond: 0,
        },
      }),
    ).toThrow(/control/)
    expect(
      bad({
        kind: 'settings',
        settings: { enabled: true, tokenKey: Buffer.alloc(5), tokenKeyId: '' },
      }),
    ).toThrow(/token key/)
    expect(() => decodeAuthRecord(Buffer.from([0x08, 0x09]))).toThrow(/format/)
    expect(() => decodeAuthRecord(Buffer.from([0xff, 0xff, 0xff]))).toThrow()
  })

  it('orders stamps by wall clock, logical counter, then member', () => {
    expect(
      compareAuthStamps({ wallMs: 2, logical: 0, node: 'a' }, { wallMs: 1, logical: 9, node: 'z' }),
    ).toBeGreaterThan(0)
    expect(
      compareAuthStamps({ wallMs: 1, logical: 1, node: 'a' }, { wallMs: 1, logical: 2, node: 'a' }),
    ).toBeLessThan(0)
    expect(
      compareAuthStamps({ wallMs: 1, logical: 1, node: 'b' }, { wallMs: 1, logical: 1, node: 'a' }),
    ).toBeGreaterThan(0)
    expect(compareAuthStamps(stamp, stamp)).toBe(0)
  })
})
