import { describe, expect, it } from 'vitest'
import {
  certificateIdentity,
  identitiesOfSan,
  identityUri,
  parseIdentityUri,
} from '../src/identity.js'

describe('certificate identities', () => {
  it('round-trips member and user URIs', () => {
    const member = { clusterId: 'kv-0a1b', kind: 'member' as const, name: 'n1' }
    expect(identityUri(member)).toBe('kv://kv-0a1b/member/n1')
    expect(parseIdentityUri('kv://kv-0a1b/member/n1')).toEqual(member)
    expect(parseIdentityUri('kv://kv-0a1b/user/alice')).toEqual({
      clusterId: 'kv-0a1b',
      kind: 'user',
      name: 'alice',
    })
  })

  it.each([
    'kv://c/admin/n1',
    'kv://c/member/',
    'kv://c/member/n1/extra',
    'https://c/member/n1',
    'kv:///member/n1',
    'kv://c/member/../n1',
    'kv://c/member/n 1',
  ])('refuses %s', (uri) => {
    expect(parseIdentityUri(uri)).toBeNull()
  })

  it('reads identities out of Node.js subjectAltName text', () => {
    const san = 'URI:kv://c1/member/n2, DNS:localhost, IP Address:127.0.0.1, URI:https://x/y'
    expect(identitiesOfSan(san)).toEqual([{ clusterId: 'c1', kind: 'member', name: 'n2' }])
    expect(certificateIdentity(san, 'c1', 'member')).toBe('n2')
    expect(certificateIdentity(san, 'c2', 'member')).toBeNull()
    expect(certificateIdentity(san, 'c1', 'user')).toBeNull()
    expect(certificateIdentity(undefined, 'c1', 'member')).toBeNull()
  })

  it('trusts an ambiguous certificate for nothing', () => {
    const san = 'URI:kv://c1/member/n1, URI:kv://c1/member/n2'
    expect(certificateIdentity(san, 'c1', 'member')).toBeNull()
  })

  it('refuses to make a URI from an invalid name', () => {
    expect(() => identityUri({ clusterId: 'c', kind: 'member', name: 'a/b' })).toThrow()
    expect(() => identityUri({ clusterId: 'c d', kind: 'user', name: 'a' })).toThrow()
  })
})
